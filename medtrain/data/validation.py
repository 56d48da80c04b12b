"""Reading every sample of a run's splits to find what would break or bias training: unreadable
files, labels outside the classes, empty splits, identical images across splits, class balance and
intensity summaries (the core of `medtrain check-data`)."""

from __future__ import annotations

import difflib
import hashlib
import math
import os
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from medtrain.data.base import SPLITS
from medtrain.data.manifest import Manifest
from medtrain.data.medmnist import MedMNIST
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.transforms import scale_mismatch
from medtrain.data.volume_segmentation import VolumeSegmentationDataset
from medtrain.errors import ConfigError, DataError

CHUNK = 32  # samples per thread task: fewer futures for large datasets of small images


def default_workers() -> int:
    return min(8, os.cpu_count() or 1)


@dataclass
class Sample:
    """What reading one sample showed: a problem, or its hash and intensity sums."""

    index: int
    problem: str | None = None
    digest: bytes = b""
    dtype: str = ""
    shape: tuple[int, ...] = (0, 0)  # (H, W), or (D, H, W) for volumes
    channels: int = 0
    low: float = 0.0
    high: float = 0.0
    total: float = 0.0
    squares: float = 0.0
    values: int = 0
    class_pixels: np.ndarray | None = None  # segmentation: pixels per class in the mask


class Names:
    """How messages name the samples of one split: manifest row and file, file, or array entry."""

    def __init__(self, cfg: DictConfig, dataset: Any):
        self.dataset = dataset
        self.path = cfg.dataset.get("path")
        self.lines: list[int | None] = (
            list(dataset.chosen_lines) if isinstance(dataset, Manifest) else []
        )

    def files(self, index: int) -> list[str]:
        ds = self.dataset
        if hasattr(ds, "image_files"):
            return [str(ds.image_files[index]), str(ds.mask_files[index])]
        return [str(ds.files[index])] if hasattr(ds, "files") else []

    def row(self, index: int) -> str:
        line = self.lines[index] if self.lines else None
        return f"{self.dataset.source} line {line}" if line else ""

    def name(self, index: int) -> str:
        """The sample as listed among duplicates: `file (manifest line N)`, `file`, `npz entry`."""
        files, row = self.files(index), self.row(index)
        if files:
            return f"{files[0]} ({row})" if row else files[0]
        if isinstance(self.dataset, MedMNIST):
            return f"{self.path} {self.dataset.split}_images[{index}]"
        return f"{self.dataset.split} sample {self.dataset.ids[index]}"

    def problem(self, index: int, text: str) -> str:
        """One message line: the manifest row first, then the file (unless `text` names it)."""
        files, row = self.files(index), self.row(index)
        row = f"{row}: " if row else ""
        if any(f in text for f in files):
            return row + text
        return f"{row}{files[0]}: {text}" if files else f"{self.name(index)}: {text}"


# Datasets of images (or volumes) with masks: their masks are checked, not their labels.
MASK_DATASETS = (SegmentationDataset, VolumeSegmentationDataset)


def content_digest(raw: np.ndarray, dims: int) -> bytes:
    """A hash of what the image shows, the same for copies stored another way.

    - A grey image saved as RGB (equal channels) or with a constant alpha is its grey image.
    - A 2D image is hashed by the order of its values (each pixel's rank among the image's
      distinct values), which no strictly increasing rescale changes: a PNG, its 16-bit copy and
      a DICOM of the same pixels (read scaled to 0-1) hash alike. Values clipped by a window are
      another image.
    - A volume is hashed by its values, whole values in 8 or 16 bits alike (ranks would sort
      every voxel).
    - A constant image is hashed by its value: blank images of other values are not one image.
    """
    pixels = raw
    if pixels.ndim == dims + 1:
        if pixels.shape[-1] == 4 and (pixels[..., 3] == pixels[..., 3].flat[0]).all():
            pixels = pixels[..., :3]  # a constant alpha shows nothing
        if (pixels == pixels[..., :1]).all():
            pixels = pixels[..., 0]  # grey, whatever the channels
    if pixels.size and (pixels == pixels.flat[0]).all():  # a blank image: ranks say nothing
        digest = hashlib.blake2b(
            f"{pixels.shape}{float(pixels.flat[0])!r}".encode(), digest_size=16
        )
        return digest.digest()
    small = pixels.dtype == bool or (
        np.issubdtype(pixels.dtype, np.integer) and pixels.min() >= 0 and pixels.max() <= 65535
    )
    if dims == 2 and small:  # ranks in one pass: a lookup of the values present
        values = pixels if pixels.dtype in (np.uint8, np.uint16) else pixels.astype(np.int64)
        present = np.bincount(values.ravel()) > 0
        pixels = (np.cumsum(present) - 1).astype(np.uint16)[values]
    elif dims == 2:
        pixels = np.unique(pixels, return_inverse=True)[1].reshape(pixels.shape)
        pixels = pixels.astype(np.uint16 if pixels.max() <= 65535 else np.uint32)
    elif (small or bool((pixels == np.round(pixels)).all())) and 0 <= pixels.min() <= (
        pixels.max()
    ) <= 65535:
        pixels = pixels.astype(np.uint8 if pixels.max() <= 255 else np.uint16)
    digest = hashlib.blake2b(f"{pixels.shape}{pixels.dtype}".encode(), digest_size=16)
    digest.update(np.ascontiguousarray(pixels).data)
    return digest.digest()


