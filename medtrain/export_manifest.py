"""manifest.json of an exported model: its input and outputs, the evaluation preprocessing in numbers
and rules, and how outputs become decisions, so that it runs without medtrain."""

from __future__ import annotations

from typing import Any

from medtrain.data.segmentation import pair
from medtrain.inference import LoadedRun

# The model file's outputs per task, in order, and what they hold.
OUTPUTS = {
    "classification": {
        "probabilities": "class probabilities (softmax; sigmoid per label for multi-label)"
    },
    "regression": {"values": "predicted values in the targets' units (float64)"},
    "segmentation": {
        "probabilities": "per-pixel class probabilities (softmax over classes)",
        "logits": "per-pixel class logits: blend these over windows and resize them to the "
        "image's size before taking the most probable class, as medtrain does",
    },
}
NORMALIZE_RULE = (
    "first invert (true: x -> 1 - x; auto: only when the image's median is above 0.5), then fixed "
    "or dataset (mean and std of the training split): "
    "(x - mean) / std per channel; zscore: (x - mean(x)) / max(std(x), 1e-6); minmax: "
    "(x - min(x)) / max(max(x) - min(x), 1e-6); percentile: clip((x - p_low) / max(p_high - p_low, "
    "1e-6), 0, 1) with numpy's linear percentiles; none: unchanged; statistics over the whole image"
)


def preprocessing_manifest(preprocess: Any, kind: str) -> dict[str, Any]:
    """The evaluation preprocessing in numbers and rules (medtrain.data.transforms)."""
    size = pair(preprocess.image_size, "dataset.image_size")
    # Segmentation normalizes the native image before resizing it; image-level tasks the reverse.
    resize_last = kind == "segmentation"
    return {
        "order": [
            "scale",
            "channels",
            *(("normalize", "resize") if resize_last else ("resize", "normalize")),
        ],
        "scale": {
            "rule": "by storage type: uint8 / 255, uint16 / 65535, bool as 0/1, floats unchanged",
            "uint8": 255,
            "uint16": 65535,
        },
        "channels": {
            "to": preprocess.in_channels,
            "rule": "grey from colour: 0.299 R + 0.587 G + 0.114 B; colour from grey: the grey "
            "channel three times; an alpha channel is dropped; null: as stored",
        },
        "window": None
        if preprocess.windows is None
        else {
            "windows": [list(w) for w in preprocess.windows],
            "rule": "instead of `scale`: grey values in modality units (DICOM: Hounsfield units "
            "after rescale slope/intercept) -> one channel per [centre, width]: "
            "clip((x - (centre - width / 2)) / width, 0, 1)",
        },
        "resize": None
        if size is None
        else {
            "size": list(size),
            "mode": getattr(preprocess, "resize_mode", "resize"),
            "interpolation": "cv2.resize to [height, width]: INTER_AREA when the result has fewer "
            "pixels, INTER_LINEAR otherwise; unchanged when the size matches (mode crop_or_pad: "
            "centre crop or zero padding instead, no interpolation)",
        },
        "target_spacing": None
        if getattr(preprocess, "target_spacing", None) is None
        else {
            "spacing_mm": list(preprocess.target_spacing),
            "rule": "segmentation: the image is resized to round(side * pixel_spacing / "
            "target_spacing) per axis for the model, and the logits back to the image's size",
        },
        "normalize": {**preprocess.normalize.params, "rule": NORMALIZE_RULE},
    }


def task_manifest(run: LoadedRun, kind: str, preprocess: Any) -> dict[str, Any]:
    """Class or target names and how outputs become a decision."""
    task = run.task
    names = [str(n) for n in task.class_names]
    if kind == "regression":
        return {
            "class_names": names,
            "regression": {
                "target_names": names,
                "target_mean": [float(m) for m in task.mean],
                "target_std": [float(s) for s in task.std],
                "note": "`values` are in the targets' units: outputs * std + mean is in the model",
            },
        }
    if kind == "segmentation":
        window = pair(task.window, "task.inference.window")
        return {
            "class_names": names,
            "segmentation": {
                "num_classes": len(names),
                "window": None if window is None else list(window),
                "overlap": task.overlap,
                "blend": task.blend,
                "batch_size": task.window_batch,
                "min_object_size": task.min_object_size,
                "connectivity": task.connectivity,
                "spacing": None if preprocess.spacing is None else list(preprocess.spacing),
                "mask": "the most probable class of each pixel; then objects of min_object_size "
                "pixels or fewer (connectivity 1: 4-, 2: 8-connected) become background",
                "note": "the model file is the whole-image network; with a window, medtrain blends "
                "the logits of overlapping windows (starts every window * (1 - overlap) pixels, "
                "the last one at the image end; images smaller than the window zero-padded "
                "around; gaussian weights: sigma 0.125 * window, floor 1e-3, as MONAI), as "
                "examples/run_exported.py does; with flip_tta each window is averaged with its "
                "mirror inside the model, which equals medtrain's whole-image mirror where the "
                "window starts are symmetric",
            },
        }
    if task.multilabel:
        threshold = task.threshold
        threshold = threshold if isinstance(threshold, list) else [threshold] * len(names)
        decision = "label k is present when probabilities[k] >= threshold[k]"
    elif len(names) == 2:
        threshold = task.threshold
        decision = f"{names[1]} when probabilities[1] >= threshold, else {names[0]}"
    else:
        threshold, decision = None, "the most probable class"
    return {
        "class_names": names,
        "multilabel": bool(task.multilabel),
        "threshold": threshold,
        "decision": decision,
    }


def io_manifest(kind: str, channels: int, size: tuple[int, int] | None, width: int) -> dict:
    """The model file's input and outputs; `size` None: any height and width."""
    pixels = ["height", "width"] if size is None else list(size)
    shape = ["batch", width, *pixels] if kind == "segmentation" else ["batch", width]
    dtype = "float64" if kind == "regression" else "float32"
    return {
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NCHW",
            "channels": channels,
            "size": None if size is None else list(size),
            "dynamic_axes": ["batch", "height", "width"] if size is None else ["batch"],
        },
        "outputs": [
            {"name": name, "dtype": dtype, "shape": shape, "meaning": meaning}
            for name, meaning in OUTPUTS[kind].items()
        ],
    }
