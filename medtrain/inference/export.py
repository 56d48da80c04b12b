"""A finished run as one model file (ONNX or TorchScript) with its task's postprocessing inside,
checked against PyTorch, and a manifest.json that describes everything else; the library behind
`medtrain export`."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import albumentations as A
import numpy as np
import torch
from torch import nn

from medtrain import __version__
from medtrain.data.volume_transforms import is_monai_pipeline, spatial_size
from medtrain.errors import ConfigError
from medtrain.inference.export_manifest import (
    io_manifest,
    preprocessing_manifest,
)
from medtrain.inference.run import (
    LoadedRun,
    eval_preprocessing,
    load_run,
    scale_matters,
    trained_values,
    volume_settings,
)
from medtrain.io import atomic_write, json_safe, refuse_file_in_the_way, save_json
from medtrain.models import input_keys
from medtrain.tasks.tta import tta_views

log = logging.getLogger(__name__)

MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
OPSET = 17
# Largest difference allowed between the exported model and PyTorch on random inputs (for regression
# in units of the target's standard deviation).
TOLERANCE = 1e-4


class ExportedModel(nn.Module):
    """The run's network followed by its task's postprocessing (`Task.postprocess`), as `Predictor`
    computes it: e.g. class probabilities, values in target units, or per-pixel probabilities and
    logits. With test-time augmentation (`task.tta`) the outputs of the views (brought back by
    `Task.unview`) are averaged inside, as the task averages them (`Task.combine`).

    With `network_only` it is the network alone (float32 outputs, no views, no postprocessing):
    what `Task.infer` calls as its model, for a backend that runs the network in another runtime
    and leaves tiling, test-time views and resizing to the task (`medtrain.inference.onnx_backend`).
    """

    def __init__(self, network: nn.Module, task: Any, network_only: bool = False):
        super().__init__()
        self.network = network
        self.task = task  # a plain attribute: its loss is no part of the exported model
        self.network_only = network_only

    def logits(self, image: torch.Tensor) -> torch.Tensor:
        return self.task.averaged_views(lambda view: self.network(view.apply(image)).float(), image)

    def forward(self, image: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.network_only:
            return self.network(image).float()
        return self.task.postprocess(self.logits(image))

    def outputs(self, width: int, pixels: Sequence[Any]) -> list[dict[str, Any]]:
        """The file's outputs (`Task.export_outputs`); `network_only`: the network's outputs, which
        have the shape of the task's first output (class or per-pixel maps, values)."""
        described = self.task.export_outputs(width, pixels)
        if not self.network_only:
            return described
        return [
            {
                "name": "network",
                "dtype": "float32",
                "shape": described[0]["shape"],
                "meaning": "the network's outputs, before the task's postprocessing",
            }
        ]


def wrap(run: LoadedRun, network_only: bool = False) -> ExportedModel:
    """The run's network with its task's postprocessing, or alone (`network_only`), in eval mode."""
    return ExportedModel(run.model, run.task, network_only).eval()


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
    composed = isinstance(pipeline, A.BaseCompose) or is_monai_pipeline(pipeline)
    if pipeline is not None and (not composed or steps is None or len(steps)):
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
    dims = spatial_dims(preprocess)
    fixed = spatial_size(preprocess.image_size, "dataset.image_size", dims)
    window = spatial_size(run.task.window, "task.inference.window", dims)
    if fixed is not None and window is None:
        return [([fixed], False)]
    trained = (run.checkpoint.get("preprocessing") or {}).get("input_size")
    base = window or spatial_size(trained, "input_size", dims)
    base = base or (64, 64) if dims == 2 else base or (32, 32, 32)
    # Traced at a size no network divides evenly, so that size-dependent padding inside it (the
    # U-Net pads to a multiple of 2**depth) is recorded as computed rather than left out.
    plans = [([tuple(side + 1 for side in base), base], True)]
    return plans + [([window], False)] if window else plans


def spatial_dims(preprocess: Any) -> int:
    """2 for runs on images, 3 for runs of 3D networks on volumes."""
    return int(getattr(preprocess, "spatial_dims", 2))


def axis_names(dims: int) -> list[str]:
    """The names of the spatial axes of inputs and per-pixel outputs."""
    return ["depth", "height", "width"] if dims == 3 else ["height", "width"]


