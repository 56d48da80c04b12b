"""`python -m medtrain.export run_dir=<run> format=onnx|torchscript`: a finished run as one model file
with its task's postprocessing inside, and a manifest.json that describes everything else."""

from __future__ import annotations

import hashlib
import io
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn

from medtrain import __version__
from medtrain.cli import parse_key_values, tool_args
from medtrain.config import task_kind
from medtrain.data.segmentation import pair
from medtrain.errors import ConfigError, MedtrainError
from medtrain.export_manifest import (
    OUTPUTS,
    io_manifest,
    preprocessing_manifest,
    task_manifest,
)
from medtrain.inference import LoadedRun, eval_preprocessing, load_run, volume_settings
from medtrain.io import atomic_write, save_json
from medtrain.models import input_keys

MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
OPSET = 17
# Largest difference allowed between the exported model and PyTorch on random inputs (for regression
# in units of the target's standard deviation).
TOLERANCE = 1e-4
DEFAULTS: dict[str, Any] = {"run_dir": None, "format": "onnx", "output": None}
USAGE = """\
usage: python -m medtrain.export run_dir=<finished run> [format=onnx|torchscript] [output=<folder>]

  run_dir=PATH      a finished run (with checkpoints/best.pt)
  format=onnx       onnx (model.onnx, for onnxruntime) or torchscript (model.pt, for torch.jit.load)
  output=FOLDER     where model and manifest.json go (default <run_dir>/export; one format per folder)

examples/run_exported.py runs the export on image files without medtrain.
"""


class ExportedModel(nn.Module):
    """The run's network followed by its task's postprocessing, as `Predictor` computes it.

    Outputs: class probabilities (classification), values in target units as float64 (regression),
    or per-pixel class probabilities and the logits they come from (segmentation). With flip TTA
    the logits of the image and of its left-right mirror are averaged inside.
    """

    def __init__(
        self,
        network: nn.Module,
        kind: str,
        flip_tta: bool = False,
        multilabel: bool = False,
        mean: Sequence[float] = (0.0,),
        std: Sequence[float] = (1.0,),
    ):
        super().__init__()
        self.network = network
        self.kind = kind
        self.flip_tta = bool(flip_tta)
        self.multilabel = bool(multilabel)
        self.register_buffer("mean", torch.as_tensor(np.asarray(mean, dtype=np.float64)))
        self.register_buffer("std", torch.as_tensor(np.asarray(std, dtype=np.float64)))

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        out = self.network(image)
        if self.flip_tta:
            mirrored = self.network(image.flip(-1))
            # Image-level outputs do not move with the image; pixel maps are mirrored back.
            out = (out + (mirrored.flip(-1) if self.kind == "segmentation" else mirrored)) / 2
        return out.float()

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.logits(image)
        if self.kind == "classification":
            return torch.sigmoid(out) if self.multilabel else torch.softmax(out, dim=1)
        if self.kind == "regression":
            return out.double() * self.std + self.mean
        return torch.softmax(out, dim=1), out


def wrap(run: LoadedRun) -> ExportedModel:
    """The run's network with its task's postprocessing (eval mode)."""
    task, kind = run.task, task_kind(run.cfg.task)
    if kind == "regression":
        extra = {"mean": task.mean, "std": task.std}
    else:
        extra = {"multilabel": getattr(task, "multilabel", False)}
    return ExportedModel(run.model, kind, task.flip_tta, **extra).eval()


def check_exportable(model: nn.Module, preprocess: Any) -> None:
    """Refuse what a manifest cannot describe: models reading more than the image, and an
    `augmentation.eval` pipeline that is not empty.

    Raises:
        ConfigError: naming what is refused.
    """
    keys = input_keys(model)
    if keys != ("image",):
        raise ConfigError(
            f"run_dir: the model reads {list(keys)}; export serves image-only models (tabular "
            "columns and fusion branches have no place in an image manifest)"
        )
    pipeline = getattr(preprocess.transform, "pipeline", None)
    steps = getattr(pipeline, "transforms", None)
    if pipeline is not None and (not isinstance(pipeline, A.BaseCompose) or len(steps)):
        names = [type(t).__name__ for t in steps] if steps else [type(pipeline).__name__]
        raise ConfigError(
            f"run_dir: augmentation.eval runs {names}; the manifest describes channels, resizing "
            "and normalization only, so an exported model would see other inputs than evaluation "
            "did (export runs whose augmentation.eval is empty)"
        )


