"""Run a model exported by `medtrain export` on image files, without medtrain.

    python examples/run_exported.py <export folder> scan1.png scan2.png ... [--masks FOLDER]
        [--spacing MM] [--format onnx|torchscript]

Segmentation masks go to FOLDER (default: `masks/` inside the export folder).

Needs numpy, Pillow, OpenCV and onnxruntime (or torch for a TorchScript export); manifest.json holds
the preprocessing. Prints CSV to stdout, one row per image: the label and class probabilities, the
predicted values (as medtrain predict names them: `value_<target>`, and for one target `value`,
with `grade` by the manifest's rule for ordinal grades), or (segmentation) the mask file written,
its pixels per class, its objects per foreground class (connected components, as medtrain counts
them without `task.instances`), and each class's area in mm^2 with `--spacing` or the run's own
`dataset.spacing` (files' own spacing tags are not read here: give `--spacing`). Segmentation runs
with an inference window are tiled into blended windows, as medtrain evaluates them.

A file that medtrain predict refuses (not one 2D image: a volume, a channel-first array, pages of
a stack; values that are not finite; a constant image ...) gets an error row saying why in
medtrain's words, as does a file that fails in any other way; the other files still run, and the
script exits with status 1.
"""

import argparse
import csv
import json
import sys
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageOps

NOT_READ = "this example reads PNG, JPEG, TIFF or NPY"
# An uncompressed NIfTI-1 or NIfTI-2 file's first bytes: its header size, either byte order.
NIFTI_HEADERS = tuple(n.to_bytes(4, order) for n in (348, 540) for order in ("little", "big"))


class Refused(Exception):
    """A file medtrain predict refuses too; the reason is its own, in medtrain's words."""


def read_image(path: Path) -> tuple[np.ndarray, str]:
    """Pixels (H x W x C) as medtrain reads them, and the file's format (PNG, JPEG, TIFF or NPY):
    palette images as RGB, alpha dropped, 16-bit kept; an .npy array as stored (e.g. Hounsfield
    units for a CT-windowed model). DICOM and NIfTI files are named, not read.

    Raises:
        Refused: what medtrain refuses once read (`image_of`, `finite`), or a TIFF or PNG of
            several pages.
    """
    with open(path, "rb") as handle:
        head = handle.read(132)
    # By content first: a DICOM preamble may look like a TIFF header (Pillow then fails on it).
    if head[128:132] == b"DICM" or path.suffix.lower() in (".dcm", ".dicom"):
        raise ValueError(
            f"a DICOM file; {NOT_READ}, not DICOM: medtrain predict reads it, or save its pixel "
            "values as NPY (in Hounsfield units for a CT-windowed model)"
        )
    if head[:4] in NIFTI_HEADERS or path.name.lower().endswith((".nii", ".nii.gz")):
        raise ValueError(f"a NIfTI volume; {NOT_READ} (2D images)")
    if path.suffix.lower() == ".npy":
        return finite(image_of(npy_array(path))), "NPY"
    with Image.open(path) as img:
        if img.format not in ("PNG", "JPEG", "TIFF"):  # as medtrain: a GIF named .png is refused
            raise ValueError(f"a {img.format} image; {NOT_READ}")
        kind = img.format
        if getattr(img, "is_animated", False):  # a stack, or an animated PNG: which page?
            raise Refused(f"the {kind} holds several pages (a stack or series); send one 2D image")
        img = ImageOps.exif_transpose(img)  # as viewers (and medtrain) show it: Orientation tag
        if img.mode in ("P", "LA", "PA", "CMYK", "YCbCr"):
            img = img.convert("RGBA" if "A" in img.mode or img.mode == "P" else "RGB")
        array = np.array(img)
    if array.dtype in (np.int32, np.uint32):  # Pillow's mode "I" holds 16-bit PNG and TIFF
        if array.size and (array.min() < 0 or array.max() > 65535):
            raise Refused("32-bit integer pixels outside 0..65535 are not supported")
        array = array.astype(np.uint16)
    return finite(image_of(array)), kind