def read_sample(dataset: Any, index: int) -> Sample:
    """Read sample `index` as training would; every failure becomes `Sample.problem`."""
    try:
        raw = np.asarray(dataset.read_image(index))
        dims = getattr(dataset, "spatial_dims", 2)
        channels_ok = raw.ndim == dims or (raw.ndim == dims + 1 and raw.shape[-1] in (1, 3, 4))
        if not channels_ok:
            expected = "D x H x W or D x H x W x C" if dims == 3 else "H x W or H x W x C"
            kind = "a volume" if dims == 3 else "a 2D image"
            return Sample(index, f"not {kind}: shape {raw.shape} (expected {expected})")
        if raw.size == 0:
            return Sample(index, f"the image has no pixels (shape {raw.shape})")
        if not (np.issubdtype(raw.dtype, np.number) or raw.dtype == bool):
            return Sample(index, f"pixel type {raw.dtype} is not numeric")
        values = raw.astype(np.float64).ravel()
        if not np.isfinite(values).all():
            return Sample(index, "the image holds NaN or infinite values")
        class_pixels = None
        if hasattr(dataset, "voxel_spacing"):  # image and label voxels and axes, as training reads
            dataset.voxel_spacing(index)  # them (before the shapes: other axes explain those)
        if isinstance(dataset, MASK_DATASETS):
            # The check training's load() makes: mask size and values, with the same messages.
            mask = dataset.checked_mask(index, raw.shape[:dims])
            class_pixels = np.bincount(mask.ravel(), minlength=dataset.num_classes)
    except DataError as err:
        return Sample(index, str(err))
    # Any other reader failure is this sample's problem too, never a crash of the whole check.
    except Exception as err:
        return Sample(index, f"cannot be read ({type(err).__name__}: {err})")
    return Sample(
        index,
        digest=content_digest(raw, dims),
        dtype=str(raw.dtype),
        shape=tuple(int(n) for n in raw.shape[:dims]),
        channels=1 if raw.ndim == dims else int(raw.shape[-1]),
        low=float(values.min()),
        high=float(values.max()),
        total=float(values.sum()),
        squares=float(values @ values),
        values=int(values.size),
        class_pixels=class_pixels,
    )


def read_range(dataset: Any, start: int, stop: int) -> list[Sample]:
    return [read_sample(dataset, i) for i in range(start, stop)]


def read_all(datasets: dict, workers: int, progress: bool) -> dict[str, list[Sample]]:
    """Every sample of every split, read by a thread pool (decoding mostly releases the GIL)."""
    sizes = {split: len(ds.ids) for split, ds in datasets.items()}  # ids: images, not repeats
    found: dict[str, list[Sample]] = {split: [] for split in datasets}
    bar = tqdm(
        total=sum(sizes.values()),
        desc="check data",
        unit="image",
        disable=None if progress else True,
    )
    with ThreadPoolExecutor(max_workers=workers) as pool, bar:
        jobs = {
            pool.submit(read_range, ds, start, min(start + CHUNK, sizes[split])): split
            for split, ds in datasets.items()
            for start in range(0, sizes[split], CHUNK)
        }
        for job in as_completed(jobs):
            samples = job.result()
            found[jobs[job]] += samples
            bar.update(len(samples))
    return {split: sorted(samples, key=lambda s: s.index) for split, samples in found.items()}


