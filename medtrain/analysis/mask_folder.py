"""Objects measured in mask files made by any tool (one file or a folder of masks): areas,
perimeters, counts per class, in mm when a spacing is known; the library behind `medtrain measure`."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, ListConfig

from medtrain.analysis.measurements import (
    MEASUREMENT_FIELDS,
    TOTAL_FIELDS,
    check_spacing,
    measure_mask,
    totals,
)
from medtrain.data.masks import LOSSY, folder_hint, numbered_regions, read_mask_file, reading_hint
from medtrain.data.readers import file_spacing, read_image_file
from medtrain.errors import ConfigError, DataError
from medtrain.io import csv_header, is_prediction_csv, refuse_file_in_the_way, save_csv
from medtrain.values import whole_number

MASK_EXTENSIONS = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".npy", ".npz")
# A pixel spacing above this many mm is more likely written in micrometres (0.25 um -> 250?).
LARGEST_PIXEL_MM = 10.0
# More class values than this, read without names, are more likely a grey image than classes.
MOST_CLASSES = 32


def list_masks(path: Path) -> list[Path]:
    """The mask file, or the mask files of a folder (sorted, hidden files skipped)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"masks={str(path)!r}: no such file or folder")
    files = sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.suffix.lower() in MASK_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise DataError(f"masks={str(path)!r}: no {'/'.join(MASK_EXTENSIONS)} files in this folder")
    return files


def match_images(masks: list[Path], images: Path, suffix: str = "") -> dict[Path, Path]:
    """The image of each mask: the file in `images` with the mask's stem less `suffix`
    (`case00_mask.png` -> `case00.*` with `_mask`), or `images` itself."""
    if images.is_file() and len(masks) == 1:
        return {masks[0]: images}
    if not images.is_dir():
        what = (
            "is a file; give a folder for a folder of masks"
            if images.is_file()
            else "no such folder"
        )
        raise DataError(f"images={str(images)!r}: {what}")
    by_stem: dict[str, list[Path]] = {}
    for path in sorted(images.iterdir()):
        if (
            path.is_file()
            and path.suffix.lower() in MASK_EXTENSIONS
            and not path.name.startswith(".")
        ):
            by_stem.setdefault(path.stem, []).append(path)
    matched = {}
    for mask in masks:
        stem = mask.stem.removesuffix(suffix) if suffix else mask.stem
        found = by_stem.get(stem, [])
        if not found:
            # The mask names carry a suffix the images lack: after the longest image name.
            prefixes = [o for o in by_stem if mask.stem.startswith(o) and len(mask.stem) > len(o)]
            cut = mask.stem[len(max(prefixes, key=len)) :] if prefixes else None
            hint = (
                f" (the masks end in {cut!r}: set mask_suffix={cut})" if cut and not suffix else ""
            )
            raise DataError(f"{mask}: no image named {stem}.* in images={str(images)!r}{hint}")
        if len(found) > 1:
            raise DataError(f"{mask}: several images match it: {[p.name for p in found]}")
        matched[mask] = found[0]
    return matched


def _class_values(cfg: DictConfig) -> dict[int, int] | None:
    values = cfg.class_values
    if values is None:
        return None
    if not isinstance(values, DictConfig):
        raise ConfigError(f"class_values={values!r} must be a mapping like {{0:0,128:1,255:2}}")
    try:
        return {int(k): int(v) for k, v in values.items()}
    except (TypeError, ValueError) as err:
        raise ConfigError(f"class_values={dict(values)!r} must map whole numbers") from err


def _class_names(cfg: DictConfig) -> list[str] | None:
    names = cfg.class_names
    if names is None:
        return None
    if len(names) < 2 or not all(names):
        raise ConfigError(
            f"class_names={list(names)!r} must list a name per class index, background first, "
            "e.g. [background,nucleus]"
        )
    return [str(n) for n in names]


# The physical units `measure` writes lengths in (`units=`), each with its size in mm.
UNIT_MM = {"mm": 1.0, "um": 0.001}


def length_unit(cfg: DictConfig) -> str:
    """The `units=` argument: `mm`, or `um` (micrometres, also written µm) for microscopy."""
    unit = str(cfg.units).strip().replace("µ", "u").replace("μ", "u")
    if unit not in UNIT_MM:
        raise ConfigError(f"units={cfg.units!r} must be mm or um (micrometres)")
    return unit


