"""`python -m medtrain.predict run_dir=<run> inputs=<file|folder|glob|manifest.csv> output=<csv>`:
a finished run's predictions for new images, through the run's own evaluation preprocessing."""

from __future__ import annotations

import glob
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from tqdm import tqdm

from medtrain.analysis.measurements import MEASUREMENT_FIELDS
from medtrain.analysis.overlays import safe_name
from medtrain.analysis.volumes import write_nifti
from medtrain.cli import parse_key_values, tool_args, whole_number
from medtrain.data.manifest import read_csv
from medtrain.data.readers import READABLE_EXTENSIONS
from medtrain.data.volume_slices import case_name
from medtrain.data.volumes import is_nifti
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.inference import Predictor
from medtrain.io import save_csv
from medtrain.measure import spacing_arg
from medtrain.tasks.segmentation import write_mask

log = logging.getLogger("medtrain.predict")
DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "inputs": None,
    "output": "predictions.csv",
    "device": "auto",
    "batch_size": 32,
    "spacing": None,
    "image_column": "image",
    "masks": None,
    "measurements": None,
    "progress": True,
}
TEXT_KEYS = ("run_dir", "inputs", "output", "device", "image_column", "masks", "measurements")
USAGE = """\
usage: python -m medtrain.predict run_dir=RUN inputs=PATH [key=value ...]

  run_dir=RUN          a finished run (its checkpoints/best.pt and its evaluation preprocessing)
  inputs=PATH          an image file, a folder (searched recursively), a quoted glob ('scans/*.dcm')
                       or a CSV manifest with an `image` column (paths relative to the CSV)
  output=FILE.csv      one row per input (default predictions.csv)
  device=auto          auto | cpu | cuda | cuda:N
  batch_size=32        images per forward pass
  spacing=[ROW,COL]    segmentation: pixel size in mm (default: the file's, else the run's)
  image_column=image   the manifest's image column
  masks=DIR            segmentation: where mask PNGs go (default: masks/ beside the output)
  measurements=FILE    segmentation: per-object table (default: measurements.csv beside the output)
  progress=true        show a progress bar

Formats: PNG, JPEG, TIFF (8/16 bit, grey or colour), DICOM, NPY, NPZ. A run trained on slices of
volumes (dataset=volume_slices) also takes volumes: NIfTI files and DICOM series folders, segmented
slice by slice and reassembled (masks/<case>.nii.gz, volume_ml_<class> per row). An input that cannot
be read gets its reason in the `error` column; the exit status is then 1.
"""


def list_inputs(spec: str, image_column: str = "image") -> list[tuple[Path, str]]:
    """The files named by `inputs=`, each with the name its row shows.

    Raises:
        ConfigError: nothing matches, or a manifest lacks the image column.
    """
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv":
        header, rows, lines = read_csv(path)
        if image_column not in header:
            raise ConfigError(
                f"inputs={spec!r}: the manifest has no {image_column!r} column (it has {header}); "
                "set image_column=<name>"
            )
        found = []
        for row, line in zip(rows, lines, strict=True):
            name = row[image_column]
            if not name:
                raise DataError(f"{path}: line {line}: the {image_column!r} cell is empty")
            file = Path(name) if Path(name).is_absolute() else path.parent / name
            found.append((file, name))
        return found
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files = sorted(
            f
            for f in path.rglob("*")
            if f.is_file()
            and f.suffix.lower() in READABLE_EXTENSIONS
            and not any(part.startswith(".") for part in f.relative_to(path).parts)
        )
        if not files:
            raise ConfigError(f"inputs={spec!r}: no {'/'.join(READABLE_EXTENSIONS)} files here")
        return [(f, str(f.relative_to(path))) for f in files]
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise ConfigError(f"inputs={spec!r}: no such file or folder, and no file matches it")
    return [(f, str(f)) for f in matches]