def npy_array(path: Path) -> np.ndarray:
    """An NPY file's array; its header is read first, so that an array of anything but numbers
    or bool (objects, strings, complex numbers) is refused unread, as medtrain refuses it."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0  # versions 2 and 3
        )
        _, _, dtype = read_header(handle)
    if dtype.kind not in "biuf":
        raise Refused(f"array of {dtype} is not an image")
    return np.load(path, allow_pickle=False)


def image_of(array: np.ndarray) -> np.ndarray:
    """A 2D image as H x W x C, by medtrain's rule: H x W, or H x W x C of 1, 3 or 4 channels
    (alpha dropped). A volume, a channel-first array or any other channel count is refused
    rather than read as some image."""
    if array.ndim == 3 and array.shape[-1] == 4:
        array = array[..., :3]
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] != 3):
        raise Refused(f"shape {array.shape} is not a 2D image (H x W, or H x W x 3 for colour)")
    if min(array.shape[:2]) < 1:
        raise Refused(f"the image has no pixels (shape {array.shape})")
    return array[..., None] if array.ndim == 2 else array


FLOAT32_MAX = float(np.finfo(np.float32).max)


def finite(array: np.ndarray) -> np.ndarray:
    """`array`, unless its float pixels are NaN, infinite or beyond float32 (as medtrain, which
    would otherwise find a corrupt scan "normal")."""
    if array.dtype.kind != "f":
        return array
    low, high = float(array.min()), float(array.max())  # NaN propagates to both
    if not (np.isfinite(low) and np.isfinite(high)):
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        raise Refused(f"pixel values are not finite (NaN or infinite): {bad} of {array.size}")
    if max(-low, high) > FLOAT32_MAX:
        raise Refused(
            f"pixel values overflow float32: magnitudes up to {max(-low, high):.3g}, float32 "
            f"holds at most {FLOAT32_MAX:.3g}"
        )
    return array


SCALED = ("uint8", "uint16", "bool")  # read as 0-1 of their bit depth; floats as they are


def other_scale(pixels: np.ndarray, trained: dict | None) -> str | None:
    """Why an image is on another pixel scale than the run's training images (the manifest's
    `preprocessing.training_images`), where that scale reaches the network; else None."""
    if not trained or not trained["scale_matters"] or not pixels.size:
        return None
    kinds, kind = set(trained["dtypes"]), pixels.dtype.name
    finite = pixels[np.isfinite(pixels)]  # NaN and infinities are refused after preprocessing
    if kind not in SCALED and kinds <= set(SCALED) and finite.size:
        low, top = float(finite.min()), float(finite.max())
        if low < -0.05 or top > 1.05:
            return f"{kind} values from {low:.4g} to {top:.4g}; the run read its images as 0-1"
    if kind == "uint16" and kinds <= {"uint8", "bool"} and int(pixels.max()) <= 255:
        return "an 8-bit image stored in 16 bits, 257 times darker than the run's uint8 images"
    if kind in SCALED and not kinds & set(SCALED) and trained["max"] > 1.5:
        return f"{kind} pixels read as 0-1; the run's float images held values up to {trained['max']:.4g}"
    floats_0_1 = not kinds & set(SCALED) and trained["max"] <= 1.05
    if kind not in SCALED and floats_0_1 and finite.size and float(finite.max()) > 1.5:
        return f"{kind} values up to {float(finite.max()):.4g}; the run's float images lay in 0-1"
    return None


def match_channels(image: np.ndarray, channels: int | None) -> np.ndarray:
    if channels is None or image.shape[-1] == channels:
        return image
    if channels == 1:
        return (image @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    return np.repeat(image, 3, axis=-1)


def resize(image: np.ndarray, size: list[int] | None) -> np.ndarray:
    if size is None or list(image.shape[:2]) == size:
        return image
    shrink = size[0] * size[1] < image.shape[0] * image.shape[1]
    mode = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    out = cv2.resize(image, (size[1], size[0]), interpolation=mode)
    return out[..., None] if out.ndim == 2 else out


def crop_or_pad(image: np.ndarray, size: list[int] | None) -> np.ndarray:
    if size is None:
        return image
    out = np.zeros((*size, image.shape[-1]), image.dtype)
    h, w = min(size[0], image.shape[0]), min(size[1], image.shape[1])
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    o_top, o_left = (size[0] - h) // 2, (size[1] - w) // 2
    out[o_top : o_top + h, o_left : o_left + w] = image[top : top + h, left : left + w]
    return out


def normalize(image: np.ndarray, n: dict) -> np.ndarray:
    if n["invert"] is True or (n["invert"] == "auto" and float(np.median(image)) > 0.5):
        image = 1.0 - image
    if n["mode"] in ("fixed", "dataset"):
        return (image - np.asarray(n["mean"], np.float32)) / np.asarray(n["std"], np.float32)
    if n["mode"] == "zscore":
        return (image - image.mean()) / max(float(image.std()), 1e-6)
    if n["mode"] == "minmax":
        low, high = float(image.min()), float(image.max())
        return (image - low) / max(high - low, 1e-6)
    if n["mode"] == "percentile":
        low, high = np.percentile(image, n["percentiles"])
        return np.clip((image - low) / max(float(high - low), 1e-6), 0.0, 1.0)
    return image


def prepare(pixels: np.ndarray, pre: dict) -> np.ndarray:
    """The model's input (float32 C x H x W): the manifest's steps in the manifest's order."""
    if pre.get("volume"):
        sys.exit("this model was trained on slices of volumes (manifest: preprocessing.volume)")
    if pre.get("target_spacing"):
        sys.exit("this example does not resample to a target spacing (manifest: target_spacing)")
    if pre.get("window"):  # grey values in modality units (e.g. HU), one channel per window
        values = pixels[..., 0].astype(np.float32)
        image = np.stack(
            [np.clip((values - (c - w / 2)) / w, 0, 1) for c, w in pre["window"]["windows"]], -1
        )
    else:
        divisor = {"uint8": pre["scale"]["uint8"], "uint16": pre["scale"]["uint16"]}
        image = pixels.astype(np.float32) / divisor.get(pixels.dtype.name, 1.0)
    fit = crop_or_pad if (pre["resize"] or {}).get("mode") == "crop_or_pad" else resize
    steps = {
        "scale": lambda x: x,
        "channels": lambda x: match_channels(x, pre["channels"]["to"]),
        "resize": lambda x: fit(x, pre["resize"] and pre["resize"]["size"]),
        "normalize": lambda x: normalize(x, pre["normalize"]),
    }
    for step in pre["order"]:
        image = steps[step](image)
    return np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32)