def spacing_arg(cfg: DictConfig, unit: str = "mm") -> tuple[float, float] | None:
    """The `spacing=` argument, in `unit` per pixel, as (row, col): one number for square pixels;
    None if unset."""
    spacing = cfg.spacing
    if spacing is None:
        return None
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = [spacing, spacing]  # one number: square pixels
    if not isinstance(spacing, (ListConfig, list)):
        raise ConfigError(f"spacing={spacing!r} must be [row_{unit},col_{unit}] or one number")
    values = list(spacing)
    values = values * 2 if len(values) == 1 else values  # [0.5]: square, as 0.5
    if unit == "mm":
        return check_spacing(values)
    try:  # checked in mm, the bounds a file's own spacing must meet, and kept as given
        check_spacing([float(v) * UNIT_MM[unit] for v in values])
    except (TypeError, ValueError, ConfigError) as err:
        raise ConfigError(
            f"spacing={values!r} must be two positive numbers (row_{unit}, col_{unit}) from "
            f"{1e-6 / UNIT_MM[unit]:g} to {1e4 / UNIT_MM[unit]:g}"
        ) from err
    return (float(values[0]), float(values[1]))


# The largest value a folder of masks of one value besides 0 may hold as a class index: {0, 2}
# masks (a multi-class run's predictions of its class 2 alone) are class 2; {0, 255} (or 1, or
# 128) are binary masks, one class.
LONE_CLASS_INDEX = 32


def folder_classes(masks: list[Path]) -> int | None:
    """The classes (with background) of a folder of class masks read without names: one more
    than the largest value when the masks hold two or more values besides 0 together, so that a
    mask holding only {0, 2} keeps class 2 as its neighbours do (read alone, it is a binary
    {0, v} mask, v -> 1: the same value was class_2 in one file and class_1 in the next), or one
    value from 2 to `LONE_CLASS_INDEX` (a class index: a multi-class run's masks that hold one
    of its classes). None for a folder of binary masks (or JPEG ones, whose values compression
    blurs)."""
    if any(m.suffix.lower() in LOSSY for m in masks):
        return None
    values: set[int] = set()
    lone = True  # every mask holds one value besides 0 at most
    for mask in masks:
        found = np.unique(read_image_file(mask))
        if not np.array_equal(found, np.round(found)):
            return None  # read_mask_file refuses fractions, naming the file
        held = {int(v) for v in found if v != 0}
        lone = lone and len(held) <= 1
        values |= held
    if lone and values and max(values) > LONE_CLASS_INDEX:
        return None  # binary masks saved two ways ({0, 1} and {0, 255}): one class, as each alone
    indices = len(values) >= 2 or (len(values) == 1 and 2 <= max(values) <= LONE_CLASS_INDEX)
    return max(values) + 1 if indices else None


# The tables a segmentation run, and `medtrain predict`, write with measure's columns (the test
# split's objects; the predicted masks' objects, instances when the run separates them).
RUN_TABLES = ("measurements.csv", "measurement_totals.csv")


def prediction_csv(folder: Path) -> Path | None:
    """A segmentation's `medtrain predict` CSV in `folder` (columns `file`, ... `mask`, ...
    `error`), or None."""
    found = sorted(folder.glob("*.csv")) if folder.is_dir() else []
    return next((path for path in found if is_prediction_csv(path, of_masks=True)), None)


def check_tables(object_table: Path, totals_table: Path) -> None:
    """The tables may replace only earlier tables of `medtrain measure` (by their columns), never
    a run's (a run folder's `measurements.csv` holds the ground truth's rows too) or a
    prediction's (`medtrain predict` writes its tables beside its CSV, of instances where the run
    separates them), a manifest, a mask or anything else. Checked before any mask is read.

    Raises:
        ConfigError: naming the file and what it holds.
    """
    refuse_file_in_the_way("output", object_table)
    if object_table.is_dir():
        raise ConfigError(
            f"output={object_table} is a folder; give a file name such as results.csv"
        )
    run = (object_table.parent / "metrics.json").is_file()
    for path, fields in ((object_table, MEASUREMENT_FIELDS), (totals_table, TOTAL_FIELDS)):
        if path.exists() and path.name in RUN_TABLES:  # the same columns as measure's
            predicted = None if run else prediction_csv(path.parent)
            if run or predicted:
                owner = (
                    "a run's file (its folder holds a run)"
                    if run
                    else f"a prediction's table (beside {predicted.name}, which names its masks)"
                )
                raise ConfigError(
                    f"{path} is {owner}, which measure would replace: give output= a new file "
                    "name; nothing was written"
                )
        header = csv_header(path) if path.exists() else list(fields)
        if header != list(fields):
            what = f"the columns {header[:4]}" if header else "no CSV text"
            raise ConfigError(
                f"{path} exists and is not an earlier table of medtrain measure (it holds "
                f"{what}): give output= a new file name; nothing was written"
            )