def class_name(dataset: Any, k: int) -> str:
    names = dataset.class_names or []
    return str(names[k]) if k < len(names) else str(k)


def label_text(dataset: Any, index: int) -> str | None:
    """A sample's label as shown among duplicates (None for segmentation: masks are not compared)."""
    if isinstance(dataset, MASK_DATASETS):
        return None
    label = np.asarray(dataset.labels[index])
    if label.ndim == 0 and not dataset.regression:
        return class_name(dataset, int(label))
    return str(label.tolist())


def label_problems(dataset: Any, names: Names) -> list[str]:
    """Labels outside the classes (or not 0/1 for multi-label), and regression targets that are
    not finite numbers; segmentation masks are checked when read."""
    if isinstance(dataset, MASK_DATASETS):
        return []
    labels, k = np.asarray(dataset.labels), dataset.num_classes
    if len(labels) != len(dataset.ids):
        return [f"{dataset.split}: {len(labels)} labels for {len(dataset.ids)} images"]
    if dataset.regression:
        values = labels.reshape(len(labels), -1).astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
        return [
            names.problem(i, f"target {values[i].tolist()} is not a finite number") for i in bad
        ]
    if labels.ndim == 2:
        if labels.shape[1] != k:
            return [f"{dataset.split}: {labels.shape[1]} label columns, dataset.num_classes={k}"]
        bad = np.flatnonzero(~np.isin(labels, (0, 1)).all(axis=1))
        return [names.problem(i, f"multi-label {labels[i].tolist()} is not 0/1") for i in bad]
    bad = np.flatnonzero((labels < 0) | (labels >= k))
    return [
        names.problem(
            i, f"label {int(labels[i])} is outside the {k} classes 0..{k - 1} (dataset.num_classes)"
        )
        for i in bad
    ]


def balance(dataset: Any, samples: list[Sample]) -> tuple[dict, dict[int, str]]:
    """Class counts (segmentation: pixel shares and images per class; regression: target range) and
    the classes this split lacks, each with its warning."""
    k, split = dataset.num_classes, dataset.split
    if isinstance(dataset, MASK_DATASETS):
        masks = np.array([s.class_pixels for s in samples if s.class_pixels is not None])
        masks = masks.reshape(len(masks), k)
        pixels, images = masks.sum(axis=0), (masks > 0).sum(axis=0)
        shares = pixels / max(int(pixels.sum()), 1)
        section = {
            "pixel_fraction": {
                class_name(dataset, c): round(float(shares[c]), 6) for c in range(k)
            },
            "images_with": {class_name(dataset, c): int(images[c]) for c in range(k)},
        }
        if len(masks) < len(samples):  # unreadable masks are errors already: absence means nothing
            return section, {}
        absent = [c for c in range(k) if images[c] == 0]
        return section, {
            c: f"{split}: no mask holds class {class_name(dataset, c)!r}" for c in absent
        }
    labels = np.asarray(dataset.labels)
    if dataset.regression:
        values = labels.reshape(len(labels), -1).astype(np.float64)
        values = values[np.isfinite(values).all(axis=1)]
        stats = {
            class_name(dataset, c): {
                f: float(getattr(np, f)(values[:, c])) if len(values) else None
                for f in ("min", "mean", "max")
            }
            for c in range(values.shape[1])
        }
        return {"targets": stats}, {}
    if labels.ndim == 2:
        counts = labels.sum(axis=0) if labels.shape[1] == k else np.zeros(k)
        key, what = "positives", "positive sample"
    else:
        counts = np.bincount(labels[(labels >= 0) & (labels < k)].astype(np.int64), minlength=k)
        key, what = "counts", "sample"
    section = {key: {class_name(dataset, c): int(counts[c]) for c in range(k)}}
    absent = [c for c in range(k) if counts[c] == 0]
    return section, {c: f"{split}: no {what} of class {class_name(dataset, c)!r}" for c in absent}


