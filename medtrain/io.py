"""Atomic file writing: a reader never sees a half-written checkpoint, CSV or JSON file (or a
half-replaced folder: `staged_folder`)."""

from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image

from medtrain.errors import ConfigError, DataError


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "w") -> Path:
    """Write a file through `write(handle)` into a temporary sibling, then rename it into place.

    The rename is atomic on POSIX, so an interrupted run leaves either the old file or the new one.
    The file gets the permissions a plain `open` would give (0666 less the umask), not the
    temporary file's owner-only 0600: results on a shared server stay readable by the group.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # (os.fchmod: not on Windows before 3.13)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def file_in_the_way(path: str | Path, folder: bool = False) -> Path | None:
    """The file that stands where a folder on the way to `path` (with `folder`, or `path` itself)
    must be, so that nothing can be written there: the nearest of them that exists, when it is
    not a folder; None when it is one (or none exists yet)."""
    path = Path(path)
    for place in [path] * folder + list(path.parents):
        if place.exists():
            return None if place.is_dir() else place
    return None


def refuse_file_in_the_way(key: str, path: str | Path, folder: bool = False) -> None:
    """Refuse the option `key=path` when a file stands where a folder must be
    (`file_in_the_way`): a command checks this before it computes anything, which a write there
    would only fail after.

    Raises:
        ConfigError: naming the option and the file.
    """
    place = file_in_the_way(path, folder)
    if place is not None:
        where = "" if place == Path(path) else f": {place}"
        raise ConfigError(f"{key}={path}{where} is a file, not a folder")


@contextlib.contextmanager
def staged_folder(target: str | Path) -> Iterator[Path]:
    """Write a folder's files into a hidden sibling, then put it in the place of `target` whole:
    an interrupted or failed write leaves `target` as it was, and a finished one leaves none of
    the earlier folder's files behind."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging, old = (target.with_name(f".{target.name}.{end}") for end in ("partial", "old"))
    shutil.rmtree(staging, ignore_errors=True)  # a crashed earlier write's
    staging.mkdir()
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        target.rename(old)
    staging.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@functools.cache
def current_umask() -> int:
    """The process's umask: from /proc on Linux, else by setting it and putting it back (there is
    no getter; read once, as threads may write files meanwhile)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


CHUNK = 1 << 20  # hash files in 1 MiB pieces: a 100 MB npz never sits in memory whole


def hash_file(path: str | Path, digest: Any) -> int:
    """Feed the bytes of `path` into `digest` (a hashlib object); returns their number."""
    size = 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with Path(path).open("rb") as handle:
        while n := handle.readinto(buffer):
            digest.update(view[:n])
            size += n
    return size


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    hash_file(path, digest)
    return digest.hexdigest()


def json_safe(value: Any) -> Any:
    """`value` with every NaN and infinity (undefined metrics), at any depth, as None: strict
    JSON has no such numbers."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def save_json(path: str | Path, data: Mapping[str, Any]) -> Path:
    """Write strict JSON: NaN and infinities (undefined metrics) become null, at any depth."""
    text = json.dumps(json_safe(data), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda f: f.write(text))


def read_json(path: str | Path) -> dict[str, Any] | None:
    """A JSON file's content; None when the file does not exist.

    Raises:
        DataError: the file exists but cannot be read or parsed.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {path} ({err})") from err


def save_csv(path: str | Path, rows: Iterable[Mapping[str, Any]], fieldnames: list[str]) -> Path:
    def write(handle: IO) -> None:
        writer = csv.DictWriter(handle, fieldnames=fieldnames, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)

    return atomic_write(path, write)


def csv_header(path: str | Path) -> list[str] | None:
    """A CSV file's first line as columns; None for a file that is not UTF-8 CSV text (how a
    command tells its own earlier table, which it may replace, from anyone else's file)."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return next(csv.reader(handle), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def is_prediction_csv(path: str | Path, of_masks: bool = False) -> bool:
    """Whether `path` is a `medtrain predict` CSV: its columns run from `file` to `error` (with
    `of_masks`, a segmentation's, which names the masks it wrote: a `mask` column)."""
    header = csv_header(path)
    if not header or header[0] != "file" or header[-1] != "error":
        return False
    return not of_masks or "mask" in header


# 72, 96 and 100 dpi (matplotlib's figures) in pixels per metre, as rounded by common writers:
# display defaults, not a spacing (`medtrain.data.readers` ignores them).
SCREEN_PPM = {2834, 2835, 2836, 3779, 3780, 3781, 3936, 3937, 3938}


def png_bytes(array: np.ndarray, spacing: Sequence[float] | None = None) -> bytes:
    """A grey (H x W, uint8 or uint16) or RGB (H x W x 3) uint8 array encoded as PNG.

    Args:
        spacing: the pixel size (row, col) in mm, stated in the pHYs chunk as whole pixels per
            metre (medtrain, Fiji and most viewers read it back: 0.7 mm comes back as 0.69979
            mm, 0.325 um as 0.32500 um); None, or a size the chunk cannot hold, states none.
    """
    options = {}
    sizes = [float(s) for s in spacing] if spacing is not None else []
    if sizes and all(math.isfinite(s) and s > 0 for s in sizes):
        per_metre = [round(1000.0 / s) for s in (sizes[-1], sizes[0])]  # x (columns), y (rows)
        if all(1 <= p < 2**31 for p in per_metre):
            if set(per_metre) <= SCREEN_PPM:  # 0.254 mm would read as 100 dpi, i.e. none:
                per_metre[0] = _off_screen(per_metre[0])  # the nearest value read as a size
            # Pillow writes pHYs from dots per inch, rounding dpi / 0.0254 back to these integers.
            options["dpi"] = tuple(p * 0.0254 for p in per_metre)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **options)
    return buffer.getvalue()


def _off_screen(per_metre: int) -> int:
    """The pixels per metre nearest `per_metre` that are not a display default (`SCREEN_PPM`)."""
    for distance in range(1, len(SCREEN_PPM) + 2):
        for near in (per_metre - distance, per_metre + distance):
            if near not in SCREEN_PPM:
                return near
    return per_metre


def save_png(path: str | Path, array: np.ndarray, spacing: Sequence[float] | None = None) -> Path:
    """Write a grey or RGB array as PNG (`png_bytes`), atomically."""
    data = png_bytes(array, spacing)
    return atomic_write(path, lambda handle: handle.write(data), mode="wb")


def save_checkpoint(path: str | Path, checkpoint: Mapping[str, Any]) -> Path:
    return atomic_write(path, lambda f: torch.save(dict(checkpoint), f), mode="wb")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a medtrain checkpoint without unpickling arbitrary objects (`weights_only=True`).

    Raises:
        DataError: the file is empty, or cut short (a copy or a sync that did not finish, a full
            disk: medtrain's own writes are atomic), which torch reports from inside its zip
            reader (a RuntimeError) or as a bare EOFError.
    """
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise DataError(f"{path} is an empty file (0 bytes), not a checkpoint")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except EOFError as err:
        raise DataError(f"{path} is truncated: it ends before the checkpoint does") from err
    except RuntimeError as err:
        if "PytorchStreamReader" not in str(err):  # not the file's fault (e.g. map_location)
            raise
        reason = str(err).split(". ")[0].removeprefix("PytorchStreamReader ")
        raise DataError(
            f"{path} is truncated or damaged ({path.stat().st_size} bytes): torch cannot read it "
            f"({reason})"
        ) from err
