"""Images in one sub-folder per class (PNG, JPEG, TIFF; 8- or 16-bit), with split folders or a
seeded stratified split by fractions."""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import train_test_split

from medtrain.data.base import SPLITS, ImageDataset, check_fractions
from medtrain.data.readers import READABLE_EXTENSIONS, read_image_file
from medtrain.data.transforms import refuse_windowed_pictures
from medtrain.errors import ConfigError, DataError


def list_class_folders(
    root: Path, extensions: tuple[str, ...], empty: bool = False
) -> dict[str, list[Path]]:
    """Map each class folder name under `root` to its sorted image files (with `empty`, the
    folders that hold none are kept, with no files: they are no class)."""
    # Hidden entries and archive debris (__MACOSX/, ._name.png) are not classes or images.
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    found = {
        c.name: sorted(
            f for f in c.rglob("*") if f.suffix.lower() in extensions and not f.name.startswith(".")
        )
        for c in classes
    }
    return {name: files for name, files in found.items() if files or empty}


def empty_class_folders(root: Path, extensions: tuple[str, ...]) -> str | None:
    """A warning naming the folders under `root` that hold no images of `extensions` (left out
    of the classes, so that a 3-class folder with an empty class trained as binary), or None."""
    empty = [
        name for name, files in list_class_folders(root, extensions, True).items() if not files
    ]
    if not empty:
        return None
    return (
        f"{root}: {', '.join(f'{name}/' for name in empty)} hold(s) no {'/'.join(extensions)} "
        "images and is left out of the classes; add its images (or set dataset.extensions to "
        "their suffix), or remove the folder"
    )


def named_classes(
    folder: Path, found: list[str], given: Sequence[str] | None, empty: str | None
) -> list[str]:
    """The classes in index order: the class folders' names sorted, or `dataset.class_names`
    (`given`), which must name every class folder with images, each once, and nothing else: a
    class is its folder's name, never a position in the list (a list in another order than the
    folders' would otherwise swap the labels).

    Raises:
        DataError: a class folder the names leave out (a misspelt name?).
        ConfigError: a name given twice, or one without a class folder with images.
    """
    if given is None:
        return found
    given = [str(name) for name in given]
    twice = sorted({name for name in given if given.count(name) > 1})
    if twice:
        raise ConfigError(f"dataset.class_names={given} names {twice} twice; each class once")
    unknown = [name for name in found if name not in given]
    if unknown:
        close = difflib.get_close_matches(unknown[0], given, n=1, cutoff=0.6)
        like = f" ({unknown[0]!r} is like {close[0]!r}: a typo?)" if close else ""
        raise DataError(
            f"{folder}: class folder(s) {unknown} are not in dataset.class_names={given}{like}; "
            "the names are the class folders' names, in the order of the class indices"
        )
    missing = [name for name in given if name not in found]
    if missing:
        raise ConfigError(
            f"dataset.class_names={given} names {missing}, which have no class folder with images "
            f"in {folder} (the folders: {found})" + (f"; {empty}" if empty else "")
        )
    return given