# Words that name the negative finding: a binary task's positive class (index 1) named so is
# probably the wrong way round ("abnormal"/"normal" sorts "normal" second).
NEGATIVE_NAMES = {"normal", "negative", "healthy", "benign", "absent", "control", "none", "clear"}
NEGATIVE_FIRST_WORDS = {"no", "non", "not", "without"}
TYPO_MAX_SAMPLES = 3  # a class this rare, named like a class 10x larger, is probably a typo


def reads_negative(name: str) -> bool:
    """Whether a class name reads as the negative finding (normal, benign, no_finding ...)."""
    words = "".join(c if c.isalnum() else " " for c in str(name).lower()).split()
    return bool(words) and (" ".join(words) in NEGATIVE_NAMES or words[0] in NEGATIVE_FIRST_WORDS)


def review_classes(datasets: dict, names: dict[str, Names]) -> tuple[list[str], list[str]]:
    """(warnings, notes) about the classes of a one-class-per-image task: which class is a binary
    task's positive one (a warning when its name reads as the negative finding), and a class of
    at most `TYPO_MAX_SAMPLES` images named like a class ten times larger (a misspelt label, which
    would otherwise train a class of its own)."""
    ds = datasets.get("train") or next(iter(datasets.values()))
    if isinstance(ds, MASK_DATASETS) or ds.regression or np.asarray(ds.labels).ndim != 1:
        return [], []
    k = int(ds.num_classes)
    class_names = [class_name(ds, c) for c in range(k)]
    warnings: list[str] = []
    notes: list[str] = []
    if k == 2 and class_names != ["0", "1"]:  # labels 0/1 say which is positive themselves
        positive, negative = class_names[1], class_names[0]
        said = (
            f"the positive class (index 1) is {positive!r}: AUC, sensitivity, specificity and "
            "the decision threshold are of it"
        )
        if reads_negative(positive) and not reads_negative(negative):
            warnings.append(
                f"{said}, and its name reads as the negative finding: if {negative!r} is what "
                f"you detect, set dataset.class_names=[{positive},{negative}]"
            )
        else:
            notes.append(f"{said} (dataset.class_names orders the classes)")
    labels = {split: np.asarray(d.labels).astype(np.int64) for split, d in datasets.items()}
    counts = sum(np.bincount(y[(y >= 0) & (y < k)], minlength=k) for y in labels.values())
    for c in np.flatnonzero((counts > 0) & (counts <= TYPO_MAX_SAMPLES)).tolist():
        like = [
            other
            for other in np.flatnonzero(counts >= 10 * counts[c]).tolist()
            if _similar(class_names[c], class_names[other])
        ]
        if like:
            found = [
                names[split].name(int(i))
                for split, y in labels.items()
                for i in np.flatnonzero(y == c)
            ]
            warnings.append(
                f"class {class_names[c]!r} has {len(found)} image(s) ({'; '.join(found)}) and "
                f"is named like {class_names[like[0]]!r} ({int(counts[like[0]])}): a typo? It "
                "trains as a class of its own; listing the classes in dataset.class_names "
                "makes a misspelt label an error"
            )
    return warnings, notes


def _similar(a: str, b: str) -> bool:
    """Names a typo apart (`pnuemonia`, `pneumonia`: difflib's ratio of at least 0.8), unless they
    differ in numbers only (`grade_1`, `grade_4`: classes of a scale)."""
    if "".join(c for c in a if not c.isdigit()) == "".join(c for c in b if not c.isdigit()):
        return False
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio() >= 0.8


def classes_nowhere(datasets: dict, absent: dict[str, dict[int, str]]) -> tuple[list[int], str]:
    """The classes that no split holds, and one warning for them (instead of one per split): a
    class index above every label in use usually comes from one mistyped label."""
    if len(absent) < 2:
        return [], ""
    nowhere = sorted(set.intersection(*(set(a) for a in absent.values())))
    if not nowhere:
        return [], ""
    ds = next(iter(datasets.values()))
    listed_classes = ", ".join(repr(class_name(ds, c)) for c in nowhere)
    one = len(nowhere) == 1
    inferred = (
        ""
        if isinstance(ds, MASK_DATASETS)
        else " (an inferred num_classes is the largest label + 1, so one mistyped label adds "
        "classes)"
    )
    return nowhere, (
        f"{'class' if one else 'classes'} {listed_classes} of dataset.num_classes="
        f"{ds.num_classes} {'occurs' if one else 'occur'} in no split: check "
        f"dataset.num_classes and dataset.class_names{inferred}"
    )