def load_model(folder: Path, manifest: dict):
    """A function from a float32 N x C x H x W batch to the model's outputs (numpy arrays)."""
    path = str(folder / manifest["model_file"])
    if manifest["format"] == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        return lambda batch: session.run(None, {"image": batch})
    import torch

    warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, but still works
    module = torch.jit.load(path).eval()

    def run(batch: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(batch))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run


def gaussian(size: list[int]) -> np.ndarray:
    axes = [np.arange(s, dtype=np.float32) - (s - 1) / 2 for s in size]
    axes = [np.exp(-(a**2) / (2 * (0.125 * s) ** 2)) for a, s in zip(axes, size, strict=True)]
    return np.maximum(axes[0][:, None] * axes[1][None, :], np.float32(1e-3))


def tiled_logits(run, image: np.ndarray, seg: dict) -> np.ndarray:
    """Logits (K x H x W) of a C x H x W image, blended over overlapping windows as medtrain does."""
    if seg["window"] is None:
        return run(image[None])[1][0]
    (wh, ww), (height, width) = seg["window"], image.shape[-2:]
    pad_h, pad_w = max(wh - height, 0), max(ww - width, 0)
    top, left = pad_h // 2, pad_w // 2
    image = np.pad(image, ((0, 0), (top, pad_h - top), (left, pad_w - left)))
    crop = (slice(None), slice(top, top + height), slice(left, left + width))
    if height <= wh and width <= ww:
        return run(image[None])[1][0][crop]
    full = image.shape[-2:]
    starts = [
        [*range(0, n - w, max(int(w * (1 - seg["overlap"])), 1)), n - w]
        for n, w in zip(full, (wh, ww), strict=True)
    ]
    corners = [(r, c) for r in starts[0] for c in starts[1]]
    weight = gaussian([wh, ww]) if seg["blend"] == "gaussian" else np.ones((wh, ww), np.float32)
    channels = seg.get("channels", seg["num_classes"])  # classes, and a contact map (contacts)
    total = np.zeros((channels, *full), np.float32)
    norm = np.zeros(full, np.float32)
    for first in range(0, len(corners), seg["batch_size"]):
        chunk = corners[first : first + seg["batch_size"]]
        logits = run(np.stack([image[:, r : r + wh, c : c + ww] for r, c in chunk]))[1]
        for (r, c), window_logits in zip(chunk, logits, strict=True):
            total[:, r : r + wh, c : c + ww] += window_logits * weight
            norm[r : r + wh, c : c + ww] += weight
    return (total / norm)[crop]


def segment(run, image: np.ndarray, native: tuple, seg: dict) -> np.ndarray:
    """Class mask (uint8, the image's native size), small objects removed as the manifest says."""
    logits = tiled_logits(run, image, seg)
    if logits.shape[1:] != native:  # the image was resized for the model
        resized = cv2.resize(
            logits.transpose(1, 2, 0), native[::-1], interpolation=cv2.INTER_LINEAR
        )
        logits = resized.transpose(2, 0, 1)
    mask = logits[: seg["num_classes"]].argmax(0).astype(np.uint8)
    if not seg["min_object_size"]:
        return mask
    for k in range(1, seg["num_classes"]):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(
            (mask == k).astype(np.uint8), connectivity=4 if seg["connectivity"] == 1 else 8
        )
        small = np.flatnonzero(stats[:, cv2.CC_STAT_AREA] <= seg["min_object_size"])
        mask[np.isin(labels, small[small > 0])] = 0  # component 0 is everything else
    return mask


