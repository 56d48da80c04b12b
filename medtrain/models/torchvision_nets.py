"""torchvision classifiers (ResNet, DenseNet, EfficientNet) adapted to any channel count, class count
and small inputs, with optional weights from a local file (nothing is downloaded)."""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

from medtrain.errors import ConfigError

ARCHITECTURES = ("resnet18", "resnet50", "densenet121", "efficientnet_b0")


def _first_conv(model: nn.Module) -> tuple[nn.Module, str]:
    if hasattr(model, "conv1"):
        return model, "conv1"  # ResNet
    if hasattr(model, "features") and hasattr(model.features, "conv0"):
        return model.features, "conv0"  # DenseNet
    return model.features[0], "0"  # EfficientNet: features[0] is Conv-BN-act


def _adapt_stem(
    model: nn.Module, in_channels: int, small_input: bool, pretrained: bool = False
) -> None:
    """Replace the first convolution for `in_channels`; for small inputs also drop its down-sampling.

    Pretrained RGB filters are summed over colour for grey input (or tiled for more channels) so that
    loaded weights still respond to the same structures; a small input's 3x3 stem takes the centre
    3x3 of larger filters (a ResNet's 7x7): they were left random, and the file's stem unused.
    """
    parent, name = _first_conv(model)
    old: nn.Conv2d = getattr(parent, name)
    kernel, stride, padding = old.kernel_size, old.stride, old.padding
    if small_input:  # as in MedMNIST's 28-px ResNets: 3x3, stride 1, no max pool after it
        kernel, stride, padding = (3, 3), (1, 1), (1, 1)
    if not small_input and in_channels == old.in_channels:
        return
    new = nn.Conv2d(
        in_channels, old.out_channels, kernel, stride, padding, bias=old.bias is not None
    )
    # Untrained, a 3x3 stem keeps its own initialisation (as runs before had it).
    if kernel == old.kernel_size or pretrained:
        with torch.no_grad():
            weight = old.weight
            if kernel != old.kernel_size:  # the centre of each filter (7x7 -> 3x3)
                top, left = ((o - k) // 2 for o, k in zip(old.kernel_size, kernel, strict=True))
                weight = weight[:, :, top : top + kernel[0], left : left + kernel[1]]
            weight = (
                weight.sum(dim=1, keepdim=True)
                if in_channels == 1
                else weight.repeat(1, -(-in_channels // old.in_channels), 1, 1)[:, :in_channels]
            )
            new.weight.copy_(weight * (1.0 if in_channels == 1 else old.in_channels / in_channels))
    setattr(parent, name, new)
    if small_input:
        if hasattr(model, "maxpool"):
            model.maxpool = nn.Identity()
        if hasattr(model, "features") and hasattr(model.features, "pool0"):
            model.features.pool0 = nn.Identity()


def _replace_head(model: nn.Module, num_classes: int) -> None:
    if hasattr(model, "fc"):
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    elif isinstance(model.classifier, nn.Linear):
        model.classifier = nn.Linear(model.classifier.in_features, num_classes)
    else:  # EfficientNet: Sequential(Dropout, Linear)
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)


def torchvision_classifier(
    arch: str,
    in_channels: int,
    num_classes: int,
    small_input: bool = False,
    weights: str | None = None,
    stem_from_weights: bool = False,
) -> nn.Module:
    """Build a torchvision classifier for medical images.

    Args:
        arch: one of `ARCHITECTURES`.
        in_channels: image channels (1 for grey scans).
        num_classes: number of outputs.
        small_input: drop the stem's down-sampling for images of about 28-64 px.
        weights: optional local state-dict file in torchvision's layout (e.g. ImageNet weights you
            downloaded yourself); loaded before the stem and head are adapted.
        stem_from_weights: with `small_input` and `weights`, the 3x3 stem takes the centre 3x3
            of the loaded filters (the shipped configs set it); false, as runs saved before the
            key: a new 3x3 stem of its own initialisation.
    """
    if arch not in ARCHITECTURES:
        raise ConfigError(f"model.arch={arch!r} is not supported; choose one of {ARCHITECTURES}")
    model = getattr(torchvision.models, arch)(weights=None)
    if weights is not None:
        if not isinstance(weights, (str, Path)):
            raise ConfigError(
                f"model.weights={weights!r}: give the path of a local state-dict file, or null"
            )
        if not Path(weights).is_file():
            raise ConfigError(
                f"model.weights={weights!r}: no such file. medtrain never downloads weights: give "
                f"a state-dict file in torchvision's layout that you downloaded (e.g. {arch}'s "
                "ImageNet weights from torchvision), or null"
            )
        state = torch.load(weights, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state))
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ConfigError(f"model.weights={weights!r} does not fit {arch}: {err}") from err
    _adapt_stem(
        model, in_channels, small_input, pretrained=weights is not None and stem_from_weights
    )
    _replace_head(model, num_classes)
    return model