def intensity(samples: list[Sample]) -> dict[str, Any]:
    """Stored pixel types, channels, sizes and value range, mean and std over every read image."""
    read = [s for s in samples if s.problem is None]
    if not read:
        return {"images": 0}
    values = sum(s.values for s in read)
    mean = sum(s.total for s in read) / values
    variance = max(sum(s.squares for s in read) / values - mean**2, 0.0)
    heights, widths = [s.shape[-2] for s in read], [s.shape[-1] for s in read]
    depths = [s.shape[0] for s in read if len(s.shape) == 3]  # volumes
    return {
        "images": len(read),
        "dtypes": dict(Counter(s.dtype for s in read)),
        "channels": {str(c): n for c, n in sorted(Counter(s.channels for s in read).items())},
        **({"depth": [min(depths), max(depths)]} if depths else {}),
        "height": [min(heights), max(heights)],
        "width": [min(widths), max(widths)],
        "min": min(s.low for s in read),
        "max": max(s.high for s in read),
        "mean": mean,
        "std": variance**0.5,
    }


def mixed_images(samples: dict[str, list[Sample]], names: dict[str, Names]) -> list[str]:
    """A note for each way the read images differ where most agree (stored type, channels),
    naming the few that differ: each is converted as the run's preprocessing says, but a 16-bit
    or colour image among 8-bit grey ones is often a file from elsewhere."""
    read = [(split, s) for split, found in samples.items() for s in found if s.problem is None]
    notes = []
    for attr, what in (("dtype", "stored type"), ("channels", "channels")):
        counts = Counter(getattr(s, attr) for _, s in read)
        if len(counts) < 2:
            continue
        common = counts.most_common(1)[0][0]
        odd = [(split, s) for split, s in read if getattr(s, attr) != common]
        shown = "; ".join(names[split].name(s.index) for split, s in odd[:3])
        more = f"; and {len(odd) - 3} more" if len(odd) > 3 else ""
        listed = ", ".join(f"{value} ({n})" for value, n in counts.most_common())
        notes.append(
            f"images differ in {what}: {listed}; not {common}: {shown}{more} (each is converted "
            "by the run's preprocessing; check that they belong)"
        )
    return notes


# How the data check says each `scale_mismatch`, against the training split's common type.
SCALE_SAID = {
    "float_outside_0_1": "float images of values outside 0-1, read as they are (0-255 values 255 "
    "times brighter)",
    "eight_bit_in_16": "8-bit values stored in 16 bits (uint16 up to 255), read 257 times darker",
    "scaled_for_float": "8/16-bit images read as 0-1 of their bit depth",
}


def mixed_scales(
    datasets: dict, samples: dict[str, list[Sample]], names: dict[str, Names]
) -> list[str]:
    """Errors for images on another pixel scale than the training split's most common storage
    type, where the scale reaches the network (`Normalize.scale_matters`: fixed or dataset
    statistics, none, `invert: auto`), by the rule predictions are refused by
    (`scale_mismatch`): 8/16-bit images are read as 0-1 of their bit depth and floats as they
    are, so among 8-bit images a 16-bit one of values up to 255 reaches the network 257 times
    darker, and a float one of 0-255 values 255 times brighter, with nothing to show it."""
    normalize = getattr(datasets.get("train"), "normalize", None)
    if not getattr(normalize, "scale_matters", False):
        return []
    train = [s for s in samples.get("train", []) if s.problem is None]
    if not train:
        return []
    common = Counter(s.dtype for s in train).most_common(1)[0][0]
    high = max(s.high for s in train if s.dtype == common)
    read = [(split, s) for split, found in samples.items() for s in found if s.problem is None]
    odd: dict[str, list] = {}
    for split, s in read:
        mismatch = scale_mismatch(s.dtype, s.low, s.high, {common}, high)
        if mismatch:
            odd.setdefault(mismatch, []).append((split, s))
    problems = []
    for mismatch, found in odd.items():
        shown = "; ".join(names[split].name(s.index) for split, s in found[:3])
        more = f"; and {len(found) - 3} more" if len(found) > 3 else ""
        problems.append(
            f"{len(found)} image(s) are {SCALE_SAID[mismatch]}, where most training images are "
            f"{common} of values up to {high:.4g} (dataset.normalize.mode={normalize.mode}"
            + (", invert=auto" if normalize.invert == "auto" else "")
            + f"): {shown}{more}; store them as the others are, or normalize each image "
            "(dataset.normalize.mode=zscore or percentile)"
        )
    return problems


