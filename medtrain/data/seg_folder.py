"""Segmentation data as an `images/` and a `masks/` folder matched by file name, split by seeded
fractions or by explicit lists."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medtrain.data.base import SPLITS, add_data_warning
from medtrain.data.masks import read_instance_labels, read_mask_file
from medtrain.data.readers import (
    IMAGE_EXTENSIONS,
    READABLE_EXTENSIONS,
    file_spacing,
    read_image_file,
)
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.transforms import refuse_windowed_pictures
from medtrain.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MASK_EXTENSIONS = (*IMAGE_EXTENSIONS, ".npy")


def mask_suffix_hint(missing: Sequence[str], masks: Mapping[str, Path], suffix: str) -> str:
    """When the masks of images without one (`missing`, a few) are there under another suffix:
    ' (... set dataset.mask_suffix)' naming it; '' otherwise. A suffix starts with a separator
    (`_mask`, `-seg`): `case1` and `case10` are two images, not an image and a suffix."""
    found = {
        m.removeprefix(n)
        for n in missing
        for m in masks
        if m == n or (m.startswith(n) and not m[len(n)].isalnum())
    }
    if len(found) != 1 or found == {suffix}:
        return ""
    (other,) = found
    return (
        f" (the masks end in {other!r}: set dataset.mask_suffix={other!r})"
        if other
        else (" (the masks have no suffix: set dataset.mask_suffix='')")
    )


def list_files(folder: Path, extensions: Sequence[str]) -> dict[str, Path]:
    """Map file stems to files in `folder` (hidden files and archive debris skipped)."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith((".", "__")) or path.suffix.lower() not in extensions:
            continue
        if path.stem in files:
            raise DataError(
                f"{folder}: two files named {path.stem!r} ({files[path.stem].name}, {path.name})"
            )
        files[path.stem] = path
    return files


def split_counts(total: int, val_size: float, test_size: float) -> tuple[int, int]:
    """Numbers of val and test images from sizes given as fractions (< 1) or counts (>= 1)."""
    counts = []
    for key, size in (("val_size", val_size), ("test_size", test_size)):
        if size < 0:
            raise ConfigError(f"dataset.{key}={size} must be >= 0")
        counts.append(int(size) if size >= 1 else round(size * total))
    if sum(counts) >= total:
        raise ConfigError(
            f"dataset.val_size={val_size} and dataset.test_size={test_size} leave no training "
            f"images out of {total}"
        )
    return counts[0], counts[1]


def seeded_split(
    names: Sequence[str], val_size: float, test_size: float, seed: int
) -> dict[str, list[str]]:
    """A seeded shuffle of `names` cut into test, val and train (sizes as in `split_counts`)."""
    n_val, n_test = split_counts(len(names), val_size, test_size)
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    return {
        "test": sorted(order[:n_test]),
        "val": sorted(order[n_test : n_test + n_val]),
        "train": sorted(order[n_test + n_val :]),
    }


def read_split_file(path: str) -> dict[str, list[str]]:
    """A JSON file {"train": [ids], "val": [...], "test": [...]} (a run folder's `splits.json`)."""
    try:
        splits = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"dataset.split_file={path!r}: cannot read it ({err}); dataset.split_file=null draws "
            "a seeded split instead"
        ) from err
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise ConfigError(f"dataset.split_file={path!r}: expected {{split: [ids]}} lists")
    return splits


def check_split_lists(
    splits: Mapping[str, Sequence[str]],
    known: Sequence[str],
    where: str,
    what: str = "images",
    log_left_out: bool = True,
) -> None:
    """Explicit split lists (`where` names them in errors: `dataset.splits` or the split file):
    only train, val and test, a non-empty train list, no id in two lists, every id known; ids in
    no list are left out of the run, which is logged (with `log_left_out`: by one of the splits
    that read the same lists, not by each).

    Raises:
        ConfigError: an unknown split name, an empty train list or an id in two lists.
        DataError: an id that is not among `known`.
    """
    unknown_splits = sorted(set(splits) - set(SPLITS))
    if unknown_splits:
        raise ConfigError(
            f"{where} has a list {unknown_splits[0]!r}: the splits are {list(SPLITS)}"
        )
    if not splits.get("train"):
        raise ConfigError(f"{where}: the train list is empty")
    seen: dict[str, str] = {}
    for split in SPLITS:
        for name in splits.get(split, []):
            if name in seen:
                both = (
                    f"twice in the {split} list"
                    if seen[name] == split
                    else f"in both the {seen[name]} and the {split} list"
                )
                raise ConfigError(
                    f"{where}: {name!r} is {both}; each image belongs in one list, once"
                )
            seen[name] = split
    known_set = set(known)
    for split in SPLITS:
        unknown = [n for n in splits.get(split, []) if n not in known_set]
        if unknown:
            raise DataError(f"{where}[{split}] names {unknown[:3]} not found among the {what}")
    left_out = [n for n in known if n not in seen]
    if left_out and log_left_out:
        log.warning(
            "%s: %d of %d %s are in no split and not used (e.g. %s)",
            where,
            len(left_out),
            len(known),
            what,
            ", ".join(left_out[:3]),
        )


