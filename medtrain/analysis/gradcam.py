"""Grad-CAM heat maps of classification models: which image regions raised a class's logit."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf, open_dict
from torch import nn

from medtrain.io import load_checkpoint
from medtrain.models import call_model


def last_conv2d(model: nn.Module) -> nn.Conv2d | None:
    """The model's last registered `nn.Conv2d` (the last one run, for CNNs built in order: SimpleCNN,
    torchvision ResNets, DenseNets, EfficientNets, and the image branch of a fusion model)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def gradcam(
    model: nn.Module,
    image: torch.Tensor,
    target_class: int,
    layer: nn.Module | None = None,
    inputs: Mapping[str, torch.Tensor] | None = None,
) -> np.ndarray:
    """Grad-CAM (Selvaraju et al., 2017) of one image for one output.

    The layer's activations are weighted by the spatial mean of the gradient of the class logit with
    respect to them, summed over channels, passed through ReLU, upsampled to the image size and
    scaled to a maximum of 1.

    Args:
        model: a classifier; evaluated in eval mode (its mode is restored afterwards).
        image: the preprocessed image, (1, C, H, W).
        target_class: the output (logit) to explain.
        layer: the layer whose output is explained; default the model's last `nn.Conv2d`.
        inputs: the sample's other batch keys (e.g. `tabular`, batch of one) for models that read
            more than the image (`input_keys`).

    Returns:
        (H, W) float array in [0, 1]; all zeros when nothing raised the logit.

    Raises:
        ValueError: the model has no `nn.Conv2d` (e.g. a tabular-only model) and no layer is given.
    """
    layer = layer or last_conv2d(model)
    if layer is None:
        raise ValueError(
            f"{type(model).__name__} has no convolutional layer (nn.Conv2d); Grad-CAM needs one"
        )
    device = next(model.parameters()).device
    activations: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, args, output: activations.append(output))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            # The image requires grad so that the layer's output does, even with frozen weights.
            batch = {"image": image.detach().to(device).clone().requires_grad_(True)}
            batch |= {k: v.to(device) for k, v in (inputs or {}).items()}
            logits = call_model(model, batch)
            score = logits.reshape(logits.shape[0], -1)[0, target_class]
            activation = activations[-1]
            # autograd.grad leaves the parameters' .grad untouched (no backward pass into them).
            (gradient,) = torch.autograd.grad(score, activation)
    finally:
        handle.remove()
        model.train(was_training)
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * activation).sum(dim=1, keepdim=True)).detach().float()
    cam = F.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
    cam = cam[0, 0].cpu().numpy()
    peak = float(cam.max())
    return np.clip(cam / peak, 0.0, 1.0) if peak > 0 else np.zeros_like(cam)


def _display(image: torch.Tensor) -> np.ndarray:
    """A preprocessed (C, H, W) image as something to show: RGB for 3 channels, else the first
    channel, scaled to [0, 1]."""
    array = image.detach().cpu().float().numpy()
    array = np.moveaxis(array, 0, -1) if array.shape[0] == 3 else array[0]
    low, high = float(array.min()), float(array.max())
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def _predicted(probs: np.ndarray, multilabel: bool, threshold) -> tuple[int, str]:
    """The class Grad-CAM explains (the predicted one) and how the prediction reads."""
    if multilabel:
        chosen = np.flatnonzero(probs >= np.asarray(threshold))
        return int(probs.argmax()), ",".join(str(k) for k in chosen) or "none"
    if probs.shape[0] == 2 and threshold is not None:
        label = int(probs[1] >= threshold)
        return label, str(label)
    return int(probs.argmax()), str(int(probs.argmax()))


