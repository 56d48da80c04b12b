"""Losses, one family per file: `classification` (cross-entropy, BCE, focal on class or multi-hot
targets) and `segmentation` (Dice + BCE on class masks). Config files name them by their module
(`medtrain.losses.classification.CrossEntropy`); MONAI's and torch's losses plug in directly.
`loss_family` tells what a configured loss compares, so that a task can refuse one that does not
fit it before anything is built."""

from __future__ import annotations

from medtrain.losses.classification import BCEWithLogits, CrossEntropy, FocalLoss
from medtrain.losses.segmentation import DiceBCELoss

__all__ = ["BCEWithLogits", "CrossEntropy", "DiceBCELoss", "FocalLoss", "loss_family"]

VALUE_LOSSES = (
    "torch.nn.MSELoss",
    "torch.nn.L1Loss",
    "torch.nn.HuberLoss",
    "torch.nn.SmoothL1Loss",
)
# torch's losses of class scores: a regression task refuses them (cross-entropy of one standardised
# value is 0; BCE of one takes it as a probability) where a one-batch check could not tell.
TORCH_CLASS_LOSSES = (
    "torch.nn.CrossEntropyLoss",
    "torch.nn.NLLLoss",
    "torch.nn.BCELoss",
    "torch.nn.BCEWithLogitsLoss",
    "torch.nn.MultiMarginLoss",
    "torch.nn.MultiLabelMarginLoss",
    "torch.nn.MultiLabelSoftMarginLoss",
    "torch.nn.SoftMarginLoss",
)
MASK_LOSS_MODULES = ("monai.losses.", "medtrain.losses.segmentation.")
CLASS_LOSS_MODULES = ("medtrain.losses.classification.",)


def loss_family(target: object) -> str | None:
    """What the loss a `_target_` names compares, in the terms of `Task.targets`: `values`
    (regression losses), `masks` (MONAI's and medtrain's segmentation losses) or `classes`
    (medtrain's and torch's classification losses); None for any other loss, which is not checked
    here (one batch tries it before training)."""
    target = str(target or "").replace("torch.nn.modules.loss.", "torch.nn.")
    if target in VALUE_LOSSES:
        return "values"
    if target.startswith(MASK_LOSS_MODULES):
        return "masks"
    if target.startswith(CLASS_LOSS_MODULES) or target in TORCH_CLASS_LOSSES:
        return "classes"
    return None
