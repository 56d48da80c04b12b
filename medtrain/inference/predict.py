"""A finished run's predictions for image files, folders, globs or CSV manifests (and, for runs
trained on slices of volumes, for NIfTI files and DICOM series), written as a CSV with the task's
columns plus its per-image files and tables; the library behind `medtrain predict`."""

from __future__ import annotations

import csv
import glob
import logging
import os
import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, open_dict
from tqdm import tqdm

from medtrain.analysis.mask_folder import spacing_arg
from medtrain.analysis.overlays import safe_name
from medtrain.analysis.volume_results import write_nifti
from medtrain.data.manifest import check_columns, read_csv, windows_paths
from medtrain.data.manifest import listed as listed_text
from medtrain.data.readers import FORMATS, READ_BY_SIGNATURE, READABLE_EXTENSIONS, file_signature
from medtrain.data.seg_manifest import SPACING_CELL, spacing_cell
from medtrain.data.volume_slices import case_name
from medtrain.data.volumes import is_nifti
from medtrain.engine.provenance import is_document
from medtrain.errors import ConfigError, DataError
from medtrain.inference.predictor import VOLUME_SPACING, Predictor, warn_unread_spacing
from medtrain.inference.run import volume_run
from medtrain.io import csv_header, is_prediction_csv, refuse_file_in_the_way, save_csv
from medtrain.values import whole_number

log = logging.getLogger(__name__)
# A prediction column that names a file written per input -> the folder (option) it goes to.
FOLDER_OF = {"mask": "masks", "instances": "instances"}


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
        hint = windows_paths(path.parent, [name for _, name in found])
        if hint:  # every row would fail alike
            raise DataError(f"{path}: column {image_column!r}: {hint}")
        return found
    if path.is_file():
        return [(path, path.name)]
    if path.is_dir():
        files, others = images_in_folder(path)
        if not files:
            held = f" (it holds {_named(path, others)})" if others else ""
            raise ConfigError(
                f"inputs={spec!r}: no image here: no {FORMATS} file by its extension or "
                f"content{held}"
            )
        if others:
            log.warning(
                "inputs=%s: %d file(s) left out that are not %s files by their extension or "
                "content: %s",
                spec,
                len(others),
                FORMATS,
                _named(path, others),
            )
        return [(f, str(f.relative_to(path))) for f in files]
    matches = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
    if not matches:
        raise ConfigError(f"inputs={spec!r}: no such file or folder, and no file matches it")
    return [(f, str(f)) for f in matches]


# Notes and tables beside images (besides `is_document`'s): never an image, left out unsaid (a
# prediction's own CSV among them).
TEXT_SUFFIXES = (".txt", ".csv", ".tsv", ".json", ".yaml", ".yml", ".xml")


def images_in_folder(folder: Path) -> tuple[list[Path], list[Path]]:
    """The images below `folder` (hidden files and folders left out), and the other files that
    are neither documents nor tables. An image is a file named as one (`READABLE_EXTENSIONS`), or
    one whose first bytes say PNG, JPEG, TIFF, DICOM, NPY or NPZ (`file_signature`): PACS name
    DICOM files IM000001 or by UID (1.2.840...), without an extension to go by."""
    images, others = [], []
    for file in sorted(folder.rglob("*")):
        if not file.is_file() or any(p.startswith(".") for p in file.relative_to(folder).parts):
            continue
        if is_dicom_index(file):  # lists the images, which are read from their own files
            continue
        if file.suffix.lower() in READABLE_EXTENSIONS:
            images.append(file)
        elif is_document(file) or file.suffix.lower() in TEXT_SUFFIXES:
            continue
        elif file_signature(file) in READ_BY_SIGNATURE:
            images.append(file)
        else:
            others.append(file)
    return images, others


def _named(folder: Path, files: list[Path]) -> str:
    """The first three of `files` by their path below `folder` ("a, b, c and 4 more")."""
    named = ", ".join(f.relative_to(folder).as_posix() for f in files[:3])
    return named + (f" and {len(files) - 3} more" if len(files) > 3 else "")


