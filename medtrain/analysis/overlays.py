"""Overlay pictures of segmentations: ground-truth and predicted contours on the image, and a grid."""

from __future__ import annotations

import itertools
import math
import posixpath
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from scipy import ndimage as ndi

from medtrain.errors import ConfigError, DataError
from medtrain.io import save_png

TRUE_COLOUR = (0, 255, 0)  # green
PRED_COLOUR = (255, 0, 255)  # magenta
BOTH_COLOUR = (255, 255, 255)  # green + magenta: where the two contours coincide
TILE = 160  # grid thumbnail size in pixels
CAPTION = 14  # height of the id strip under each thumbnail
LEGEND = 20  # height of the legend line above the grid
GAP = 4
BACKGROUND = 32
FONT = cv2.FONT_HERSHEY_SIMPLEX


def display_rgb(image: np.ndarray) -> np.ndarray:
    """An image of any range as H x W x 3 uint8, stretched so its 1st..99th percentiles fill 0..255.

    Grey images are repeated into three channels; 4 channels drop the 4th; other channel counts are
    averaged to grey.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim == 3 and image.shape[2] not in (3, 4):
        image = image.mean(axis=2)
    elif image.ndim == 3:
        image = image[..., :3]
    if image.ndim != 2 and image.ndim != 3:
        raise DataError(f"an image must be H x W or H x W x C, got shape {image.shape}")
    finite = image[np.isfinite(image)]
    lo, hi = np.percentile(finite, [1, 99]) if finite.size else (0.0, 0.0)
    if hi <= lo and finite.size:  # mostly constant (e.g. sparse bright pixels): use the full range
        lo, hi = finite.min(), finite.max()
    scaled = (image - lo) / (hi - lo) if hi > lo else np.zeros_like(image)
    grey = np.round(np.clip(np.nan_to_num(scaled, nan=0.0), 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey


def boundaries(mask: np.ndarray) -> np.ndarray:
    """Pixels of each foreground class that touch (through an edge) another class or the image border."""
    mask = np.asarray(mask)
    edge = np.zeros(mask.shape, dtype=bool)
    for klass in np.unique(mask):
        if klass == 0:
            continue
        region = mask == klass
        # border_value=0: objects cut by the image border get a contour along it.
        edge |= region & ~ndi.binary_erosion(region, border_value=0)
    return edge


def draw_overlay(image: np.ndarray, true: np.ndarray | None, pred: np.ndarray) -> np.ndarray:
    """The image as RGB uint8 with 1-px ground-truth contours in green and predicted ones in magenta.

    Where both contours fall on the same pixel it is white.
    """
    rgb = display_rgb(image)
    pred_edge = _edges(pred, rgb.shape[:2], "prediction")
    true_edge = (
        np.zeros_like(pred_edge) if true is None else _edges(true, rgb.shape[:2], "ground truth")
    )
    rgb[true_edge & ~pred_edge] = TRUE_COLOUR
    rgb[pred_edge & ~true_edge] = PRED_COLOUR
    rgb[true_edge & pred_edge] = BOTH_COLOUR
    return rgb


def _edges(mask: np.ndarray, shape: tuple[int, ...], what: str) -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != shape:
        raise DataError(f"{what} mask shape {mask.shape} does not match image shape {shape}")
    return boundaries(mask)


def save_overlays(
    out_dir: str | Path,
    cases: Iterable[Mapping[str, Any]],
    max_cases: int = 16,
    columns: int = 4,
    stems: Mapping[str, str] | None = None,
) -> list[Path]:
    """Write `<id>.png` overlays of the first `max_cases` cases and `grid.png` with their thumbnails.

    Cases after the first `max_cases` are not read, so `cases` may be a lazy generator.

    Args:
        out_dir: folder for the pictures (created if needed).
        cases: dicts with `id`, `image` (H x W or H x W x C, any range), `true` (H x W class mask or
            None) and `pred` (H x W class mask).
        max_cases: how many cases to draw.
        columns: thumbnails per grid row.
        stems: the file stem of each case id (as its mask's); default the id made safe.

    Returns:
        The paths written: one per case (ids made safe as file names), then the grid; empty when
        there were no cases.

    Raises:
        ConfigError: max_cases or columns below 1.
        DataError: a case without its keys or with masks of another shape than its image.
    """
    if max_cases < 1 or columns < 1:
        raise ConfigError(f"max_cases={max_cases} and columns={columns} must both be >= 1")
    out_dir = Path(out_dir)
    used = {"grid"}  # the grid's own name
    paths, tiles = [], []
    for number, case in enumerate(itertools.islice(cases, max_cases)):
        missing = [key for key in ("id", "image", "pred") if key not in case]
        if missing:
            raise DataError(f"overlay case {number} lacks {missing}")
        try:
            overlay = draw_overlay(case["image"], case.get("true"), case["pred"])
        except DataError as err:
            raise DataError(f"case {case['id']!r}: {err}") from err
        stem = stems.get(str(case["id"])) if stems else None
        name = unique_name(stem or safe_name(str(case["id"])), used)
        paths.append(save_png(out_dir / f"{name}.png", overlay))
        tiles.append((str(case["id"]), overlay))
    if tiles:
        paths.append(save_png(out_dir / "grid.png", _grid(tiles, columns)))
    return paths


IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|tiff?|bmp|npy|npz|dcm)$", re.IGNORECASE)


def safe_name(text: str) -> str:
    """A file name stem made of letters, digits, `.`, `_` and `-` only, without the image file
    extension that ids taken from paths carry (a manifest's `img/a.png` -> `img_a`)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", IMAGE_SUFFIX.sub("", text)).strip("._")[:120]
    return name or "case"


def case_stems(
    ids: Iterable[str], used: set[str] | None = None, strip: Callable[[str], str] = str
) -> dict[str, str]:
    """A file-name stem per case id (`safe_name` of `strip(id)`, e.g. without a NIfTI extension),
    unique ignoring case (`unique_name`). Ids that are absolute paths lose the folders they all
    share: `/data/lab/images/a.png` is `a`, not `data_lab_images_a`, as a manifest's relative
    `img/a.png` is `img_a`."""
    ids = list(dict.fromkeys(str(i) for i in ids))
    absolute = {i: i.replace("\\", "/") for i in ids if re.match(r"(/|[A-Za-z]:[\\/])", i)}
    try:
        shared = posixpath.commonpath([posixpath.dirname(p) for p in absolute.values()])
    except ValueError:  # none, or Windows and POSIX paths together
        shared = ""
    used = set() if used is None else used
    return {
        case: unique_name(
            safe_name(strip(absolute[case][len(shared) :] if case in absolute else case)), used
        )
        for case in ids
    }


def unique_name(name: str, used: set[str]) -> str:
    """`name`, or `name_2`, `name_3`... when taken (compared ignoring case, as some disks do)."""
    candidate, suffix = name, 2
    while candidate.lower() in used:
        candidate, suffix = f"{name}_{suffix}", suffix + 1
    used.add(candidate.lower())
    return candidate


def _thumbnail(rgb: np.ndarray) -> np.ndarray:
    """The overlay fitted into a TILE x TILE square, aspect kept, padded with the background."""
    height, width = rgb.shape[:2]
    scale = TILE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    # Shrinking averages (INTER_AREA) so 1-px contours fade rather than vanish; enlarging keeps
    # pixels square and contours sharp.
    resized = cv2.resize(
        rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_NEAREST
    )
    tile = np.full((TILE, TILE, 3), BACKGROUND, dtype=np.uint8)
    top, left = (TILE - size[1]) // 2, (TILE - size[0]) // 2
    tile[top : top + size[1], left : left + size[0]] = resized
    return tile


def _grid(tiles: list[tuple[str, np.ndarray]], columns: int) -> np.ndarray:
    columns = min(columns, len(tiles))
    rows = math.ceil(len(tiles) / columns)
    legend = [
        ("green = ground truth", TRUE_COLOUR),
        ("magenta = prediction", PRED_COLOUR),
        ("white = both", BOTH_COLOUR),
    ]
    legend_width = sum(cv2.getTextSize(text + "   ", FONT, 0.4, 1)[0][0] for text, _ in legend)
    width = max(columns * (TILE + GAP) + GAP, legend_width + 2 * GAP)
    height = LEGEND + rows * (TILE + CAPTION + GAP) + GAP
    canvas = np.full((height, width, 3), BACKGROUND, dtype=np.uint8)
    x = GAP
    for text, colour in legend:
        cv2.putText(canvas, text, (x, LEGEND - 6), FONT, 0.4, colour, 1, cv2.LINE_AA)
        x += cv2.getTextSize(text + "   ", FONT, 0.4, 1)[0][0]
    for number, (case_id, overlay) in enumerate(tiles):
        row, column = divmod(number, columns)
        top = LEGEND + row * (TILE + CAPTION + GAP)
        left = GAP + column * (TILE + GAP)
        canvas[top : top + TILE, left : left + TILE] = _thumbnail(overlay)
        caption = _fit(case_id, TILE)
        cv2.putText(
            canvas,
            caption,
            (left, top + TILE + CAPTION - 3),
            FONT,
            0.35,
            (220,) * 3,
            1,
            cv2.LINE_AA,
        )
    return canvas


def _fit(text: str, width: int) -> str:
    """ASCII text (the font has nothing else) shortened with '...' to fit `width` pixels."""
    text = text.encode("ascii", "replace").decode("ascii")
    if cv2.getTextSize(text, FONT, 0.35, 1)[0][0] <= width:
        return text
    while text and cv2.getTextSize(text + "...", FONT, 0.35, 1)[0][0] > width:
        text = text[:-1]
    return text + "..."