def _channels(model: nn.Module, preprocess: Any) -> int:
    if preprocess.in_channels is not None:
        return int(preprocess.in_channels)
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ConfigError(
            "run_dir: cannot tell the model's input channels (set dataset.in_channels)"
        )
    return int(conv.in_channels)


def size_plans(run: LoadedRun, preprocess: Any) -> list[tuple[list[tuple[int, int]], bool]]:
    """Ways to export, in order of preference: the input sizes to trace and check the file at, and
    whether it takes any height and width.

    A fixed size when the network only ever sees one: the resized image of an image-level task,
    or of a segmentation run without a window. Otherwise any size, checked at one odd size and at
    the size the example script feeds (the window, else the training size); with a window, the
    window size alone when a trace does not generalize (e.g. MONAI's BasicUNet pads odd sides in
    a Python branch), as tiling feeds the network nothing else.
    """
    fixed = pair(preprocess.image_size, "dataset.image_size")
    window = pair(getattr(run.task, "window", None), "task.inference.window")
    if fixed is not None and window is None:
        return [([fixed], False)]
    base = window or pair(
        (run.checkpoint.get("preprocessing") or {}).get("input_size"), "input_size"
    )
    base = base or (64, 64)
    # Traced at a size no network divides evenly, so that size-dependent padding inside it (the
    # U-Net pads to a multiple of 2**depth) is recorded as computed rather than left out.
    plans = [([(base[0] + 1, base[1] + 1), base], True)]
    return plans + [([window], False)] if window else plans


def trace(model: ExportedModel, fmt: str, example: torch.Tensor, any_size: bool) -> bytes:
    """The model file's bytes: ONNX (the TorchScript-based exporter, which needs no onnxscript)
    with a dynamic batch (and height and width for `any_size`), or TorchScript."""
    buffer = io.BytesIO()
    # Tracing warns about every shape-dependent Python branch and about its own deprecation; what
    # matters is whether the file computes what PyTorch does, which `compare` checks afterwards.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
        else:
            names = list(OUTPUTS[model.kind])
            pixels = {0: "batch", 2: "height", 3: "width"} if any_size else {0: "batch"}
            axes = {"image": pixels} | {
                n: pixels if model.kind == "segmentation" else {0: "batch"} for n in names
            }
            torch.onnx.export(
                model,
                (example,),
                buffer,
                dynamo=False,
                opset_version=OPSET,
                input_names=["image"],
                output_names=names,
                dynamic_axes=axes,
            )
    return buffer.getvalue()