def trace(
    model: ExportedModel, fmt: str, example: torch.Tensor, any_size: bool, outputs: list[dict]
) -> bytes:
    """The model file's bytes: ONNX (the TorchScript-based exporter, which needs no onnxscript)
    with a dynamic batch (and height and width for `any_size`, also of the outputs whose shape
    ends with them), or TorchScript. `outputs`: `Task.export_outputs`."""
    buffer = io.BytesIO()
    # Tracing warns about every shape-dependent Python branch and about its own deprecation; what
    # matters is whether the file computes what PyTorch does, which `compare` checks afterwards.
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), buffer)
        else:
            names = [output["name"] for output in outputs]
            spatial = axis_names(example.ndim - 2)
            pixels = {0: "batch"} | (
                {2 + k: name for k, name in enumerate(spatial)} if any_size else {}
            )
            axes = {"image": pixels} | {
                o["name"]: pixels if "height" in o["shape"] else {0: "batch"} for o in outputs
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


def onnx_session(data: bytes, threads: int | None = None, providers: Sequence[Any] = ()) -> Any:
    """An ONNX Runtime session of a model file's bytes, with every graph optimization.

    Args:
        threads: intra-op threads; None: ONNX Runtime's default (one per physical core).
        providers: execution providers in order of preference; empty: the CPU.
    """
    import onnxruntime  # imported here: only ONNX exports need it

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 4  # failures reach the caller as exceptions; no log lines
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1  # the graph is one chain of operators: nothing to overlap
        # Idle pool threads would spin on cores that a server's event loop needs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    chosen = list(providers) or ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(data, options, providers=chosen)


def load_file(data: bytes, fmt: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The exported model as its users run it: a float32 batch in, numpy outputs out."""
    if fmt == "onnx":
        session = onnx_session(data)
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
    # Outputs are compared in units of their spread (e.g. regression values in target units).
    allowed = TOLERANCE * model.task.export_tolerance()
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
                    f"the exported model gives outputs of shape {have.shape} for "
                    f"{'x'.join(map(str, size))} inputs, PyTorch {tuple(want.shape)}"
                )
            worst = max(worst, float(np.abs(have - want.numpy()).max()))
        if worst > allowed:
            raise _size_error(f"differs from PyTorch by {worst:.2g}", size)
    return worst


def _size_error(what: str, size: tuple[int, int]) -> ConfigError:
    return ConfigError(
        f"the exported model {what} on {'x'.join(map(str, size))} inputs: its network depends on the "
        "input size in a way tracing cannot record; set dataset.image_size to train and export "
        "a fixed size"
    )


@dataclass
class ModelFile:
    """A traced model file that computes what PyTorch does: its `data`, the input `sizes` it was
    checked at, whether it takes `any_size`, its `outputs` (`ExportedModel.outputs`), the input
    `channels` and the largest `difference` from PyTorch found."""

    data: bytes
    sizes: list[tuple[int, int]]
    any_size: bool
    outputs: list[dict[str, Any]]
    channels: int
    difference: float


def build_model_file(run: LoadedRun, model: ExportedModel, fmt: str, preprocess: Any) -> ModelFile:
    """`model` (`wrap`) traced to ONNX or TorchScript in the first of `size_plans` whose file
    computes what PyTorch does (`compare`): what `medtrain export` writes and the ONNX backend of
    `Predictor` runs.

    Raises:
        ConfigError: the file computes something else at every plan (the last plan's reason).
    """
    channels = _channels(run.model, preprocess)
    width = len(run.task.class_names) + run.task.sigmoid_outputs
    for sizes, any_size in size_plans(run, preprocess):
        pixels = axis_names(len(sizes[0])) if any_size else list(sizes[0])
        outputs = model.outputs(width, pixels)
        data = trace(model, fmt, torch.zeros(2, channels, *sizes[0]), any_size, outputs)
        try:
            difference = compare(model, data, fmt, sizes, channels)
        except ConfigError as err:
            refused = err
            continue
        return ModelFile(data, sizes, any_size, outputs, channels, difference)
    raise refused


def export_run(run: LoadedRun, fmt: str, output: str | Path) -> dict[str, Any]:
    """Write `model.onnx` or `model.pt`, then `manifest.json`, into `output` (each atomically; the
    manifest last, so that its presence means a complete export). The other format's file already
    there stays when it is an export of the same weights and settings, unchanged since its
    manifest was written (`manifest.json`'s `models` then lists both); otherwise it is removed.

    Returns:
        The manifest.

    Raises:
        ConfigError: an unknown format, an output folder in a file's place, a model or
            preprocessing that cannot be exported, or an exported file that does not compute
            what PyTorch does.
    """
    if fmt not in MODEL_FILES:
        raise ConfigError(f"format={fmt!r}: choose one of {list(MODEL_FILES)}")
    folder = Path(output)
    refuse_file_in_the_way("output", folder, folder=True)
    before = earlier_manifest(folder)  # before the export is built: a refusal comes at once
    check_own_files(folder, before)
    preprocess = eval_preprocessing(run.cfg, run.checkpoint.get("preprocessing"))
    check_exportable(run.model, preprocess)
    built = build_model_file(run, wrap(run), fmt, preprocess)
    name = MODEL_FILES[fmt]
    preprocessing = preprocessing_manifest(preprocess)
    slicing = volume_settings(run.cfg)
    if slicing is not None:
        preprocessing["volume"] = {
            **slicing,
            "rule": "trained on 2D slices along `axis` of volumes z-scored as a whole (zscore: over "
            "all voxels; nonzero_zscore: over non-zero voxels) before slicing; read the volume "
            "in RAS axis order (nibabel.as_closest_canonical), slice the normalized volume, run "
            "each slice, stack the masks back along `axis` and turn them to the file's own order",
        }
    trained = trained_values(run.run_dir)
    if trained is not None:  # what an outside reader checks an input's pixel scale against
        preprocessing["training_images"] = {
            "dtypes": sorted(trained[0]),
            "max": trained[1],
            "scale_matters": scale_matters(preprocess),
            "rule": "8/16-bit images are read as 0-1 of their bit depth, floats as they are: "
            "where scale_matters, refuse a float image outside 0-1 for a run of 8/16-bit images, "
            "a uint16 image of values up to 255 for a run of uint8 images, an 8/16-bit image "
            "for a run of float images of values above 1.5, and a float image of values above "
            "1.5 for a run of float images of 0-1",
        }
    shared = {
        "task": run.task.name,
        "preprocessing": preprocessing,
        **run.task.export_manifest(preprocess),
        "tta": {
            "choice": run.task.tta,
            "views": len(tta_views(run.task.tta, len(built.sizes[0]) if built.sizes else 2)),
            "inside_model": True,
        },
        "weights_sha256": run.weights_sha256,
        "checkpoint": str(run.checkpoint_path),
        "medtrain_version": __version__,
        "trained_with": run.checkpoint.get("medtrain_version"),
    }
    entry = {
        "model_file": name,
        **io_manifest(
            built.outputs,
            built.channels,
            None if built.any_size else built.sizes[0],
            spatial_dims(preprocess),
        ),
        "exporter": {
            "name": "torch.onnx.export (TorchScript-based, dynamo=False)"
            if fmt == "onnx"
            else "torch.jit.trace",
            "opset": OPSET if fmt == "onnx" else None,
            "torch": torch.__version__,
        },
        "checked": {
            "against": "PyTorch, on random inputs of these sizes",
            "sizes": [list(s) for s in built.sizes],
            "max_abs_difference": built.difference,
        },
        "sha256": hashlib.sha256(built.data).hexdigest(),
    }
    kept = kept_exports(folder, before, fmt, shared)
    atomic_write(folder / name, lambda handle: handle.write(built.data), mode="wb")
    for other_fmt, other in sorted(MODEL_FILES.items()):
        if other_fmt != fmt and other_fmt not in kept and (folder / other).is_file():
            (folder / other).unlink()  # the manifest could not describe it
            log.warning(
                "removed %s/%s, an earlier export of other weights or settings (or changed since "
                "its manifest was written): a folder holds the formats of one export",
                output,
                other,
            )
    models = {**kept, fmt: entry}
    # The top level describes this export (`format`, `model_file`, `input`, `outputs`, ...);
    # `models` every format the folder holds, with the same settings and weights.
    manifest = {
        "format": fmt,
        **{key: value for key, value in entry.items() if key != "sha256"},
        **shared,
        "files": {e["model_file"]: e["sha256"] for e in models.values()},
        "models": dict(sorted(models.items())),
    }
    save_json(Path(output) / "manifest.json", manifest)
    return manifest


# Where the weights were read and which medtrain wrote the manifest: not what the files compute.
PROVENANCE_KEYS = frozenset({"checkpoint", "medtrain_version"})

# The manifest's keys that describe one format's file (the rest is the run's and its settings').
FORMAT_KEYS = frozenset(
    {"format", "model_file", "input", "outputs", "exporter", "checked", "files", "models"}
)


def earlier_manifest(folder: Path) -> dict[str, Any] | None:
    """The `manifest.json` of the export already in `folder`, or None when there is none; an
    export replaces it only where it is an earlier export's.

    Raises:
        ConfigError: the folder holds a manifest.json of something else (or a file that is not
            JSON), naming it.
    """
    path = folder / "manifest.json"
    if not path.exists():
        return None
    try:
        before = json.loads(path.read_text())
    except (OSError, ValueError):
        before = None
    if not (isinstance(before, dict) and {"format", "model_file"} <= set(before)):
        raise ConfigError(
            f"output={folder}: its manifest.json is not an earlier export's, and an export would "
            "replace it: give output= another folder"
        )
    return before


def check_own_files(folder: Path, before: dict[str, Any] | None) -> None:
    """An export replaces or removes only model files an earlier export wrote (named by its
    `manifest.json`): a `model.onnx` or `model.pt` of someone's own in `output=` was removed.

    Raises:
        ConfigError: naming the model files that no manifest names.
    """
    named = set((before or {}).get("files") or {}) | {(before or {}).get("model_file")}
    foreign = [n for n in sorted(MODEL_FILES.values()) if (folder / n).exists() and n not in named]
    if foreign:
        raise ConfigError(
            f"output={folder} holds {', '.join(foreign)}, which "
            + ("its manifest.json does not name" if before else "no export's manifest.json names")
            + ": an export would replace or remove it; give output= another folder (or, if it "
            "is what an interrupted export left before its manifest, delete it)"
        )


def kept_exports(
    folder: Path, before: dict[str, Any] | None, fmt: str, shared: dict[str, Any]
) -> dict[str, dict[str, Any]]:
    """The other formats' entries of the export already in `folder` (its manifest `before`) that
    stay beside a new `fmt` file: those of an export with the same weights and settings (`shared`
    equal to its manifest's other keys) whose file is as its manifest recorded it."""
    if before is None:
        return {}
    # As save_json writes it (NaN as null, tuples as lists), to compare with what it wrote; the
    # same weights and settings, however the run folder was named or medtrain updated since.
    now = json.loads(json.dumps(json_safe(shared), allow_nan=False))
    same = {k: v for k, v in before.items() if k not in FORMAT_KEYS | PROVENANCE_KEYS} == {
        k: v for k, v in now.items() if k not in PROVENANCE_KEYS
    }
    if not same:
        return {}
    entries = before.get("models") or {  # written before formats could share a folder
        before.get("format"): {
            **{
                k: before[k]
                for k in ("model_file", "input", "outputs", "exporter", "checked")
                if k in before
            },
            "sha256": (before.get("files") or {}).get(before.get("model_file")),
        }
    }
    kept = {}
    for other, entry in entries.items():
        path = folder / MODEL_FILES.get(other, "")
        if other == fmt or other not in MODEL_FILES or not path.is_file():
            continue
        if hashlib.sha256(path.read_bytes()).hexdigest() == entry.get("sha256"):
            kept[other] = entry
    return kept


def export(
    run_dir: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Export a finished run (see `export_run`); `output` defaults to `<run_dir>/export`.

    Args:
        trust: `_target_` names (or module prefixes ending in `.`) the run may build besides the
            allowed ones (`medtrain.engine.trust`).
    """
    if fmt not in MODEL_FILES:  # before the run is loaded: a typo gets its answer at once
        raise ConfigError(f"format={fmt!r}: choose one of {list(MODEL_FILES)}")
    run = load_run(run_dir, trust=trust)
    return export_run(run, fmt, Path(output) if output else run.run_dir / "export")
