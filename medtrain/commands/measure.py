"""`medtrain measure masks=<folder or file>`: measure the objects in mask files made by any tool."""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from omegaconf import DictConfig

from medtrain.commands.args import parse_key_values, tool_args
from medtrain.errors import MedtrainError

DEFAULTS: dict[str, Any] = {
    "masks": None,
    "images": None,
    "mask_suffix": "",
    "spacing": None,
    "output": "measurements.csv",
    "class_values": None,
    "class_names": None,
    "connectivity": 2,
    "min_size": 0,
    "source": "mask",
    "instances": False,
    "units": "mm",
}


# Taken as typed, never parsed as YAML, which would turn a source `true` or a class `no` into booleans.
TEXT_KEYS = ("masks", "images", "mask_suffix", "output", "source", "units")


USAGE = """\
usage: medtrain measure masks=<folder or file> [key=value ...]

  masks=PATH          a mask file, or a folder of .png/.tif/.tiff/.jpg/.jpeg/.npy/.npz masks
  images=FOLDER       images with the masks' file names (any extension): adds mean_intensity
  mask_suffix=_mask   text after the image's name in the mask's (case00_mask.png: case00.png)
  spacing=[ROW,COL]   pixel size in mm, or in um with units=um (default: from the mask's or
                      image's file, else pixels)
  units=mm            mm, or um (micrometres, for microscopy): the unit of spacing= and of the
                      length and area columns (area_um2, perimeter_um, ...)
  output=FILE.csv     object table (default measurements.csv); totals go to FILE_totals.csv
  class_values='{0:0,128:1,255:2}'   mask pixel value -> class index (quote the braces)
  class_names=[background,nucleus]   name of each class index (default class_1, class_2, ...)
  connectivity=2      2: pixels touching at corners are one object, 1: only through edges
  min_size=0          drop objects of fewer pixels
  source=mask         text of the `source` column (e.g. true or pred)
  instances=false     true: each mask value is one object (instance labels from Cellpose,
                      StarDist...): touching objects stay apart, all of class_names[1] or "object"
"""


def parse_args(argv: Sequence[str]) -> DictConfig:
    """Read `key=value` arguments over the defaults.

    Raises:
        ConfigError: an argument without `=`, an unknown or repeated key, or a value that does not
            parse.
    """
    # An unquoted class_values={0:0,128:1} reaches us split by the shell: class_values=0:0 ...
    pairs = [
        a.partition("=")[2]
        for a in argv
        if a.startswith("class_values=")
        and re.fullmatch(r"\s*\d+\s*:\s*\d+\s*", a.partition("=")[2])
    ]
    if pairs:
        argv = [
            a for a in argv if a.partition("=")[2] not in pairs or not a.startswith("class_values=")
        ]
        argv.append("class_values={" + ",".join(pairs) + "}")
    return parse_key_values(argv, DEFAULTS, TEXT_KEYS, list_keys=("class_names",))


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    from medtrain.analysis.mask_folder import measure_files

    try:
        summary = measure_files(parse_args(argv))
    except (MedtrainError, OSError) as err:  # OSError: e.g. a folder without read permission
        print(f"error: {err}", file=sys.stderr)
        return 2
    objects = ", ".join(f"{c}: {n}" for c, n in summary["objects"].items()) or "no classes"
    units = ", ".join(f"{n} in {u}" for u, n in sorted(summary["units"].items()))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    print(f"measured {summary['files']} mask file(s) ({units}); objects per class: {objects}")
    print("wrote " + " and ".join(str(p) for p in summary["written"]))
    return 0