def list_volumes(spec: str, image_column: str = "image") -> list[tuple[Path, str]]:
    """The volumes named by `inputs=` for a run on volumes (a 3D network, or a 2D one trained on
    their slices): NIfTI files, DICOM series folders (a folder of .dcm files is one series; a
    folder of such folders, one each), NPY/NPZ arrays (read by 3D image-level runs; the others
    refuse them by name)."""
    path = Path(spec)
    if path.is_file() and path.suffix.lower() == ".csv" or not path.is_dir():
        return list_inputs(spec, image_column)
    entries = [p for p in sorted(path.iterdir()) if not p.name.startswith(".")]
    if holds_dicom(entries):
        return [(path, path.name)]
    found = _volumes_under(path)
    if not found:
        raise ConfigError(
            f"inputs={spec!r}: no .nii/.nii.gz volumes, .npy/.npz arrays or DICOM series "
            "folders here"
        )
    return [(p, p.relative_to(path).as_posix()) for p in found]


def holds_dicom(entries: list[Path]) -> bool:
    """Whether any of these files is a DICOM image: named `.dcm`, or by its content (`DICM` after
    the preamble: PACS name files IM000001 or by UID, without an extension). A CD's or an
    export's `DICOMDIR` is their index, not an image: the series lie in the folders below it."""
    if any(p.suffix.lower() == ".dcm" for p in entries):
        return True
    files = (
        p
        for p in entries
        if p.is_file() and not is_nifti(p) and not is_document(p) and not is_dicom_index(p)
    )
    return any(file_signature(p) == "dicom" for p in files)


def is_dicom_index(path: Path) -> bool:
    """A DICOM media's directory file (`DICOMDIR`), which lists images and holds none."""
    return path.name.upper() == "DICOMDIR"


def _volumes_under(folder: Path) -> list[Path]:
    """The volumes in `folder` and its subfolders, named by their path below it: NIfTI files
    and NPY/NPZ arrays, and DICOM series folders (a folder holding .dcm files, or files but no
    volume and no subfolder: DICOM named by UID). A BIDS-like `sub-01/anat/T1w.nii.gz` is found
    (each subfolder was taken for a DICOM series)."""
    entries = [p for p in sorted(folder.iterdir()) if not p.name.startswith(".")]
    files = [p for p in entries if p.is_file()]
    arrays = [p for p in files if p.suffix.lower() in (".npy", ".npz")]
    found = [p for p in files if is_nifti(p)] + arrays
    for sub in (p for p in entries if p.is_dir()):
        inside = [p for p in sub.iterdir() if not p.name.startswith(".") and not is_dicom_index(p)]
        dicom = any(p.suffix.lower() == ".dcm" for p in inside)
        plain = not any(p.is_dir() or is_nifti(p) for p in inside)
        found += [sub] if dicom or (plain and inside) else _volumes_under(sub)
    return found


def not_written_here(
    inputs: list[tuple[Path, str]], files: PredictionFiles, spec: str
) -> list[tuple[Path, str]]:
    """The inputs less the files this prediction writes (an output folder inside the folder of
    inputs: a second run must not predict the first one's masks).

    Raises:
        ConfigError: a folder this prediction writes holds the inputs (its masks could overwrite
            them), or nothing is left.
    """
    where = Path(spec).resolve()
    for key, folder in files.folders().items():
        if folder.resolve() in (where, *where.parents):
            raise ConfigError(
                f"{key}={folder} holds the inputs ({spec}): this prediction would write its files "
                f"among them; give {key}= another folder"
            )
    kept = [(file, name) for file, name in inputs if not files.holds(file)]
    if len(kept) < len(inputs):
        log.warning(
            "inputs: %d file(s) in this prediction's own output (%s) left out",
            len(inputs) - len(kept),
            ", ".join(str(f) for f in (files.output, *files.folders().values())),
        )
    if Path(spec).is_dir():  # earlier predictions written among the inputs: their masks too
        written, tables = written_by_predictions(Path(spec))
        before = len(kept)
        kept = [(file, name) for file, name in kept if file.resolve() not in written]
        if len(kept) < before:
            log.warning(
                "inputs: %d file(s) that earlier predictions wrote (listed by %s) left out",
                before - len(kept),
                ", ".join(tables),
            )
    if not kept:
        raise ConfigError(f"inputs={spec}: it holds only predictions' own output files")
    return kept