def measure_files(cfg: DictConfig) -> dict[str, Any]:
    """Measure every mask named by `cfg` and write the object and totals tables.

    Returns:
        A summary: files, objects per class, units per file count, the paths written, and
        the warnings (one line each).
    """
    if not cfg.masks:
        raise ConfigError("masks=<folder or file> is required")
    class_values = _class_values(cfg)
    class_names = _class_names(cfg)
    unit = length_unit(cfg)
    spacing = spacing_arg(cfg, unit)
    connectivity = whole_number(cfg.connectivity, "connectivity")
    min_size = whole_number(cfg.min_size, "min_size")
    instances = cfg.instances
    if not isinstance(instances, bool):
        raise ConfigError(f"instances={instances!r} must be true or false")
    if instances and class_values:
        raise ConfigError("instances=true reads mask values as object labels; drop class_values")
    object_table = Path(cfg.output)
    totals_table = object_table.with_name(f"{object_table.stem}_totals.csv")
    check_tables(object_table, totals_table)
    masks = list_masks(Path(cfg.masks))
    images = match_images(masks, Path(cfg.images), str(cfg.mask_suffix or "")) if cfg.images else {}
    ids = [m.stem for m in masks]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        raise DataError(f"masks={cfg.masks!r}: several masks share the name {repeated[0]!r}")

    # The spacing argument wins over file metadata; the mask's metadata over the image's. Read from
    # the file headers first, so that a folder of mixed units is refused before any measuring.
    # Files state mm; the spacing argument is in `unit`. Measured in `unit` (kept as given).
    in_mm = tuple(v * UNIT_MM[unit] for v in spacing) if spacing else None
    spacings = {
        m: in_mm or file_spacing(m) or (file_spacing(images[m]) if m in images else None)
        for m in masks
    }
    notes = spacing_notes(masks, images, in_mm, spacings, unit)
    units = {m.stem: unit if spacings[m] else "px" for m in masks}
    _check_one_unit(cfg.masks, units, unit)
    if spacing:
        spacings = dict.fromkeys(masks, spacing)
    elif unit != "mm":
        spacings = {
            m: tuple(v / UNIT_MM[unit] for v in s) if s else None for m, s in spacings.items()
        }
    num_classes = len(class_names) if class_names and not instances else None
    if not (instances or class_values or class_names):
        num_classes = folder_classes(masks)
    rows, found_classes = [], set()
    suspicious: list[str] = []  # masks that look read the wrong way (labels vs classes)
    numbered: list[int | None] = []  # masks read as classes: n for values 1..n, one region each
    for mask_path in masks:
        mask = read_mask_file(mask_path, class_values, num_classes, labels=instances)
        if instances or not (class_values or class_names):
            hint = reading_hint(mask, instances, connectivity)
            if hint:
                suspicious.append(f"{mask_path.name}: {hint}")
        if not (instances or class_values or class_names):
            numbered.append(numbered_regions(mask, connectivity))
        image = read_image_file(images[mask_path]) if mask_path in images else None
        try:
            measured = measure_mask(
                mask,
                spacing=spacings[mask_path],
                image=image,
                class_names=class_names,
                image_id=mask_path.stem,
                source=str(cfg.source),
                connectivity=connectivity,
                min_size=min_size,
                instances=instances,
                unit=unit,
            )
        except DataError as err:
            raise DataError(f"{mask_path}: {err}") from err
        rows.extend(measured)
        found_classes.update(int(k) for k in np.unique(mask) if k != 0)

    if instances:
        classes = [class_names[1] if class_names else "object"]
    elif class_names is not None:
        classes = class_names[1:]
    else:
        indices = found_classes | {k for k in (class_values or {}).values() if k != 0}
        # Masks without any object are binary masks of nothing: each image keeps its row (0).
        classes = [f"class_{k}" for k in sorted(indices or {1})]
        if len(indices) > MOST_CLASSES:
            notes.append(
                f"the masks hold {len(indices)} values, read as {len(indices)} classes (class_"
                f"{min(indices)} to class_{max(indices)}): are they masks? A grey image is none; "
                "object labels take instances=true, class masks their class_names"
            )
    sums = totals(rows, ids, classes, source=str(cfg.source), units=units)
    try:
        save_csv(object_table, *in_unit(rows, MEASUREMENT_FIELDS, unit))
        save_csv(totals_table, *in_unit(sums, TOTAL_FIELDS, unit))
    except OSError as err:
        raise DataError(f"cannot write {object_table} ({err})") from err
    hint = None if suspicious else folder_hint(numbered)
    misread = _reading_warning(suspicious, len(masks), instances) or (
        hint and f"the masks look misread ({hint}): {LABELS_ADVICE}"
    )
    return {
        "files": len(masks),
        "objects": {c: sum(r["class"] == c for r in rows) for c in classes},
        "units": dict(Counter(units.values())),
        "written": [object_table, totals_table],
        "warnings": [*([misread] if misread else []), *notes],
    }