def gradcam_figures(
    run_dir: str | Path, num_images: int = 6, trust: Sequence[str] = (), checked: bool = True
) -> list[bytes]:
    """Grad-CAM overlays (PNG bytes) of the first `num_images` test images of a finished
    classification run, from `checkpoints/best.pt` and the data its config describes.

    Each figure shows the image with the heat map of the predicted class (jet, alpha 0.4), titled with
    the true and predicted class.

    Args:
        trust: `_target_` names (or module prefixes ending in `.`) the run may build besides the
            allowed ones (`medtrain.engine.trust`).
        checked: False only for a run this process has just trained from its user's own config
            (nothing of it is checked then).

    Raises:
        ConfigError: the config names what a run folder may not build.
        ValueError: not a classification run, or a model without `nn.Conv2d`.
        FileNotFoundError: no `checkpoints/best.pt`.
    """
    from matplotlib.figure import Figure  # the object API: no pyplot state, no display backend

    from medtrain.data.loading import collate
    from medtrain.engine.build import build_datasets, build_model, target_class
    from medtrain.engine.trust import check_targets

    path = Path(run_dir) / "checkpoints" / "best.pt"
    checkpoint = load_checkpoint(path)
    if checked:  # before anything the config names is imported or built
        check_targets(checkpoint["config"], path, trust)
    cfg = OmegaConf.create(checkpoint["config"])
    if getattr(target_class(cfg.task), "targets", None) != "classes":
        raise ValueError(f"Grad-CAM explains classifiers; this run's task is {cfg.task._target_}")
    with open_dict(cfg):
        cfg.trainer.num_workers = 0
    # Building the model draws initial weights: keep the caller's random stream as it was.
    with torch.random.fork_rng(devices=[]):
        dataset = build_datasets(cfg)["test"]
        model = build_model(cfg)
    model.load_state_dict(checkpoint["model"])
    model.eval()
    if isinstance(getattr(model, "members", None), nn.ModuleList):  # a fold ensemble
        raise ValueError(
            f"this run averages {len(model.members)} networks, and Grad-CAM explains one layer of "
            "one network: each member's report (a CV's fold_<k>/report.html) has its heat maps"
        )
    if any(isinstance(m, nn.Conv3d) for m in model.modules()):
        raise ValueError(
            f"the model ({type(model).__name__}) is a 3D network; Grad-CAM heat maps are drawn "
            "for 2D images only"
        )
    layer = last_conv2d(model)
    if layer is None:
        raise ValueError(
            f"the model ({type(model).__name__}) has no convolutional layer, so there is no "
            "Grad-CAM heat map to show"
        )
    names = list(cfg.dataset.get("class_names") or [])
    multilabel = bool(cfg.task.get("multilabel", False))
    threshold = checkpoint.get("threshold")

    def name(k: str) -> str:
        return names[int(k)] if k.isdigit() and int(k) < len(names) else k

    figures = []
    for index in range(min(num_images, len(dataset))):
        batch = collate([dataset[index]])
        inputs = {k: v for k, v in batch.items() if torch.is_tensor(v) and k not in ("image",)}
        with torch.no_grad():
            logits = call_model(model, batch)
        probs = (torch.sigmoid(logits) if multilabel else torch.softmax(logits, dim=1))[0].numpy()
        explained, predicted = _predicted(probs, multilabel, threshold)
        cam = gradcam(model, batch["image"], explained, layer, inputs)
        label = batch["label"][0]
        truth = (
            ",".join(name(str(k)) for k in np.flatnonzero(label.numpy())) or "none"
            if multilabel
            else name(str(int(label)))
        )
        figure = Figure(figsize=(2.8, 3.0))
        ax = figure.subplots()
        ax.imshow(_display(batch["image"][0]), cmap="gray")
        ax.imshow(cam, cmap="jet", alpha=0.4, vmin=0, vmax=1)
        ax.set_axis_off()
        shown = ",".join(name(k) for k in predicted.split(","))
        ax.set_title(
            f"{batch['id'][0]}\ntrue: {truth} | pred: {shown}\nmap of {name(str(explained))}",
            fontsize=8,
        )
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
        figures.append(buffer.getvalue())
    return figures