def list_volumes(spec: str, image_column: str = "image") -> list[tuple[Path, str]]:
    """The volumes named by `inputs=` for a run trained on slices of volumes: NIfTI files, DICOM
    series folders (a folder of .dcm files is one series; a folder of such folders, one each)."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv" or not path.is_dir():
        return list_inputs(spec, image_column)
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    if any(p.suffix.lower() == ".dcm" for p in entries):
        return [(path, path.name)]
    found = [p for p in entries if is_nifti(p)] + [p for p in entries if p.is_dir()]
    if not found:
        raise ConfigError(f"inputs={spec!r}: no .nii/.nii.gz volumes or DICOM series folders here")
    return [(p, p.name) for p in found]


def predict_volumes(cfg: DictConfig, predictor: Predictor) -> dict[str, Any]:
    """Segment each input volume slice by slice; write its label volume and volumes in mL."""
    inputs = list_volumes(str(cfg.inputs), cfg.image_column)
    output = Path(cfg.output)
    masks_dir = Path(cfg.masks) if cfg.masks else output.parent / "masks"
    names = predictor.class_names[1:]
    rows, used = [], set()
    for file, name in tqdm(inputs, desc="predict", disable=None if cfg.progress else True):
        try:
            result = predictor.predict_volume(file, name)
        except DataError as err:
            rows.append({"file": name, "error": str(err)})
            continue
        stem = unique_stem(case_name(Path(name)) if "/" not in name else name, used)
        mask_path = write_nifti(masks_dir / f"{stem}.nii.gz", result["mask"], result["affine"])
        row = {"file": name, "mask": _relative(mask_path, output.parent), "error": ""}
        row |= {f"volume_ml_{n}": repr(result["volumes_ml"][n]) for n in names}
        rows.append(row)
    fields = ["file", "mask", *(f"volume_ml_{n}" for n in names), "error"]
    save_csv(output, rows, fields)
    failed = [r for r in rows if r.get("error")]
    return {"inputs": len(inputs), "failed": failed, "written": [output]}


def result_row(
    predictor: Predictor, name: str, result: dict[str, Any], mask_file: str | None
) -> dict[str, Any]:
    """One CSV row: classification probabilities and label, regression values, or the mask file
    with the count and area of each class. Numbers are written with full precision."""
    row: dict[str, Any] = {"file": name, "error": ""}
    if predictor.kind == "classification":
        if "labels" in result:
            row["labels"] = ";".join(result["labels"])
        else:
            row["label"] = result["label"]
        row |= {f"prob_{n}": repr(p) for n, p in result["probabilities"].items()}
    elif predictor.kind == "regression":
        row |= {f"value_{n}": repr(v) for n, v in result["values"].items()}
        if "value" in result:
            row["value"] = repr(result["value"])
    else:  # the columns of a run's own predictions.csv
        row |= {"mask": mask_file, "unit": result["units"]}
        for total in result["totals"]:
            row[f"count_{total['class']}"] = total["count"]
            row[f"area_px_{total['class']}"] = total["total_area_px"]
            mm2 = repr(float(total["total_area_mm2"])) if result["units"] == "mm" else ""
            row[f"area_mm2_{total['class']}"] = mm2
    return row


def fields_for(predictor: Predictor) -> list[str]:
    names = predictor.class_names
    if predictor.kind == "classification":
        label = ["labels"] if getattr(predictor.task, "multilabel", False) else ["label"]
        return ["file", *label, *(f"prob_{n}" for n in names), "error"]
    if predictor.kind == "regression":
        value = ["value"] if len(names) == 1 else []
        return ["file", *value, *(f"value_{n}" for n in names), "error"]
    per_class = [f"{what}_{n}" for n in names[1:] for what in ("count", "area_px", "area_mm2")]
    return ["file", "mask", *per_class, "unit", "error"]


def predict_files(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input named by `cfg`, writing the output CSV (and masks and measurements for
    segmentation). Returns a summary: counts, failures, the paths written."""
    if not cfg.run_dir or not cfg.inputs:
        raise ConfigError("run_dir=<run> and inputs=<file|folder|glob|manifest> are required")
    batch_size = whole_number(cfg.batch_size, "batch_size", 1)
    spacing = spacing_arg(cfg)
    predictor = Predictor(cfg.run_dir, device=cfg.device)
    if predictor.slices_volumes and _names_volumes(str(cfg.inputs), cfg.image_column):
        return predict_volumes(cfg, predictor)
    inputs = list_inputs(str(cfg.inputs), cfg.image_column)
    output = Path(cfg.output)
    masks_dir = Path(cfg.masks) if cfg.masks else output.parent / "masks"
    measurements_path = (
        Path(cfg.measurements) if cfg.measurements else output.parent / "measurements.csv"
    )
    rows: list[dict[str, Any]] = []
    objects: list[dict[str, Any]] = []
    used: set[str] = set()
    bar = tqdm(total=len(inputs), desc="predict", disable=None if cfg.progress else True)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        decoded, names = [], []
        for file, name in chunk:
            try:
                decoded.append(predictor.read(file))
                names.append(name)
            except DataError as err:
                rows.append({"file": name, "error": str(err)})
        try:
            results = predictor.predict(decoded, names, spacing) if decoded else []
        except DataError:  # one unusable image (e.g. 2 channels for a grey model): find it
            results = []
            for image, name in zip(decoded, names, strict=True):
                try:
                    results += predictor.predict([image], [name], spacing)
                except DataError as err:
                    results.append(err)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                rows.append({"file": name, "error": str(result)})
                continue
            mask_file = None
            if predictor.kind == "segmentation":
                stem = unique_stem(Path(name).with_suffix("").as_posix(), used)
                mask_path = masks_dir / f"{stem}.png"
                write_mask(mask_path, result["mask"], len(predictor.class_names))
                mask_file = _relative(mask_path, output.parent)
                objects += result["measurements"]
            rows.append(result_row(predictor, name, result, mask_file))
        bar.update(len(chunk))
    bar.close()
    order = {name: k for k, (_, name) in enumerate(inputs)}
    rows.sort(key=lambda r: order[r["file"]])
    save_csv(output, rows, fields_for(predictor))
    written = [output]
    if predictor.kind == "segmentation":
        save_csv(measurements_path, objects, MEASUREMENT_FIELDS)
        written.append(measurements_path)
    failed = [r for r in rows if r.get("error")]
    return {"inputs": len(inputs), "failed": failed, "written": written}