def load_file(data: bytes, fmt: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The exported model as its users run it: a float32 batch in, numpy outputs out."""
    if fmt == "onnx":
        import onnxruntime  # imported here: only ONNX exports need it

        options = onnxruntime.SessionOptions()
        options.log_severity_level = 4  # failures reach the caller as exceptions; no log lines
        session = onnxruntime.InferenceSession(data, options, providers=["CPUExecutionProvider"])
        return lambda images: session.run(None, {"image": images})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet works
        module = torch.jit.load(io.BytesIO(data))

    def run(images: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            out = module(torch.from_numpy(images))
        return [t.numpy() for t in (out if isinstance(out, tuple) else (out,))]

    return run


def compare(model: ExportedModel, data: bytes, fmt: str, sizes, channels: int) -> float:
    """Largest difference between the exported file and PyTorch on random batches of each size.

    Raises:
        ConfigError: the file computes something else (e.g. a network whose forward depends on
            the input size in a way that tracing cannot record).
    """
    run = load_file(data, fmt)
    generator = torch.Generator().manual_seed(0)
    # Regression values are compared in units of the target's spread.
    allowed = TOLERANCE * (max(float(model.std.max()), 1.0) if model.kind == "regression" else 1)
    worst = 0.0
    for size in sizes:
        images = torch.randn(3, channels, *size, generator=generator)
        with torch.no_grad():
            expected = model(images)
        expected = expected if isinstance(expected, tuple) else (expected,)
        try:
            got = run(images.numpy())
        except Exception as err:  # onnxruntime and TorchScript raise their own error types
            first = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise _size_error(f"fails ({first})", size) from err
        for want, have in zip(expected, got, strict=True):
            if have.shape != tuple(want.shape):
                raise ConfigError(
                    f"the exported model gives outputs of shape {have.shape} for {size[0]}x"
                    f"{size[1]} inputs, PyTorch {tuple(want.shape)}"
                )
            worst = max(worst, float(np.abs(have - want.numpy()).max()))
        if worst > allowed:
            raise _size_error(f"differs from PyTorch by {worst:.2g}", size)
    return worst


def _size_error(what: str, size: tuple[int, int]) -> ConfigError:
    return ConfigError(
        f"the exported model {what} on {size[0]}x{size[1]} inputs: its network depends on the "
        "input size in a way tracing cannot record; set dataset.image_size to train and export "
        "a fixed size"
    )


def export_run(run: LoadedRun, fmt: str, output: str | Path) -> dict[str, Any]:
    """Write `model.onnx` or `model.pt`, then `manifest.json`, into `output` (each atomically; the
    manifest last, so that its presence means a complete export).

    Returns:
        The manifest.

    Raises:
        ConfigError: an unknown format, a model or preprocessing that cannot be exported, or an
            exported file that does not compute what PyTorch does.
    """
    if fmt not in MODEL_FILES:
        raise ConfigError(f"format={fmt!r}: choose one of {list(MODEL_FILES)}")
    preprocess = eval_preprocessing(run.cfg, run.checkpoint.get("preprocessing"))
    check_exportable(run.model, preprocess)
    kind = task_kind(run.cfg.task)
    model = wrap(run)
    channels = _channels(run.model, preprocess)
    for sizes, any_size in size_plans(run, preprocess):
        data = trace(model, fmt, torch.zeros(2, channels, *sizes[0]), any_size)
        try:
            difference = compare(model, data, fmt, sizes, channels)
            break
        except ConfigError as err:
            refused = err
    else:
        raise refused
    name = MODEL_FILES[fmt]
    atomic_write(Path(output) / name, lambda handle: handle.write(data), mode="wb")
    for other in set(MODEL_FILES.values()) - {name}:  # one format per folder: no stale model file
        (Path(output) / other).unlink(missing_ok=True)
    preprocessing = preprocessing_manifest(preprocess, kind)
    slicing = volume_settings(run.cfg)
    if slicing is not None:
        preprocessing["volume"] = {
            **slicing,
            "rule": "trained on 2D slices along `axis` of volumes z-scored as a whole (zscore: over "
            "all voxels; nonzero_zscore: over non-zero voxels) before slicing; slice the "
            "normalized volume, run each slice, stack the masks back along `axis`",
        }
    manifest = {
        "format": fmt,
        "model_file": name,
        "task": kind,
        **io_manifest(kind, channels, None if any_size else sizes[0], len(run.task.class_names)),
        "preprocessing": preprocessing,
        **task_manifest(run, kind, preprocess),
        "flip_tta": model.flip_tta,
        "exporter": {
            "name": "torch.onnx.export (TorchScript-based, dynamo=False)"
            if fmt == "onnx"
            else "torch.jit.trace",
            "opset": OPSET if fmt == "onnx" else None,
            "torch": torch.__version__,
        },
        "checked": {
            "against": "PyTorch, on random inputs of these sizes",
            "sizes": [list(s) for s in sizes],
            "max_abs_difference": difference,
        },
        "weights_sha256": run.weights_sha256,
        "checkpoint": str(run.checkpoint_path),
        "medtrain_version": __version__,
        "trained_with": run.checkpoint.get("medtrain_version"),
        "files": {name: hashlib.sha256(data).hexdigest()},
    }
    save_json(Path(output) / "manifest.json", manifest)
    return manifest


def export(
    run_dir: str | Path, fmt: str = "onnx", output: str | Path | None = None
) -> dict[str, Any]:
    """Export a finished run (see `export_run`); `output` defaults to `<run_dir>/export`."""
    if fmt not in MODEL_FILES:  # before the run is loaded: a typo gets its answer at once
        raise ConfigError(f"format={fmt!r}: choose one of {list(MODEL_FILES)}")
    run = load_run(run_dir)
    return export_run(run, fmt, Path(output) if output else run.run_dir / "export")


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status (2 with one `error:` line on bad input)."""
    argv, status = tool_args(argv, USAGE)
    if status is not None:
        return status
    try:
        cfg = parse_key_values(argv, DEFAULTS, text_keys=("run_dir", "format", "output"))
        if not cfg.run_dir:
            raise ConfigError("run_dir=<finished run> is required")
        output = Path(cfg.output) if cfg.output else Path(cfg.run_dir) / "export"
        manifest = export(cfg.run_dir, cfg.format, output)
    except (MedtrainError, OSError) as err:  # OSError: e.g. an output folder without permission
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {output / manifest['model_file']} and {output / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