def parse_spacing(text: str | None) -> tuple[float, float] | None:
    """`--spacing`: mm per pixel, one value (square pixels) or row,column."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.replace(",", " ").split()]
    except ValueError:
        values = []
    if len(values) not in (1, 2) or not all(0 < v < float("inf") for v in values):
        sys.exit(f"--spacing {text}: give mm per pixel, one number or row,column (0.5 or 0.5,0.6)")
    return (values[0], values[-1])


def decide(output: np.ndarray, manifest: dict) -> str:
    """The label (multi-label: the labels present, joined as the training data joined them)
    from class probabilities."""
    names, threshold = manifest["class_names"], manifest["threshold"]
    if manifest["multilabel"]:
        present = [n for n, p, t in zip(names, output, threshold, strict=True) if p >= t]
        # Exports before these keys joined with ';' and left an image of none empty.
        joined = manifest.get("label_separator", ";").join(present)
        return joined or manifest.get("no_label") or ""
    return names[int(output[1] >= threshold) if len(names) == 2 else int(output.argmax())]


def grade(value: float, grades: dict) -> int:
    """An ordinal run's grade of a predicted value, by the manifest's `regression.grades` rule:
    the lowest grade plus the number of cut points at or below the value, or without cut points
    the value rounded to the nearest grade (halves to even, as numpy rounds); clipped to the range."""
    low, high = grades["range"]
    if grades["cut_points"] is None:
        raw = float(np.rint(value))
    else:
        cuts = np.asarray(grades["cut_points"], dtype=np.float64)
        raw = low + int(np.searchsorted(cuts, value, side="right"))
    return int(min(max(raw, low), high))


def ordinal_grades(manifest: dict) -> dict | None:
    """The grading rule (`regression.grades`) of an ordinal run of one target, else None."""
    one_target = len(manifest["class_names"]) == 1
    return (manifest.get("regression") or {}).get("grades") if one_target else None


def answer(path: Path, run, manifest: dict, spacing: tuple | None, masks: Path) -> list:
    """The CSV row of one file (after its name): the prediction, under main's columns.

    Raises:
        Refused: medtrain predict refuses the file too: no prediction is made from it.
    """
    try:
        pixels, kind = read_image(path)
    except Refused:
        raise
    except Exception as err:  # whatever Pillow or numpy raise for a file they cannot read
        raise Refused(f"cannot read: {err}") from err
    task, names, pre = manifest["task"], manifest["class_names"], manifest["preprocessing"]
    if pre.get("window") and kind != "NPY":  # as medtrain predict
        raise Refused(
            f"this run windows CT values in Hounsfield units; a {kind} holds display values. "
            "Give an NPY of HU values (or the DICOM to medtrain predict)"
        )
    if pixels.min() == pixels.max():  # as medtrain
        raise Refused("every pixel has the same value: no prediction is made from it")
    # A windowed run reads values in modality units, not on a pixel scale (predict's rule).
    scale = other_scale(pixels, None if pre.get("window") else pre.get("training_images"))
    if scale:
        raise Refused(f"another pixel scale than the run's training images: {scale}")
    with np.errstate(all="ignore"):  # overflow is reported in the row, not as a warning
        image = prepare(pixels, pre)
    if not np.isfinite(image).all():  # a corrupt scan must never come out as a finding
        raise Refused(
            "not finite (NaN or infinite) after preprocessing: no prediction is made from it"
        )
    if task == "segmentation":
        mask = segment(run, image, pixels.shape[:2], manifest["segmentation"])
        masks.mkdir(parents=True, exist_ok=True)
        out = masks / f"{path.stem}.png"
        # As medtrain's masks/: binary masks as 0/255, multi-class masks as class indices,
        # with the spacing in the PNG's pHYs chunk (dpi: columns, then rows), so that
        # `medtrain measure` on them measures in mm as on medtrain's own.
        dpi = {"dpi": (25.4 / spacing[1], 25.4 / spacing[0])} if spacing else {}
        Image.fromarray(mask * 255 if len(names) == 2 else mask).save(out, **dpi)
        pixels_per_class = np.bincount(mask.ravel(), minlength=len(names))
        connectivity = 4 if manifest["segmentation"]["connectivity"] == 1 else 8
        counts = [
            cv2.connectedComponents((mask == k).astype(np.uint8), connectivity=connectivity)[0]
            - 1  # component 0 is everything else
            for k in range(1, len(names))
        ]
        row = [out, *pixels_per_class, *counts]
        if spacing:
            row += [repr(float(n) * spacing[0] * spacing[1]) for n in pixels_per_class[1:]]
        return row
    output = run(image[None])[0][0]
    if not np.isfinite(output).all():
        raise Refused(
            "the model's output is not finite (NaN or infinite): no prediction is made from it"
        )
    values = [repr(v) for v in output.tolist()]
    if task == "classification":
        return [decide(output, manifest), *values]
    if task == "regression":  # an ordinal run's grade, the value of one target, each target's
        grades = ordinal_grades(manifest)
        row = [grade(float(output[0]), grades)] if grades else []
        return [*row, *(values[:1] if len(names) == 1 else []), *values]
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("export", type=Path, help="folder with manifest.json and the model")
    parser.add_argument(
        "images",
        type=Path,
        nargs="+",
        help="PNG, JPEG, TIFF or NPY files (NPY of HU values for a CT-windowed model)",
    )
    parser.add_argument(
        "--masks", type=Path, default=None, help="where masks go (default: <export>/masks)"
    )
    parser.add_argument(
        "--spacing",
        default=None,
        help="segmentation: mm per pixel, one value or row,column (e.g. 0.5 or 0.5,0.6): adds "
        "each class's area in mm^2 (default: pixels only)",
    )
    parser.add_argument(
        "--format",
        choices=["onnx", "torchscript"],
        default=None,
        help="which export to run when the folder holds both (default: manifest.json's format, "
        "the latest)",
    )
    args = parser.parse_args()
    if not (args.export / "manifest.json").is_file():
        exported = args.export / "export" / "manifest.json"
        sys.exit(
            f"{args.export}: no manifest.json here; give the export folder ("
            + (f"{exported.parent})" if exported.is_file() else "medtrain export's output=)")
        )
    manifest = json.loads((args.export / "manifest.json").read_text())
    if args.format and args.format != manifest["format"]:
        models = manifest.get("models") or {manifest["format"]: {}}
        if args.format not in models:
            sys.exit(
                f"{args.export} holds no {args.format} export (it holds {', '.join(models)}): "
                f"medtrain export run_dir=<run> format={args.format} output={args.export}"
            )
        manifest = {**manifest, **models[args.format], "format": args.format}
    if manifest["input"]["layout"] != "NCHW":
        sys.exit(
            f"this example runs 2D models; this export takes {manifest['input']['layout']} volumes: "
            "run model.onnx with onnxruntime on volumes prepared as manifest.json describes, or "
            "the run itself with medtrain predict run_dir=<run> (docs/deployment.md)"
        )
    # Without --spacing, the run's own (dataset.spacing), as medtrain predict uses it for files
    # that state none (this example reads no file's own spacing tag).
    recorded = (manifest.get("segmentation") or {}).get("spacing")
    spacing = parse_spacing(args.spacing) or (tuple(map(float, recorded)) if recorded else None)
    run, task, names = load_model(args.export, manifest), manifest["task"], manifest["class_names"]
    label = "labels" if manifest.get("multilabel") else "label"
    # A task of your own (medtrain's task protocol): its first output's values, one per name.
    first = manifest["outputs"][0]["name"]
    # Regression columns as medtrain predict's: an ordinal run's grade and the value of one target.
    grades = ordinal_grades(manifest)
    one = ["value"] if len(names) == 1 else []
    columns = {
        "classification": [label, *(f"prob_{n}" for n in names)],
        "regression": [*(["grade"] if grades else []), *one, *(f"value_{n}" for n in names)],
        "segmentation": [
            "mask",
            *(f"pixels_{n}" for n in names),
            *(f"count_{n}" for n in names[1:]),
            *(f"area_mm2_{n}" for n in names[1:] if spacing),
        ],
    }.get(task, [f"{first}_{n}" for n in names])
    writer = csv.writer(sys.stdout)
    writer.writerow(["file", *columns, "error"])
    failed = []

    def refuse(path: Path, reason: str) -> None:  # an error row: the other files still run
        writer.writerow([path, *[""] * len(columns), reason])
        failed.append(path)

    for path in args.images:
        try:
            row = answer(path, run, manifest, spacing, args.masks or args.export / "masks")
        except Refused as err:
            refuse(path, str(err))
        except Exception as err:  # this file's error row: the others still run
            refuse(path, f"failed: {type(err).__name__}: {err}")
        else:
            writer.writerow([path, *row, ""])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