def unique_stem(name: str, used: set[str]) -> str:
    """A file-name stem for `name` that no earlier input took (compared ignoring case): two inputs
    called `case0` in different folders must not overwrite each other's mask."""
    stem = safe_name(name.removesuffix(".nii.gz").removesuffix(".nii"))
    while stem.lower() in used:
        stem += "_"
    used.add(stem.lower())
    return stem


def _names_volumes(spec: str, image_column: str) -> bool:
    """Whether `inputs=` names volumes (NIfTI, DICOM series folders) rather than 2D images."""
    path = Path(spec)
    if is_nifti(path) or "nii" in path.name.lower():
        return True
    if path.is_dir():
        entries = list(path.iterdir())
        return any(is_nifti(p) or p.is_dir() for p in entries) or any(
            p.suffix.lower() == ".dcm" for p in entries
        )
    if path.is_file() and path.suffix.lower() == ".csv":
        header, rows, _ = read_csv(path)
        first = rows[0].get(image_column, "") if rows else ""
        return is_nifti(first) or (path.parent / first).is_dir()
    return False


def _relative(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path)


def main(argv: Sequence[str] | None = None) -> int:
    argv, done = tool_args(argv, USAGE)
    if done is not None:
        return done
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = parse_key_values(argv, DEFAULTS, TEXT_KEYS)
        summary = predict_files(cfg)
    except MedtrainError as err:
        print(f"medtrain.predict: error: {err}", file=sys.stderr)
        return 2
    failed = summary["failed"]
    log.info(
        "%d input(s), %d predicted, %d failed; wrote %s",
        summary["inputs"],
        summary["inputs"] - len(failed),
        len(failed),
        ", ".join(map(str, summary["written"])),
    )
    for row in failed[:10]:
        print(f"medtrain.predict: {row['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