class ImageFolder(ImageDataset):
    """Classification images stored as `<path>/<class>/<image>` or `<path>/<split>/<class>/<image>`.

    With split folders (`train/`, and optionally `val/` and `test/`) those are used; a missing `val/`
    or `test/` is carved out of `train/` by the fractions. Without them one seeded stratified split by
    `val_fraction` and `test_fraction` is made, the same on every run with the same seed.

    Args:
        path: the root folder.
        split: `train`, `val` or `test`.
        val_fraction: share of images held out for validation when no `val/` folder exists.
        test_fraction: share held out for testing when no `test/` folder exists.
        seed: seed of the split.
        extensions: file suffixes read as images.
        **kwargs: passed to `ImageDataset` (set `image_size` when the images differ in size).
    """

    reads_files = True

    provides = ("classes",)  # class labels only
    sample_fields = (*ImageDataset.sample_fields, "files")

    def __init__(
        self,
        path: str,
        split: str,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        extensions: tuple[str, ...] = READABLE_EXTENSIONS,
        **kwargs: Any,
    ):
        super().__init__(split, **kwargs)
        root = Path(path)
        if not root.is_dir():
            raise DataError(f"dataset.path={path!r}: no such folder")
        check_fractions(val_fraction, test_fraction, "images")
        extensions = tuple(e.lower() for e in extensions)
        depth = 3 if (root / "train").is_dir() else 2  # [<split>/]<class>/<image>
        empty = empty_class_folders(root / "train" if depth == 3 else root, extensions)
        files, labels, self.class_names = self._collect(
            root, extensions, val_fraction, test_fraction, seed, self.class_names, empty
        )
        refuse_windowed_pictures(self.windows, [f for s in SPLITS for f in files[s]], str(root))
        self.files = files[split]
        self.ids = [str(f.relative_to(root)) for f in self.files]
        self.set_labels(
            np.array(labels[split], dtype=np.int64),
            source=str(root),
            all_labels=np.concatenate([np.array(labels[s], dtype=np.int64) for s in SPLITS]),
        )
        carved = [
            s
            for s, fraction in (("val", val_fraction), ("test", test_fraction))
            if fraction > 0 and not (root / s).is_dir()
        ]
        nested = [f for s in SPLITS for f in files[s] if len(f.relative_to(root).parts) > depth]
        self.data_warnings = {}
        if carved and nested:  # a subfolder is often one patient, whose images then straddle
            example = nested[0].relative_to(root).as_posix()
            self.data_warnings["nested_folders"] = (
                f"{root}: {len(nested)} images lie in subfolders of their class "
                f"folders (e.g. {example}), and {' and '.join(carved)} are drawn image by image: "
                "the images of one subfolder (a patient?) can land in two splits. List them in a "
                "CSV with a patient column (dataset=manifest dataset.group_column=patient) to keep "
                "each patient in one split"
            )
        if empty:
            self.data_warnings["empty_class_folders"] = empty
        if self.in_channels is None:  # decided once, from the first training image, for every split
            image = read_image_file(files["train"][0])
            self.in_channels = 1 if image.ndim == 2 else image.shape[-1]

    @staticmethod
    def _collect(root, extensions, val_fraction, test_fraction, seed, given=None, empty=None):
        split_dirs = {s: root / s for s in SPLITS if (root / s).is_dir()}
        base = list_class_folders(split_dirs.get("train", root), extensions)
        if not base:
            folder = split_dirs.get("train", root)
            others = sorted(  # what the class folders hold (DICOM named by UID: no suffix)
                {
                    f.suffix.lower() if f.suffix[1:].isalpha() else "(none)"
                    for f in Path(folder).glob("*/**/*")
                    if f.is_file() and not any(p.startswith((".", "__")) for p in f.parts[-3:])
                }
            )
            hint = (
                f" (the files there end in {others[:5]}: set dataset.extensions)" if others else ""
            )
            raise DataError(f"{folder}: no class sub-folders with {list(extensions)} images{hint}")
        if len(base) < 2:
            raise DataError(
                f"{split_dirs.get('train', root)}: found {len(base)} class folder(s) {sorted(base)} "
                "with images; classification needs one sub-folder per class, at least 2"
            )
        class_names = named_classes(split_dirs.get("train", root), sorted(base), given, empty)
        index = {name: k for k, name in enumerate(class_names)}
        files = {s: [] for s in SPLITS}
        labels = {s: [] for s in SPLITS}
        pool_files = [f for name in class_names for f in base[name]]
        pool_labels = [index[name] for name in class_names for _ in base[name]]
        for split in ("val", "test"):
            if split not in split_dirs:
                continue
            for name, paths in list_class_folders(split_dirs[split], extensions).items():
                if name not in index:
                    raise DataError(
                        f"{split_dirs[split] / name}: class {name!r} does not exist in train "
                        f"(classes: {class_names})"
                    )
                files[split] += paths
                labels[split] += [index[name]] * len(paths)
        taken = 0.0  # fractions are of the whole pool: val keeps its share after test is taken
        for split, fraction in (("test", test_fraction), ("val", val_fraction)):
            if split in split_dirs or fraction == 0:
                continue
            share = fraction / (1 - taken)
            taken += fraction
            try:
                pool_files, held_files, pool_labels, held_labels = train_test_split(
                    pool_files,
                    pool_labels,
                    test_size=share,
                    random_state=seed,
                    stratify=pool_labels,
                )
            except ValueError as err:
                counts = Counter(pool_labels)
                rare = [k for k, n in sorted(counts.items()) if n < 2]
                why = (
                    "too few images of class "
                    + ", ".join(f"{class_names[k]} ({counts[k]})" for k in rare)
                    if rare
                    else str(err)
                )
                from medtrain.data.validation import closest_similar

                for k in rare:  # a folder of one image beside a large one: a misspelt name?
                    like = closest_similar(class_names[k], class_names)
                    if like is not None:
                        why += f" ({class_names[k]!r} is like {like!r}: a misspelt folder?)"
                raise DataError(
                    f"{root}: cannot make a stratified {split} split of {fraction}: {why}; add "
                    "images, or give the splits as train/, val/ and test/ folders"
                ) from err
            files[split], labels[split] = list(held_files), list(held_labels)
        files["train"], labels["train"] = list(pool_files), list(pool_labels)
        return files, labels, class_names

    def read_image(self, index: int) -> np.ndarray:
        return read_image_file(self.files[index], modality=self.reads_modality)
