"""What the images of a run's splits show taken together (the image half of `medtrain
check-data`; `validation` reads the samples): copies across and within splits however they are
stored, intensity and pixel scales, sizes, spacing tags the run ignores, and quarter turns across
unequal voxels."""

from __future__ import annotations

import hashlib
import math
from collections import Counter, defaultdict
from typing import TYPE_CHECKING, Any

import numpy as np

from medtrain.data.base import SPLITS
from medtrain.data.segmentation import SegmentationDataset
from medtrain.data.transforms import scale_mismatch
from medtrain.data.volume_segmentation import VolumeSegmentationDataset
from medtrain.errors import DataError

if TYPE_CHECKING:
    from medtrain.data.validation import Names, Sample

# Datasets of images (or volumes) with masks: their masks are checked, not their labels.
MASK_DATASETS = (SegmentationDataset, VolumeSegmentationDataset)


def class_name(dataset: Any, k: int) -> str:
    """Class `k` as messages name it: its `class_names` entry, else its index."""
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


def intensity(samples: list[Sample]) -> dict[str, Any]:
    """Stored pixel types, channels, sizes and value range, mean and std over every read image;
    images of several stored types also each type's own (`by_dtype`): 8-bit and 16-bit values
    pooled describe neither."""
    read = [s for s in samples if s.problem is None]
    if not read:
        return {"images": 0}
    heights, widths = [s.shape[-2] for s in read], [s.shape[-1] for s in read]
    depths = [s.shape[0] for s in read if len(s.shape) == 3]  # volumes
    dtypes = Counter(s.dtype for s in read)
    summary = {
        "images": len(read),
        "dtypes": dict(dtypes),
        "channels": {str(c): n for c, n in sorted(Counter(s.channels for s in read).items())},
        **({"depth": [min(depths), max(depths)]} if depths else {}),
        "height": [min(heights), max(heights)],
        "width": [min(widths), max(widths)],
        **_values(read),
    }
    if len(dtypes) > 1:
        summary["by_dtype"] = {
            dtype: {"images": n, **_values([s for s in read if s.dtype == dtype])}
            for dtype, n in dtypes.most_common()
        }
    return summary


def _values(read: list[Sample]) -> dict[str, float]:
    """The stored values' range, mean and std over the images `read`."""
    values = sum(s.values for s in read)
    mean = sum(s.total for s in read) / values
    variance = max(sum(s.squares for s in read) / values - mean**2, 0.0)
    return {
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


def blank_images(samples: dict[str, list[Sample]], names: dict[str, Names]) -> list[str]:
    """A warning per split for images of one value only: nothing to learn or see in them (an
    empty export, a failed acquisition, a reader that missed the pixel data), and per-image
    normalisation divides by their zero spread."""
    warnings = []
    for split, found in samples.items():
        blank = [s for s in found if s.problem is None and s.low == s.high]
        if not blank:
            continue
        shown = "; ".join(names[split].name(s.index) for s in blank[:3])
        more = f"; and {len(blank) - 3} more" if len(blank) > 3 else ""
        values = sorted({s.low for s in blank})
        value = f"{values[0]:g}" if len(values) == 1 else "one value each"
        warnings.append(
            f"{split}: {len(blank)} of {len(found)} images hold a single value ({value}): "
            f"{shown}{more}; check that they were exported or read as they should"
        )
    return warnings


# How the data check says each `scale_mismatch`, against the training split's common type.
SCALE_SAID = {
    "float_outside_0_1": "float images of values outside 0-1, read as they are (0-255 values 255 "
    "times brighter)",
    "eight_bit_in_16": "8-bit values stored in 16 bits (uint16 up to 255), read 257 times darker",
    "scaled_for_float": "8/16-bit images read as 0-1 of their bit depth",
    "float_beyond_0_1": "float images of values above 1.5 (0-255 values are 255 times brighter "
    "than floats of 0-1)",
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