class SegFolder(SegmentationDataset):
    """`<path>/images/<name>.<ext>` with `<path>/masks/<name><mask_suffix>.<ext>`.

    Images are PNG/JPEG/TIFF (8 or 16 bit, grey or colour); masks PNG/TIFF/JPEG/NPY holding class
    indices, {0, 255} binary masks, or values mapped by `class_values`; JPEG masks are thresholded.
    With `instance_labels` the masks are instance labels (8 or 16 bit, 0 background, one number per
    object, as the 2018 Data Science Bowl's stage-1 labels): the model learns the binary mask
    `label > 0`, and the labels score and count the objects (`task.instances`).

    Args:
        path: the root folder holding `images/` and `masks/`.
        split: `train`, `val` or `test`.
        val_size, test_size: held-out images, as a fraction (< 1) or a count (>= 1); a seeded
            shuffle of the sorted names decides which.
        splits: explicit {split: [names]} instead of a seeded split (names are file stems).
        split_file: a JSON file of such lists (e.g. an earlier run's `splits.json`).
        seed: seed of the split.
        mask_suffix: text after the image's stem in mask names (`_mask` for `a.png` -> `a_mask.png`).
        class_values: stored mask value -> class index, e.g. {0: 0, 128: 1, 255: 2}.
        file_spacing: take the pixel spacing from metric PNG/TIFF resolution tags when present
            (False: always use `spacing`).
        masks_folder: the name of the mask folder under `path` (`labels` for DSB2018 stage 1).
        instance_labels: the masks hold one label per object (binary tasks only).
        contacts: (with `instance_labels`) training masks mark the pixels where objects touch
            (`medtrain.analysis.instances.contact_pixels`) as 2, which
            `task.instances.method=contacts` learns in an extra output channel.
        **kwargs: passed to `SegmentationDataset`.
    """

    reads_files = True
    sample_fields = (*SegmentationDataset.sample_fields, "image_files", "mask_files")
    reads_instance_labels = True  # dataset.instance_labels=true reads masks of one label per object

    def __init__(
        self,
        path: str,
        split: str,
        val_size: float = 0.15,
        test_size: float = 0.15,
        splits: Mapping[str, Sequence[str]] | None = None,
        split_file: str | None = None,
        seed: int = 0,
        mask_suffix: str = "",
        class_values: Mapping[int, int] | None = None,
        file_spacing: bool = True,
        masks_folder: str = "masks",
        instance_labels: bool = False,
        contacts: bool = False,
        **kwargs: Any,
    ):
        super().__init__(split, seed=seed, **kwargs)
        root = Path(path)
        if not isinstance(masks_folder, str) or not masks_folder or "/" in masks_folder:
            raise ConfigError(
                f"dataset.masks_folder={masks_folder!r}: the name of a folder under dataset.path"
            )
        for folder in (root, root / "images", root / masks_folder):
            if not folder.is_dir():
                others = sorted(
                    f.name
                    for f in (root.iterdir() if root.is_dir() else ())
                    if f.is_dir() and f.name not in ("images", masks_folder)
                )
                hint = (
                    f", or name the mask folder: dataset.masks_folder={others[0]}"
                    if folder.name == masks_folder and len(others) == 1
                    else ", or name the mask folder with dataset.masks_folder"
                    if folder.name == masks_folder
                    else ""
                )
                raise DataError(
                    f"dataset.path={path!r}: no folder {folder} (expected <path>/images and "
                    f"<path>/{masks_folder}{hint})"
                )
        if instance_labels and (self.num_classes != 2 or class_values):
            raise ConfigError(
                "dataset.instance_labels: instance labels make a binary mask (label > 0); set "
                f"dataset.num_classes=2 (now {self.num_classes}) and dataset.class_values=null"
            )
        self.has_instances = bool(instance_labels)
        if contacts and not instance_labels:
            raise ConfigError(
                "dataset.contacts=true marks where objects touch, which needs one label per "
                "object: set dataset.instance_labels=true (masks of instance labels), or "
                "dataset.contacts=false"
            )
        self.marks_contacts = bool(contacts)
        images = list_files(root / "images", READABLE_EXTENSIONS)
        masks = list_files(root / masks_folder, MASK_EXTENSIONS)
        if not images:
            raise DataError(f"{root / 'images'}: no {list(READABLE_EXTENSIONS)} images")
        missing = [name for name in images if f"{name}{mask_suffix}" not in masks]
        if missing:
            hint = mask_suffix_hint(missing[:10], masks, mask_suffix)
            raise DataError(
                f"{root / masks_folder}: no mask for {len(missing)} image(s), e.g. "
                f"{missing[0]}{mask_suffix}.png for images/{images[missing[0]].name}{hint}"
            )
        expected = {f"{name}{mask_suffix}" for name in images}
        alone = sorted(name for name in masks if name not in expected)
        if alone and split == "train":  # a misspelt image name leaves its mask unused
            add_data_warning(
                self,
                "masks_without_image",
                f"{root / masks_folder}: {len(alone)} mask(s) match no image in "
                f"{root / 'images'} and are not used (e.g. {masks[alone[0]].name}): a misspelt or "
                "missing image?",
            )
        if class_values:
            bad = [(v, k) for v, k in class_values.items() if not 0 <= int(k) < self.num_classes]
            if bad:
                raise ConfigError(
                    f"dataset.class_values maps {bad[0][0]} to class {bad[0][1]}, outside the "
                    f"{self.num_classes} classes of dataset.num_classes"
                )
        names = self._split(sorted(images), val_size, test_size, splits, split_file, seed, split)
        refuse_windowed_pictures(self.windows, [images[n] for n in sorted(images)], str(root))
        self.ids = names[split]
        self.image_files = [images[n] for n in self.ids]
        self.mask_files = [masks[f"{n}{mask_suffix}"] for n in self.ids]
        self.use_file_spacing = file_spacing
        if file_spacing and self.spacing is None and split == "train":  # once per run
            used = {name: images[name] for part in names.values() for name in part}
            self._check_one_unit(root, used, masks, mask_suffix)
        self.class_values = (
            {int(v): int(k) for v, k in class_values.items()} if class_values else None
        )
        if self.in_channels is None:  # decided once, from the first training image, for every split
            first = read_image_file(images[names["train"][0]])
            self.in_channels = 1 if first.ndim == 2 else first.shape[-1]

    @staticmethod
    def _split(names, val_size, test_size, splits, split_file, seed, split) -> dict[str, list[str]]:
        if splits is not None and split_file is not None:
            raise ConfigError("dataset.splits and dataset.split_file: give one of them, not both")
        where = "dataset.splits"
        if split_file is not None:
            splits, where = read_split_file(split_file), f"dataset.split_file={split_file!r}"
        if splits is not None:
            for name in SPLITS:
                if name not in splits:
                    raise ConfigError(f"{where} has no {name!r} list (give {list(SPLITS)})")
            check_split_lists(splits, names, where, "images of images/", split == "train")
            return {s: list(splits[s]) for s in SPLITS}
        return seeded_split(names, val_size, test_size, seed)

    @staticmethod
    def _check_one_unit(root: Path, images: dict, masks: dict, mask_suffix: str) -> None:
        """Measurements and mm distances are compared across images, so either every image of the
        splits states a pixel spacing in its file (image or mask) or none does. Checked when the
        train split is built (the run builds it first), not again for val and test."""
        stated, without = [], []
        for name, image in images.items():
            has = file_spacing(image) or file_spacing(masks[f"{name}{mask_suffix}"])
            (stated if has else without).append(name)
        if not stated or not without:
            return
        raise DataError(
            f"{root}: {len(stated)} image{'s state' if len(stated) > 1 else ' states'} a pixel "
            f"spacing in the file (e.g. {images[stated[0]].name}) and {len(without)} "
            f"{'do' if len(without) > 1 else 'does'} not (e.g. "
            f"{', '.join(without[:3])}); measurements need one unit: set "
            "dataset.spacing=[row_mm,col_mm] for the images without one, or "
            "dataset.file_spacing=false to ignore the files' spacing"
        )

    def source(self, index: int) -> str:
        return str(self.mask_files[index])

    def read_image(self, index: int) -> np.ndarray:
        return read_image_file(self.image_files[index], modality=self.reads_modality)

    def read_mask(self, index: int) -> np.ndarray:
        if self.has_instances:
            # uint8: the cache of decoded files holds 1 byte per pixel (checked_mask widens it)
            return (self.cached("instances", index, self.read_instances) > 0).astype(np.uint8)
        return read_mask_file(self.mask_files[index], self.class_values, self.num_classes)

    def read_instances(self, index: int) -> np.ndarray:
        return read_instance_labels(self.mask_files[index])

    def read_spacing(self, index: int) -> tuple[float, float] | None:
        if not self.use_file_spacing:
            return None
        return file_spacing(self.image_files[index]) or file_spacing(self.mask_files[index])
