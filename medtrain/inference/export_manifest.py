"""manifest.json of an exported model: its input and outputs, the evaluation preprocessing in numbers
and rules, and how outputs become decisions, so that it runs without medtrain."""

from __future__ import annotations

from typing import Any

from medtrain.data.volume_transforms import spatial_size

NORMALIZE_RULE = (
    "first invert (true: x -> 1 - x; auto: only when the image's median is above 0.5), then fixed "
    "or dataset (mean and std of the training split): "
    "(x - mean) / std per channel; zscore: (x - mean(x)) / max(std(x), 1e-6); minmax: "
    "(x - min(x)) / max(max(x) - min(x), 1e-6); percentile: clip((x - p_low) / max(p_high - p_low, "
    "1e-6), 0, 1) with numpy's linear percentiles; none: unchanged; statistics over the whole image"
)


def preprocessing_manifest(preprocess: Any) -> dict[str, Any]:
    """The evaluation preprocessing in numbers and rules (medtrain.data.transforms)."""
    dims = int(getattr(preprocess, "spatial_dims", 2))
    size = spatial_size(preprocess.image_size, "dataset.image_size", dims)
    # Segmentation datasets normalize the native image before resizing it; image-level datasets
    # the reverse.
    resize_last = preprocess.normalizes_before_resize
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
        }
        if getattr(preprocess, "scales_by_storage_type", True)
        else {"rule": "none: voxel values as float32 (modality units, e.g. MRI intensity or HU)"},
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


def io_manifest(
    outputs: list[dict[str, Any]], channels: int, size: tuple[int, ...] | None, dims: int = 2
) -> dict[str, Any]:
    """The model file's input and its outputs (`Task.export_outputs`); `size` None: any height and
    width (and depth, for volumes: `dims` 3)."""
    axes = ["depth", "height", "width"] if dims == 3 else ["height", "width"]
    return {
        "input": {
            "name": "image",
            "dtype": "float32",
            "layout": "NCDHW" if dims == 3 else "NCHW",
            **(
                {
                    "axis_order": "RAS: a volume's axes permuted and flipped to the closest RAS "
                    "order first (nibabel.as_closest_canonical; no voxel resampled), and a "
                    "predicted label volume turned back to the file's own order; the layout's "
                    "D, H, W (dynamic axes depth, height, width) are x (to R), y (to A), z (to S)"
                }
                if dims == 3
                else {}
            ),
            "channels": channels,
            "size": None if size is None else list(size),
            "dynamic_axes": ["batch", *axes] if size is None else ["batch"],
        },
        "outputs": outputs,
    }