def size_problem(dataset: Any, samples: list[Sample]) -> list[str]:
    """Images of several sizes cannot be stacked into a batch for an image-level model."""
    sizes = sorted({s.shape for s in samples if s.problem is None})
    if isinstance(dataset, MASK_DATASETS) or dataset.image_size is not None or len(sizes) < 2:
        return []
    first, last = ("x".join(map(str, size)) for size in (sizes[0], sizes[-1]))
    return [
        f"{dataset.split}: images have {len(sizes)} sizes ({first} ... {last}) and "
        "dataset.image_size is null, so batches cannot be stacked: set dataset.image_size"
    ]


def find_duplicates(
    datasets: dict, samples: dict[str, list[Sample]], names: dict[str, Names]
) -> tuple[dict, list[str], list[str], list[str]]:
    """Identical decoded images (same bytes, shape and dtype).

    Returns:
        The report section, one line per pair shared between two splits, one line per group of
        identical images with different labels, and one note per split holding repeated images.
    """
    groups: dict[bytes, list[tuple[str, int]]] = defaultdict(list)
    for split, found in samples.items():
        for s in found:
            if s.problem is None:
                groups[s.digest].append((split, s.index))
    across: dict[str, dict] = {}
    within: dict[str, dict] = {}
    pairs, conflicts = [], []
    for members in groups.values():
        if len(members) < 2:
            continue
        by_split: dict[str, list[int]] = defaultdict(list)
        for split, index in members:
            by_split[split].append(index)
        for split, indices in by_split.items():
            if len(indices) > 1:
                entry = within.setdefault(split, {"images": 0, "copies": 0, "groups": []})
                entry["images"] += 1
                entry["copies"] += len(indices) - 1
                entry["groups"].append([names[split].name(i) for i in indices])
        present = [s for s in SPLITS if s in by_split]
        for n, a in enumerate(present):
            for b in present[n + 1 :]:
                entry = across.setdefault(f"{a}/{b}", {"images": 0, "pairs": []})
                entry["images"] += 1
                for i in by_split[a]:
                    for j in by_split[b]:
                        entry["pairs"].append([names[a].name(i), names[b].name(j)])
                        pairs.append(
                            f"{b} image {names[b].name(j)} is identical to {a} image "
                            f"{names[a].name(i)}"
                        )
        labels = {(s, i): label_text(datasets[s], i) for s, i in members}
        if len(set(labels.values())) > 1:
            listed = ", ".join(f"{names[s].name(i)} ({text})" for (s, i), text in labels.items())
            conflicts.append(f"identical images with different labels: {listed}")
    notes = [
        f"{split}: {e['images']} image(s) stored more than once ({e['copies']} extra copies; "
        f"duplicates.within_split.{split} lists them)"
        for split, e in within.items()
    ]
    return {"across_splits": across, "within_split": within}, pairs, conflicts, notes


# Resolution tags that image software writes by default (dots per inch), not pixel sizes.
SOFTWARE_DPI = (72, 96, 100, 150, 200, 300, 600, 1200)


