"""`medtrain predict run_dir=<run> inputs=<file|folder|glob|manifest.csv>`: a finished run's
predictions for new images, written as a CSV (and masks and measurements for segmentation)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from typing import Any

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import MedtrainError

DEFAULTS: dict[str, Any] = {
    "run_dir": None,
    "inputs": None,
    "output": "predictions.csv",
    "device": "auto",
    "backend": "torch",
    "batch_size": 32,
    "spacing": None,
    "image_column": None,
    "masks": None,
    "instances": None,
    "measurements": None,
    "progress": True,
    "trust": [],
}


TEXT_KEYS = (
    "run_dir",
    "inputs",
    "output",
    "device",
    "backend",
    "image_column",
    "masks",
    "instances",
    "measurements",
)


USAGE = """\
usage: medtrain predict run_dir=RUN inputs=PATH [key=value ...]

  run_dir=RUN          a finished run (its checkpoints/best.pt and its evaluation preprocessing)
  inputs=PATH          an image file, a folder (searched recursively), a quoted glob ('scans/*.dcm')
                       or a CSV manifest with an `image` column (paths relative to the CSV)
  output=FILE.csv      one row per input (default predictions.csv); never directly in run_dir,
                       whose own results have these names
  device=auto          auto | cpu | cuda | cuda:N
  backend=torch        what runs the network: torch, or onnx (exported at start and run by ONNX
                       Runtime; the same predictions to float rounding)
  batch_size=32        images per forward pass
  spacing=[ROW,COL]    segmentation: pixel size in mm (default: the file's, else the run's)
  image_column=NAME    the manifest's image column (default: the run's dataset.image_column,
                       else image)
  masks=DIR            segmentation: where masks go (PNG; NIfTI for volumes; default: masks/
                       beside the output)
  instances=DIR        runs with task.instances: where the 16-bit instance labels go, one PNG
                       named as its mask (default: instances/ beside the output)
  measurements=FILE    segmentation: per-object table (default: measurements.csv beside the output)
  progress=true        show a progress bar
  trust=[NAME,...]     _target_ classes (or module prefixes ending in '.') of your own that the
                       run may build besides medtrain's (also MEDTRAIN_TRUSTED_TARGETS; a run
                       folder is code: docs/deployment.md)

Formats: PNG, JPEG, TIFF (8/16 bit, grey or colour), DICOM, NPY, NPZ. A run of a 3D network
(dataset=nifti_volumes, experiment=hippocampus3d) takes volumes: NIfTI files, DICOM series folders
and multi-frame DICOM files (a 3D classifier also NPY/NPZ arrays), segmented whole; a run trained
on slices of volumes (dataset=volume_slices) takes the same volumes, segmented slice by slice and
reassembled. Volumes are read in RAS axis order and their label volumes written back in each file's
own voxel order (masks/<case>.nii.gz, volume_ml_<class> per row). An input that cannot be read
gets its reason in the `error` column; the exit status is then 1.
"""


def main(argv: Sequence[str] | None = None) -> int:
    argv, done = tool_args(argv, USAGE)
    if done is not None:
        return done
    from medtrain.inference.predict import log, predict_files

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        cfg = parse_key_values(argv, DEFAULTS, TEXT_KEYS, list_keys=("trust",))
        summary = predict_files(cfg)
    except MedtrainError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: what is there stays as it was
        print(
            "interrupted: nothing was replaced (the files written so far wait in a hidden "
            ".partial-<pid> folder, which the next prediction removes)",
            file=sys.stderr,
        )
        return 130
    failed = summary["failed"]
    log.info(
        "%d input(s), %d predicted, %d failed; wrote %s",
        summary["inputs"],
        summary["inputs"] - len(failed),
        len(failed),
        ", ".join(map(str, summary["written"])),
    )
    for row in failed[:10]:
        print(f"error: {row['error']}", file=sys.stderr)
    return 1 if failed else 0