def in_unit(
    rows: list[dict[str, Any]], fields: list[str], unit: str
) -> tuple[list[dict[str, Any]], list[str]]:
    """Rows and fields of a measurement table with the `_mm`/`_mm2` columns named for `unit`
    (their values are measured in it already)."""
    if unit == "mm":
        return rows, fields

    def name(field: str) -> str:
        return re.sub(r"_mm(2?)(?=_|$)", rf"_{unit}\1", field)

    return [{name(k): v for k, v in row.items()} for row in rows], [name(f) for f in fields]


def spacing_notes(
    masks: list[Path],
    images: dict[Path, Path],
    given: tuple[float, float] | None,
    used: dict[Path, tuple[float, float] | None],
    unit: str = "mm",
) -> list[str]:
    """Warnings about the pixel spacings used (in mm): one that reads as micrometres written as
    mm, and a mask whose file states another spacing than its image's (the mask's is used)."""
    notes = []
    large = sorted({v for s in used.values() if s for v in s if v > LARGEST_PIXEL_MM})
    if large and unit == "mm":
        notes.append(
            f"a pixel spacing of {large[-1]:g} mm: spacing is in mm per pixel (0.25 um is "
            "0.00025); areas are in mm^2. Microscopy in micrometres: units=um"
        )
    stated = {m: file_spacing(images[m]) for m in masks if given is None and m in images}
    differ = [
        (m, theirs)
        for m, theirs in stated.items()
        if theirs is not None
        and used[m] is not None
        and not np.allclose(theirs, used[m], rtol=1e-3)
    ]
    if differ:
        m, theirs = differ[0]
        notes.append(
            f"{len(differ)} mask(s) state another pixel spacing than their image (e.g. {m.name}: "
            f"{tuple(map(float, used[m]))} mm, its image {tuple(map(float, theirs))} mm): the "
            f"mask's is used; give spacing=[row_{unit},col_{unit}] to choose"
        )
    return notes


def _check_one_unit(masks: str, units: dict[str, str], unit: str = "mm") -> None:
    """One table, one unit: refuse masks of which some state a pixel spacing and others do not
    (before anything is written), as training on such a folder is refused."""
    stated = [i for i, u in units.items() if u != "px"]
    without = [i for i, u in units.items() if u == "px"]
    if stated and without:
        raise DataError(
            f"masks={masks!r}: {len(stated)} mask(s) state a pixel spacing in the file or their "
            f"image (e.g. {stated[0]}) and {len(without)} do not (e.g. {', '.join(without[:3])}); "
            f"one table needs one unit: give spacing=[row_{unit},col_{unit}], or measure the two "
            "groups separately"
        )


LABELS_ADVICE = (
    "read as classes; if they are object labels (Cellpose, StarDist), pass instances=true (class "
    "masks of that many classes can ignore this)"
)


def _reading_warning(suspicious: list[str], total: int, instances: bool) -> str | None:
    if not suspicious:
        return None
    advice = (
        "with instances=true each value is one object: drop it for binary or class masks"
        if instances
        else LABELS_ADVICE
    )
    return f"{len(suspicious)} of {total} masks look misread ({suspicious[0]}): {advice}"