def unused_spacing(datasets: dict) -> str | None:
    """A warning when `dataset.spacing` is set and images of 2D segmentation data state another
    pixel spacing in their files, which wins over it (`dataset.file_spacing`): their areas and mm
    distances then rest on the files' tags, which image software writes without meaning them
    (300 dpi is 0.0847 mm), and a run can mix the two scales. A manifest row's own spacing is
    the user's and not counted."""
    differ, total, example = 0, 0, None
    for dataset in datasets.values():
        given = getattr(dataset, "spacing", None)
        if not isinstance(dataset, SegmentationDataset) or given is None:
            continue
        rows = getattr(dataset, "row_spacing", None)
        for index in range(len(dataset.ids)):
            total += 1
            if rows is not None and rows[index]:
                continue
            stated = dataset.spacing_of(index)
            if not np.allclose(stated, given, rtol=1e-4):
                differ += 1
                example = example or (dataset, index, stated)
    if not differ:
        return None
    dataset, index, stated = example
    where = dataset.image_files[index] if hasattr(dataset, "image_files") else dataset.ids[index]
    dpi = 25.4 / stated[0]
    tag = (
        f", a {round(dpi)} dpi resolution tag"
        if round(dpi) in SOFTWARE_DPI and abs(dpi - round(dpi)) < 0.001 * dpi  # 150.012 too
        else ""
    )
    size = " x ".join(f"{v:.4g}" for v in stated)
    given_text = ", ".join(f"{v:g}" for v in dataset.spacing)
    fix = (
        "dataset.file_spacing=false measures every image with dataset.spacing"
        if hasattr(dataset, "use_file_spacing")
        else "a spacing column in the manifest gives each row its own"
    )
    return (
        f"dataset.spacing=[{given_text}] is not used for {differ} of {total} images, whose files "
        f"state another pixel spacing (e.g. {where}: {size} mm{tag}); their areas and mm "
        "distances use the file's. Resolution tags that image software writes by default (72, "
        f"96, 300 dpi) are not pixel sizes: {fix}"
    )


# Voxel sizes this far apart (the larger over the smaller) are not turned into each other: a
# quarter turn would stretch what the network learns by more than a quarter.
TURN_RATIO = 1.25


def anisotropic_turns(datasets: dict) -> str | None:
    """An error when the training augmentation turns volumes by quarter turns (MONAI's
    RandRotate90d) in a plane whose two axes have voxel sizes more than `TURN_RATIO` apart: the
    turn swaps them, and the network learns anatomy stretched by their ratio (an axial scan read
    in RAS order has its slices along axis 2, so turns in axes 1 and 2 swap 0.7 mm and 3 mm
    voxels). The voxel sizes are those training sees: `target_spacing` when set, else each
    volume's; volumes of unknown voxel size are not judged."""
    train = datasets.get("train")
    pipeline = getattr(getattr(train, "transform", None), "pipeline", None)
    if not isinstance(train, VolumeSegmentationDataset) or pipeline is None:
        return None
    transforms = list(getattr(pipeline, "transforms", [pipeline]))
    planes = [
        (k, tuple(int(a) for a in t.spatial_axes))
        for k, t in enumerate(transforms)
        if type(t).__name__ in ("RandRotate90d", "RandRotate90") and hasattr(t, "spatial_axes")
    ]

    def apart(x: float, y: float) -> bool:
        return max(x, y) > TURN_RATIO * min(x, y)

    for index in range(len(train.ids) if planes else 0):
        try:
            spacing = train.target_spacing or train.voxel_spacing(index)
        except DataError:  # named among the samples' problems
            continue
        if not all(math.isfinite(v) and v > 0 for v in spacing):
            continue  # no voxel size known: nothing to compare
        for k, (a, b) in planes:
            if not apart(spacing[a], spacing[b]):
                continue
            equal = [
                (i, j) for i, j in ((0, 1), (0, 2), (1, 2)) if not apart(spacing[i], spacing[j])
            ]
            hint = (
                f" (here axes {list(equal[0])}: augmentation.train.transforms.{k}.spatial_axes"
                f"=[{equal[0][0]},{equal[0][1]}])"
                if equal
                else ""
            )
            size = " x ".join(f"{v:g}" for v in spacing)
            return (
                f"augmentation.train: quarter turns in the plane of axes {a} and {b} "
                f"(RandRotate90d spatial_axes) swap voxels of {spacing[a]:g} and "
                f"{spacing[b]:g} mm ({train.ids[index]}: {size} mm), stretching what the "
                "network learns: turn in a plane of equal voxel sizes" + hint + ", set "
                "dataset.target_spacing to equal sizes, or drop RandRotate90d"
            )
    return None


def built_warnings(datasets: dict) -> dict[str, str]:
    """The warnings the datasets recorded about the data as a whole while they were built (a
    manifest's `data_warnings`: groups in several splits, a grouped split drawn again)."""
    return {k: v for ds in datasets.values() for k, v in getattr(ds, "data_warnings", {}).items()}


