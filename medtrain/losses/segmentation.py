"""Segmentation losses MONAI does not provide in the form a multi-channel model needs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medtrain.errors import ConfigError


class DiceBCELoss(nn.Module):
    """Soft Dice plus binary cross-entropy on independent sigmoid outputs, one per class.

    MONAI's `DiceCELoss(sigmoid=True)` switches to softmax cross-entropy as soon as the model has
    more than one output channel (every medtrain segmentation model has `num_classes` >= 2), so it
    is not Dice + BCE. Here the cross-entropy is binary on every channel against the one-hot mask,
    background included, so that the background channel is trained and `argmax` stays meaningful;
    the Dice term follows `include_background`.

    Args:
        include_background: include the background channel in the Dice term.
        lambda_dice: weight of the Dice term.
        lambda_bce: weight of the binary cross-entropy term.
        pos_weight: per-class weight of the positive pixels in the BCE (one value per class,
            background first), e.g. to favour recall of a rare class; None weighs them as 1.
        smooth_nr, smooth_dr: Dice smoothing (as in MONAI's `DiceLoss`).
        batch: one Dice over the whole batch instead of a mean of per-image Dice.
    """

    def __init__(
        self,
        include_background: bool = False,
        lambda_dice: float = 1.0,
        lambda_bce: float = 1.0,
        pos_weight: Sequence[float] | None = None,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = True,
    ):
        super().__init__()
        from monai.losses import DiceLoss  # MONAI takes seconds to import: only when used

        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=True,
            sigmoid=True,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        self.lambda_dice = lambda_dice
        self.lambda_bce = lambda_bce
        weight = (
            None if pos_weight is None else torch.as_tensor(list(pos_weight), dtype=torch.float32)
        )
        self.register_buffer("pos_weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """logits B x K x H x W, target B x 1 x H x W class indices."""
        one_hot = F.one_hot(target[:, 0].long(), logits.shape[1]).movedim(-1, 1).to(logits.dtype)
        pos_weight = None
        if self.pos_weight is not None:  # per class: broadcast over the pixels
            if self.pos_weight.numel() != logits.shape[1]:
                raise ConfigError(
                    f"loss.pos_weight has {self.pos_weight.numel()} values for "
                    f"{logits.shape[1]} classes (one per class, background first)"
                )
            pos_weight = self.pos_weight.view(-1, *([1] * (logits.ndim - 2)))
        bce = F.binary_cross_entropy_with_logits(logits, one_hot, pos_weight=pos_weight)
        return self.lambda_dice * self.dice(logits, target) + self.lambda_bce * bce
