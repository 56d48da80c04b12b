"""Reading every sample of a run's splits to find what would break or bias training: unreadable
files, labels outside the classes, empty splits, identical images across splits, class balance and
intensity summaries (the core of `medtrain check-data`)."""

from __future__ import annotations

import difflib
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from medtrain.data.image_checks import (
    MASK_DATASETS,
    anisotropic_turns,
    blank_images,
    class_name,
    content_digest,
    find_duplicates,
    intensity,
    mixed_images,
    mixed_scales,
    size_problem,
    unused_spacing,
)
from medtrain.data.manifest import Manifest
from medtrain.data.medmnist import MedMNIST
from medtrain.errors import ConfigError, DataError
from medtrain.metrics.regression import whole_grades

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
            # By its id (`train_4422`): a CV fold's splits hold entries of the file's train and
            # val arrays, at other positions than in the file.
            split, _, entry = str(self.dataset.ids[index]).rpartition("_")
            if split and entry.isdigit():
                return f"{self.path} {split}_images[{entry}]"
            return f"{self.path} {self.dataset.split}_images[{index}]"
        return f"{self.dataset.split} sample {self.dataset.ids[index]}"

    def problem(self, index: int, text: str) -> str:
        """One message line: the manifest row first, then the file (unless `text` names it)."""
        files, row = self.files(index), self.row(index)
        row = f"{row}: " if row else ""
        if any(f in text for f in files):
            return row + text
        return f"{row}{files[0]}: {text}" if files else f"{self.name(index)}: {text}"


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


def grades_outside(
    datasets: dict, names: dict[str, Names], grades: Any
) -> tuple[list[str], list[str]]:
    """(errors, warnings) for ordinal grades outside `grades` (`task.grade_range`), naming their
    rows: errors where the config gives the range, warnings where it is the training split's
    (`RegressionTask.fit_to_data` marks the training set so: a grade only val or test hold,
    which the model cannot predict; the split decides that, not the data). A grade that is not a
    whole number is an error in any split (training refuses it in its own; in val or test the
    metrics would round it without a word)."""
    if grades is None:
        return [], []
    low, high = float(grades[0]), float(grades[1])

    def targets(ds: Any) -> np.ndarray:
        values = np.asarray(ds.labels).reshape(len(ds.labels), -1).astype(np.float64)
        return np.where(np.isfinite(values), values, np.nan)

    given = not getattr(datasets.get("train"), "grade_range_of_split", False)
    said, fractional = [], []
    for split, ds in datasets.items():
        if isinstance(ds, MASK_DATASETS) or not getattr(ds, "regression", False):
            continue
        values = targets(ds)
        for i in np.flatnonzero(~whole_grades(values)):
            text = (
                f"grade {values[i, 0]:g} is not a whole number (task.ordinal=true): fix the "
                "target, or set task.ordinal=false for continuous values"
            )
            fractional.append(names[split].problem(int(i), text))
        for i in np.flatnonzero(((values < low) | (values > high)).any(axis=1)):
            text = (
                f"grade {values[i, 0]:g} is outside task.grade_range=[{low:g}, {high:g}]: fix "
                "the target or widen task.grade_range"
                if given
                else f"grade {values[i, 0]:g} is outside the training split's grades {low:g} "
                f"to {high:g} (task.grade_range unset): the model cannot predict it; set "
                "task.grade_range=[lowest,highest] to cover every grade"
            )
            said.append(names[split].problem(int(i), text))
    return (fractional + said, []) if given else (fractional, said)


def constant_targets(datasets: dict) -> list[str]:
    """A warning per regression value whose training targets are all one number: the model has
    nothing to learn (it predicts that number), and R^2 and correlations are undefined."""
    train = datasets.get("train")
    if train is None or not getattr(train, "regression", False) or not len(train.labels):
        return []
    values = np.asarray(train.labels, dtype=np.float64).reshape(len(train.labels), -1)
    names = list(train.class_names or range(values.shape[1]))
    return [
        f"train: every target of {names[k]!r} is {values[0, k]:g} ({len(values)} rows): the "
        "model has nothing to learn, and R^2 and correlations are undefined; check the target "
        "column"
        for k in range(values.shape[1])
        if np.ptp(values[:, k]) == 0
    ]


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
    """(warnings, notes) about the classes of a classification task: which class is a binary
    task's positive one (a warning when its name reads as the negative finding), and a class (or
    a multi-label task's label) of at most `TYPO_MAX_SAMPLES` images named like one ten times
    larger (a misspelt label, which would otherwise train a class of its own)."""
    ds = datasets.get("train") or next(iter(datasets.values()))
    if isinstance(ds, MASK_DATASETS) or ds.regression:
        return [], []
    multilabel = np.asarray(ds.labels).ndim == 2
    k = int(ds.num_classes)
    class_names = [class_name(ds, c) for c in range(k)]
    warnings: list[str] = []
    notes: list[str] = []
    # Labels 0/1 say which is positive themselves; a multi-label task's labels are each positive.
    if k == 2 and class_names != ["0", "1"] and not multilabel:
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
    # Which images hold each class (label): one column per class, rows as the split's.
    held = {s: y > 0 if y.ndim == 2 else y[:, None] == np.arange(k) for s, y in labels.items()}
    counts = sum(h.sum(axis=0) for h in held.values())
    kind, plural = ("label", "labels") if multilabel else ("class", "classes")
    for c in np.flatnonzero((counts > 0) & (counts <= TYPO_MAX_SAMPLES)).tolist():
        larger = {class_names[o]: o for o in np.flatnonzero(counts >= 10 * counts[c]).tolist()}
        like = closest_similar(class_names[c], list(larger))
        if like is not None:
            found = [
                names[split].name(int(i))
                for split, h in held.items()
                for i in np.flatnonzero(h[:, c])
            ]
            warnings.append(
                f"{kind} {class_names[c]!r} has {len(found)} image(s) ({'; '.join(found)}) and "
                f"is named like {like!r} ({int(counts[larger[like]])}): a typo? It "
                f"trains as a {kind} of its own; listing the {plural} in dataset.class_names "
                "makes a misspelt label an error"
            )
    return warnings, notes


def _ratio(a: str, b: str) -> float:
    return difflib.SequenceMatcher(None, a.lower(), b.lower()).ratio()


def _similar(a: str, b: str) -> bool:
    """Names a typo apart (`pnuemonia`, `pneumonia`: difflib's ratio of at least 0.8), unless they
    differ in numbers only (`grade_1`, `grade_4`: classes of a scale)."""
    if "".join(c for c in a if not c.isdigit()) == "".join(c for c in b if not c.isdigit()):
        return False
    return _ratio(a, b) >= 0.8


def closest_similar(name: str, others: Sequence[str]) -> str | None:
    """The name of `others` a typo away from `name` (`_similar`), the closest of several ('Normal'
    is like 'normal' before 'abnormal'); None when none is."""
    like = [other for other in others if other != name and _similar(name, other)]
    return max(like, key=lambda other: _ratio(name, other)) if like else None


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
    task = cfg.get("task") or {}
    grades = task.get("grade_range") if task.get("ordinal") else None
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
    wrong, unseen = grades_outside(datasets, names, grades)
    report["errors"] += wrong
    report["warnings"] += unseen + constant_targets(datasets)
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
    report["warnings"] += blank_images(samples, names)
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