def new_report(cfg: DictConfig) -> dict[str, Any]:
    return {
        "dataset": {"target": cfg.dataset.get("_target_"), "path": cfg.dataset.get("path")},
        "ok": True,
        "config_errors": [],
        "errors": [],
        "warnings": [],
        "notes": [],
        "splits": {},
        "duplicates": {"across_splits": {}, "within_split": {}},
        "workers": None,
        "seconds": 0.0,
    }


def check_datasets(
    cfg: DictConfig,
    datasets: dict,
    workers: int | None = None,
    duplicates: str = "warn",
    progress: bool = True,
) -> dict[str, Any]:
    """Read every sample of every split and report what would break or bias training.

    Args:
        cfg: the composed config (`cfg.dataset` names the data in messages).
        datasets: {split: dataset} from `build_datasets`.
        workers: reading threads; None: min(8, CPU count).
        duplicates: `warn` or `error`: how images shared between splits count, and groups
            (`dataset.group_column`) that a CSV's split column puts in several splits.
        progress: show a progress bar (on a terminal).

    Returns:
        The report, as written to `data_report.json`:
        `dataset` ({target, path}); `ok` (no errors); `config_errors`, `errors`, `warnings`,
        `notes`: one line each; `splits`: per split `samples`, `unreadable`, `balance` (`counts`
        per class, `positives` for multi-label, `targets` {name: {min, mean, max}} for regression,
        `pixel_fraction` and `images_with` per class for segmentation) and `intensity` (`images`,
        `dtypes`, `channels`, `height` and `width` [min, max], `min`, `max`, `mean`, `std` of the
        stored values over every image); `duplicates`: `across_splits` {"train/val": {images,
        pairs: [[name, name]]}} and `within_split` {split: {images, copies, groups: [[names]]}};
        `workers`; `seconds` (reading time).
    """
    if duplicates not in ("warn", "error"):
        raise ConfigError(f"duplicates={duplicates!r}: choose warn or error")
    start = time.perf_counter()
    workers = workers or default_workers()
    report = new_report(cfg)
    names = {split: Names(cfg, ds) for split, ds in datasets.items()}
    samples = read_all(datasets, workers, progress)
    absent: dict[str, dict[int, str]] = {}
    for split, ds in datasets.items():
        found = samples[split]
        if not found:
            fold = (cfg.get("cv") or {}).get("fold")
            if not (split == "test" and fold is not None):  # a CV's folds need no test split
                report["errors"].append(f"{split}: the split is empty")
            report["splits"][split] = {"samples": 0}
            continue
        report["errors"] += [names[split].problem(s.index, s.problem) for s in found if s.problem]
        report["errors"] += label_problems(ds, names[split]) + size_problem(ds, found)
        section, absent[split] = balance(ds, found)
        report["splits"][split] = {
            "samples": len(found),
            "unreadable": sum(s.problem is not None for s in found),
            "balance": section,
            "intensity": intensity(found),
        }
    nowhere, warning = classes_nowhere(datasets, absent)
    report["warnings"] += ([warning] if warning else []) + [
        line for lacking in absent.values() for c, line in lacking.items() if c not in nowhere
    ]
    said, noted = review_classes(datasets, names)
    report["warnings"] += said
    report["notes"] += noted
    for kind, line in built_warnings(datasets).items():  # a patient in two splits leaks, too
        leak = kind == "groups_in_splits" and duplicates == "error"
        report["errors" if leak else "warnings"].append(line)
    report["notes"] += mixed_images(samples, names)
    report["errors"] += mixed_scales(datasets, samples, names)
    spacing_said = unused_spacing(datasets)
    report["warnings"] += [spacing_said] if spacing_said else []
    turned = anisotropic_turns(datasets)
    report["errors"] += [turned] if turned else []
    section, pairs, conflicts, notes = find_duplicates(datasets, samples, names)
    report["duplicates"] = section
    report["errors" if duplicates == "error" else "warnings"] += pairs
    report["warnings"] += conflicts
    report["notes"] += notes
    report["ok"] = not report["errors"]
    report |= {"workers": workers, "seconds": round(time.perf_counter() - start, 3)}
    return report