def written_by_predictions(folder: Path) -> tuple[set[Path], list[str]]:
    """The files (masks, instance labels) that the `medtrain predict` CSVs in `folder` and below
    list, and those CSVs (by their path below `folder`): a folder of inputs that holds an earlier
    prediction's output, predicted again, would have its masks segmented as images."""
    written: set[Path] = set()
    tables = []
    for table in sorted(folder.rglob("*.csv")):
        if any(part.startswith(".") for part in table.relative_to(folder).parts):
            continue
        named = files_listed(table) if is_prediction_csv(table) else set()
        if named:
            written |= named
            tables.append(table.relative_to(folder).as_posix())
    return written, tables


def files_listed(table: Path) -> set[Path]:
    """The files a prediction's CSV lists as written for its inputs (its `mask` and `instances`
    columns: relative to the CSV's folder, or absolute), resolved."""
    with open(table, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    return {
        (table.parent / row[column]).resolve()
        for row in rows
        for column in FOLDER_OF  # the columns naming files
        if row.get(column)
    }


def named_error(err: Exception, file: Any, name: str) -> str:
    """An error row's text beginning with the file's name as the `file` column gives it, where
    the reader named the file by its whole path (rows of one CSV began either way)."""
    text, path = str(err), str(file)
    return name + text[len(path) :] if path != name and text.startswith(path) else text


def predict_volumes(
    cfg: DictConfig, predictor: Predictor, files: PredictionFiles
) -> dict[str, Any]:
    """Segment each input volume (slice by slice, or whole with a 3D network); write its label
    volume and volumes in mL."""
    inputs = not_written_here(list_volumes(str(cfg.inputs), cfg.image_column), files, cfg.inputs)
    planned = planned_files(files, inputs, volumes=True)
    stale = check_overwrites(files, predictor.task, planned, volumes=True)
    output, masks_dir = files.output, files.folder
    names = predictor.class_names[1:]
    rows, used = [], set()
    for file, name in tqdm(inputs, desc="predict", disable=None if cfg.progress else True):
        try:
            result = predictor.predict_volume(file, name)
        except DataError as err:
            rows.append({"file": name, "error": named_error(err, file, name)})
            continue
        final = masks_dir / f"{volume_stem(name, used)}.nii.gz"
        write_nifti(files.stage(final), result["mask"], result["affine"])
        row = {"file": name, "mask": _relative(final, output.parent), "error": ""}
        row |= {f"volume_ml_{n}": repr(result["volumes_ml"][n]) for n in names}
        row |= {f"objects_{n}": result["objects"][n] for n in names}
        rows.append(row)
    fields = ["file", "mask", *(f"volume_ml_{n}" for n in names)]
    fields += [*(f"objects_{n}" for n in names), "error"]
    files.commit()
    save_csv(output, rows, fields)
    for path in stale:  # the replaced prediction's masks that this one did not write again
        path.unlink(missing_ok=True)
    failed = [r for r in rows if r.get("error")]
    return {"inputs": len(inputs), "failed": failed, "written": [output]}


# The hidden folder a prediction writes its files into before moving them into place.
STAGING = f".partial-{os.getpid()}"


@dataclass
class PredictionFiles:
    """Where a prediction run writes: its CSV (`output`), per-image files such as masks (`folder`),
    files that go with them in folders of their own (`companions`: kind -> folder, default
    `<kind>/` beside the CSV: `instances/<stem>.png` beside `masks/<stem>.png`, as in a run
    folder), and further tables (`tables`: name -> path, default `<name>.csv` beside the CSV)."""

    output: Path
    folder: Path
    tables: dict[str, Path] = field(default_factory=dict)
    companions: dict[str, Path] = field(default_factory=dict)
    used: set[str] = field(default_factory=set)
    writes: tuple[str, ...] = ("masks",)  # the folders written: masks, and companions' kinds
    staged: list[tuple[Path, Path]] = field(default_factory=list)  # (written to, moved to)

    def stage(self, final: Path) -> Path:
        """Where to write the file that `commit` moves to `final`: a hidden folder beside it, so
        that an interrupted prediction replaces none of the files there."""
        staged = final.parent / STAGING / final.name
        staged.parent.mkdir(parents=True, exist_ok=True)
        self.staged.append((staged, final))
        return staged

    def commit(self) -> None:
        """Move the staged files into place (each `os.replace`), and remove the staging folders,
        an interrupted prediction's too."""
        for staged, final in self.staged:
            os.replace(staged, final)
        for folder in {final.parent for _, final in self.staged} | set(self.folders().values()):
            for partial in folder.glob(".partial-*"):
                shutil.rmtree(partial, ignore_errors=True)
        self.staged.clear()

    def new_file(self, name: str, suffix: str) -> tuple[Path, str]:
        """A path to write input `name`'s file to (`stage`: it lands in `folder` under a name no
        earlier input took), and how the CSV shows it (relative to the CSV's folder when inside
        it)."""
        final = self.folder / f"{image_stem(name, self.used)}{suffix}"
        return self.stage(final), _relative(final, self.output.parent)

    def companion(self, kind: str, path: Path) -> tuple[Path, str]:
        """The file of `kind` that goes with `new_file`'s `path`: the same name in the kind's
        folder (so it can collide with no other input's), staged alike, and how the CSV shows
        it."""
        final = self.companion_folder(kind) / path.name
        return self.stage(final), _relative(final, self.output.parent)

    def companion_folder(self, kind: str) -> Path:
        """The folder of the files of `kind` (`instances/` beside the CSV by default)."""
        return self.companions.get(kind, self.output.parent / kind)

    def folders(self) -> dict[str, Path]:
        """The folders this prediction writes files into, by the option that names them."""
        every = {"masks": self.folder, **self.companions}
        return {kind: folder for kind, folder in every.items() if kind in self.writes}

    def holds(self, file: Path) -> bool:
        """Whether `file` is one this prediction writes (in its folders, or its CSV): a folder
        of inputs that holds the output is not read back as inputs."""
        file = file.resolve()
        folders = [f.resolve() for f in self.folders().values()]
        return file == self.output.resolve() or any(f in file.parents for f in folders)

    def table(self, name: str) -> Path:
        return self.tables.get(name) or self.output.parent / f"{name}.csv"


def predict_files(cfg: DictConfig) -> dict[str, Any]:
    """Predict every input named by `cfg`, writing the output CSV (the task's columns) and the
    task's files (e.g. masks and per-object measurements). Returns a summary: counts, failures,
    the paths written. `cfg.trust` (optional): what the run may build besides the allow-list of
    `medtrain.engine.trust`; `cfg.backend` (optional): `torch` or `onnx` (`Predictor`)."""
    if not cfg.run_dir or not cfg.inputs:
        raise ConfigError("run_dir=<run> and inputs=<file|folder|glob|manifest> are required")
    batch_size = whole_number(cfg.batch_size, "batch_size", 1)
    predictor = Predictor(
        cfg.run_dir,
        device=cfg.device,
        trust=list(cfg.get("trust") or []),
        backend=cfg.get("backend") or "torch",
    )
    if cfg.spacing is not None and predictor.reads_volumes:
        raise ConfigError(f"spacing={cfg.spacing}: {VOLUME_SPACING}")
    with open_dict(cfg):  # the run's own column name by default, as evaluate reads it
        cfg.image_column = (
            cfg.get("image_column") or predictor.cfg.dataset.get("image_column") or "image"
        )
    spacing = spacing_arg(cfg)
    # A 3D network's inputs are volumes, whatever they are named; a 2D one trained on slices of
    # volumes predicts the volumes `inputs=` names (its refusal of 2D images names them).
    names_volumes = volume_run(predictor.cfg) or (
        predictor.reads_volumes and _names_volumes(str(cfg.inputs), cfg.image_column)
    )
    output = Path(cfg.output)
    volumes = predictor.task.labels_volumes and names_volumes
    fields = predictor.task.prediction_fields()  # a `mask` column: the rows name files written
    files = PredictionFiles(
        output,
        Path(cfg.masks) if cfg.masks else output.parent / "masks",
        {"measurements": Path(cfg.measurements)} if cfg.measurements else {},
        {"instances": Path(cfg.instances) if cfg.get("instances") else output.parent / "instances"},
        writes=("masks",) if volumes else tuple(FOLDER_OF[f] for f in fields if f in FOLDER_OF),
    )
    refuse_the_run_folder(files, predictor.run.run_dir)
    check_output(files)  # before the inputs are listed: an input given as output=
    manifest = Path(str(cfg.inputs))
    listed_in_csv = manifest.suffix.lower() == ".csv" and manifest.is_file()
    if predictor.reads_volumes and listed_in_csv:
        warn_unread_spacing(manifest, csv_header(manifest) or [])  # the header alone
    if volumes:
        return predict_volumes(cfg, predictor, files)
    # A 3D classifier's inputs are volumes, each predicted like an image (one row each).
    lister = list_volumes if names_volumes else list_inputs
    listed = lister(str(cfg.inputs), cfg.image_column)
    inputs = not_written_here(listed, files, cfg.inputs)
    stale = check_overwrites(files, predictor.task, planned_files(files, inputs))
    # A manifest's rows (read once), as `inputs` keeps them: clinical values and pixel spacings.
    table = read_csv(manifest) if listed_in_csv else None
    kept = [not files.holds(file) for file, _ in listed]
    clinical = clinical_rows(predictor, manifest, table, kept)
    # Its spacing column (as the run's datasets read it), unless spacing= is given.
    row_spacing = None if spacing else spacing_rows(predictor, manifest, table, kept)
    task = predictor.task
    rows: list[dict[str, Any]] = []
    predicted: list[dict[str, Any]] = []
    stated: dict[str, tuple[float, ...] | None] = {}  # what each read file states
    bar = tqdm(total=len(inputs), desc="predict", disable=None if cfg.progress else True)
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        decoded, names, values = [], [], []
        for k, (file, name) in enumerate(chunk, start):
            try:
                image = predictor.read(file)
                if row_spacing and row_spacing[k]:
                    image = replace(image, spacing=row_spacing[k])
                decoded.append(image)
                names.append(name)
                values.append(clinical[k] if clinical else None)
                stated[name] = decoded[-1].spacing
            except DataError as err:
                rows.append({"file": name, "error": named_error(err, file, name)})
        try:
            results = predictor.predict(decoded, names, spacing, clinical=values) if decoded else []
        except DataError:  # one unusable image (e.g. 2 channels for a grey model): find it
            results = []
            for image, name, value in zip(decoded, names, values, strict=True):
                try:
                    results += predictor.predict([image], [name], spacing, clinical=[value])
                except DataError as err:
                    results.append(err)
        for name, result in zip(names, results, strict=True):
            if isinstance(result, Exception):
                rows.append({"file": name, "error": str(result)})
                continue
            rows.append({"file": name, **task.prediction_row(name, result, files), "error": ""})
            predicted.append(result)
        bar.update(len(chunk))
    bar.close()
    if spacing is None and predicted and "spacing" in predicted[0]:
        warn_mixed_spacings(stated, predictor.spacing)
    order = {name: k for k, (_, name) in enumerate(inputs)}
    rows.sort(key=lambda r: order[r["file"]])
    files.commit()
    save_csv(output, rows, ["file", *task.prediction_fields(), "error"])
    for path in stale:  # the replaced prediction's files that this one did not write again
        path.unlink(missing_ok=True)
    written = [output]
    for table, (table_rows, fields) in task.prediction_tables(predicted).items():
        written.append(save_csv(files.table(table), table_rows, fields))
    failed = [r for r in rows if r.get("error")]
    return {"inputs": len(inputs), "failed": failed, "written": written}


Table = tuple[list[str], list[dict[str, str]], list[int]]  # `read_csv`: header, rows, lines


def clinical_rows(
    predictor: Predictor, path: Path, table: Table | None, kept: list[bool]
) -> list[dict[str, str]] | None:
    """Each kept input's clinical values (its manifest row), for a run whose model reads them;
    None for the others.

    Raises:
        ConfigError: inputs that are not a CSV manifest (`table` None), or one without the run's
            columns.
    """
    columns = predictor.clinical_columns
    if not columns:
        return None
    if table is None:
        raise ConfigError(
            f"inputs={str(path)!r}: this run's model also reads the clinical columns {columns}; "
            "give inputs=<manifest.csv> with an image column and those columns, one row per image"
        )
    header, rows, _ = table
    check_columns(
        path,
        header,
        {f"the run's dataset.tabular_columns[{k}]": c for k, c in enumerate(columns)},
        prefix="",
    )
    return [row for row, keep in zip(rows, kept, strict=True) if keep]


def spacing_rows(
    predictor: Predictor, path: Path, table: Table | None, kept: list[bool]
) -> list[tuple[float, float] | None] | None:
    """Each kept input's pixel spacing from a manifest's spacing column (the run's
    `dataset.spacing_column`, else `spacing`; an empty cell: the file's, else the run's); None
    without such a column, or for a run that does not measure.

    Raises:
        DataError: naming every cell that is not a pixel size in mm.
    """
    if table is None or not predictor.task.uses_spacing:
        return None
    header, rows, lines = table
    column = predictor.cfg.dataset.get("spacing_column") or "spacing"
    if column not in header:
        return None
    found, bad = [], []
    for row, line, keep in zip(rows, lines, kept, strict=True):
        try:
            value = spacing_cell(row[column])
        except ValueError:
            bad.append(f"line {line}: {row[column]!r}")
            continue
        if keep:
            found.append(value)
    if bad:
        raise DataError(f"{path}: column {column!r} must hold {SPACING_CELL}: {listed_text(bad)}")
    return found


def warn_mixed_spacings(
    stated: dict[str, tuple[float, ...] | None], run_spacing: tuple[float, ...] | None
) -> None:
    """Warn when the inputs were measured at different pixel spacings (some files state their own,
    the others take the run's or none): areas in mm^2 then rest on each file's metadata, which
    software sometimes writes without meaning it (a figure saved at 100 dpi)."""
    groups: dict[tuple[float, ...] | None, list[str]] = {}
    for name, own in stated.items():
        groups.setdefault(own or run_spacing, []).append(name)
    if len(groups) < 2:
        return

    def said(value: tuple[float, ...] | None, names: list[str]) -> str:
        where = (
            "stated in the file"
            if any(stated[n] for n in names)
            else ("the run's dataset.spacing" if value else "in pixels")
        )
        size = " x ".join(f"{v:g}" for v in value) + " mm" if value else "none"
        return (
            f"{size} for {len(names)} ({where}: {', '.join(names[:3])}{', ...' * (len(names) > 3)})"
        )

    log.warning(
        "inputs have %d pixel spacings: %s. Their mm^2 are not comparable unless every stated "
        "spacing is right: pass spacing=[row_mm,col_mm] to measure all alike",
        len(groups),
        "; ".join(said(value, names) for value, names in groups.items()),
    )


def refuse_the_run_folder(files: PredictionFiles, run_dir: Path) -> None:
    """Refuse to write directly into the run folder, where the run keeps its own test results
    under the same names (`predictions.csv`, `masks/`, `measurements.csv` ...): a prediction
    there would overwrite them (a subfolder is fine).

    Raises:
        ConfigError: naming the path and the option that moves it.
    """
    run = Path(run_dir).resolve()
    written = [("output", files.output), *files.folders().items(), *files.tables.items()]
    for key, path in written:
        if run in (path.resolve(), path.resolve().parent):
            where = (
                "output=<folder>/predictions.csv puts every file there"
                if key == "output"
                else f"give {key}= another folder or file"
            )
            raise ConfigError(
                f"{key}={path} writes into the run folder {run_dir}, over the run's own test "
                f"results: write elsewhere ({where})"
            )


# Files that file browsers leave in any folder: never a prediction's, never in the way.
JUNK_FILES = ("Thumbs.db", "desktop.ini")


def planned_files(
    files: PredictionFiles, inputs: list[tuple[Path, str]], volumes: bool = False
) -> set[Path]:
    """The files this prediction will write into its folders, named as it names them
    (`PredictionFiles.new_file`, `companion`; a volume's `masks/<case>.nii.gz`)."""
    used: set[str] = set()
    planned = set()
    for _, name in inputs:
        if volumes:
            planned.add(files.folder / f"{volume_stem(name, used)}.nii.gz")
            continue
        stem = image_stem(name, used)
        planned.add(files.folder / f"{stem}.png")
        for kind in files.writes:
            if kind != "masks":
                planned.add(files.companion_folder(kind) / f"{stem}.png")
    return {path.resolve() for path in planned}


def check_output(files: PredictionFiles) -> None:
    """`output=` must be a new file or an earlier prediction's CSV (columns `file` ... `error`):
    never a manifest, an image or a run's predictions.csv; no file may stand where it, a table
    or a folder of files goes. Checked first, before the inputs are listed.

    Raises:
        ConfigError: naming the file and what it holds.
    """
    output = files.output
    refuse_file_in_the_way("output", output)
    for key, table in files.tables.items():
        refuse_file_in_the_way(key, table)
    for key, folder in files.folders().items():
        refuse_file_in_the_way(key, folder, folder=True)
    if output.is_dir():
        raise ConfigError(f"output={output} is a folder; give a CSV file name in it")
    if output.exists() and not is_prediction_csv(output):
        header = csv_header(output)
        what = f"the columns {header[:4]}" if header else "no CSV text"
        raise ConfigError(
            f"output={output} exists and is not an earlier prediction's CSV (it holds {what}): "
            "give a new file name; nothing was written"
        )


def check_overwrites(
    files: PredictionFiles, task: Any, planned: set[Path], volumes: bool = False
) -> list[Path]:
    """Nothing a user keeps is overwritten: the output CSV (checked by `check_output`) may replace
    only an earlier prediction's, the mask folders may hold only the files that CSV
    lists (another prediction's masks would be replaced while its CSV still names them; an
    interrupted prediction leaves its files in a hidden staging folder, `PredictionFiles.stage`),
    and a table such as `measurements.csv` only an earlier one of its columns. Checked before
    anything is predicted.

    Returns:
        The files the replaced CSV lists that this prediction does not write again (`planned`
        are those it writes): removed once its CSV is written, so that the folders hold what it
        lists.

    Raises:
        ConfigError: naming the file or folder, what it holds and the option that moves it.
    """
    output = files.output  # `check_output` has checked what output= is
    listed = files_listed(output) if output.exists() else set()
    tables = {} if volumes else task.prediction_tables([])  # volumes write no tables
    own = {output.resolve(), *(files.table(name).resolve() for name in tables)}
    for key, folder in files.folders().items():
        held = [
            p
            for p in (sorted(folder.iterdir()) if folder.is_dir() else [])
            if not p.name.startswith(".") and p.name not in JUNK_FILES and p.resolve() not in own
        ]
        foreign = [p for p in held if p.resolve() not in listed]
        if foreign:
            raise ConfigError(
                f"{key}={folder} holds {len(foreign)} file(s) that {output} does not list (e.g. "
                f"{foreign[0].name}): another prediction's or your own, which this one could "
                f"replace; give {key}= another folder, or output= a CSV in another folder; "
                "nothing was written"
            )
    for name, (_, fields) in tables.items():
        path = files.table(name)
        if path.exists() and csv_header(path) != list(fields):
            raise ConfigError(
                f"{path} exists and is not an earlier prediction's {name} table: give "
                f"{name}= another file; nothing was written"
            )
        if path.exists() and not output.exists():  # it goes with another CSV
            raise ConfigError(
                f"{path} is another prediction's {name} table ({output} is a new CSV): give "
                f"{name}= another file; nothing was written"
            )
    return sorted(p for p in listed if p.exists() and p not in planned)


def image_stem(name: str, used: set[str]) -> str:
    """The stem of a 2D input's files (`masks/<stem>.png`, `instances/<stem>.png`)."""
    return unique_stem(Path(name).with_suffix("").as_posix(), used)


def volume_stem(name: str, used: set[str]) -> str:
    """The stem of a volume's mask (`masks/<stem>.nii.gz`): its case name, or its path below the
    folder of inputs."""
    return unique_stem(case_name(Path(name)) if "/" not in name else name, used)


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
        return any(is_nifti(p) or p.is_dir() for p in entries) or holds_dicom(entries)
    if path.is_file() and path.suffix.lower() == ".csv":
        header, rows, _ = read_csv(path)
        first = rows[0].get(image_column, "") if rows else ""
        return is_nifti(first) or (path.parent / first).is_dir()
    return False


def _relative(path: Path, base: Path) -> str:
    """`path` as a CSV beside `base` names it: relative to it when inside, else absolute (a path
    relative to the working folder would be read against the CSV's)."""
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return str(path.resolve())
