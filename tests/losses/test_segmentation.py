"""medtrain.losses.segmentation: Dice + BCE checked against MONAI's Dice and scikit-learn's log loss."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceLoss
from sklearn.metrics import log_loss

from medtrain.engine.build import build
from medtrain.errors import ConfigError
from medtrain.losses.segmentation import DiceBCELoss
from tests.conftest import compose_cfg


def _example():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 8, 8, generator=generator) * 3
    target = torch.randint(0, 3, (2, 1, 8, 8), generator=generator)
    one_hot = F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).numpy()
    return logits, target, one_hot


def test_dice_bce_is_sigmoid_dice_plus_binary_cross_entropy_on_every_channel():
    logits, target, one_hot = _example()
    loss = build(compose_cfg(["experiment=synthetic_segmentation", "loss=dice_bce"]).loss, "loss")
    assert isinstance(loss, DiceBCELoss)
    probs = torch.sigmoid(logits).numpy()
    bce = log_loss(one_hot.ravel(), probs.ravel(), labels=[0, 1])
    dice = DiceLoss(include_background=False, to_onehot_y=True, sigmoid=True, batch=True)
    expected = float(dice(logits, target)) + bce
    assert np.isclose(float(loss(logits, target)), expected, rtol=1e-5)
    # not the softmax cross-entropy that MONAI's DiceCELoss(sigmoid=True) uses for 3 channels
    softmax_ce = float(F.cross_entropy(logits, target[:, 0]))
    assert not np.isclose(float(loss(logits, target)), float(dice(logits, target)) + softmax_ce)


def test_dice_bce_pos_weight_weighs_the_positive_pixels_of_each_class():
    logits, target, one_hot = _example()
    weights = np.array([1.0, 4.0, 0.5])
    loss = DiceBCELoss(pos_weight=weights.tolist(), lambda_dice=0.0)
    probs = torch.sigmoid(logits.double()).numpy()
    w = weights[None, :, None, None]
    expected = -(w * one_hot * np.log(probs) + (1 - one_hot) * np.log(1 - probs)).mean()
    assert np.isclose(float(loss(logits, target)), expected, rtol=1e-5)
    with pytest.raises(ConfigError, match="loss.pos_weight has 2 values for 3 classes"):
        DiceBCELoss(pos_weight=[1.0, 2.0])(logits, target)


@pytest.mark.parametrize(
    "name, extra",
    [
        ("dice_ce", []),
        ("dice", []),
        ("dice_focal", []),
        ("seg_focal", []),
        ("seg_focal", ["loss.include_background=false"]),
    ],
)
def test_class_weights_are_one_per_class_background_first_for_every_monai_loss(name, extra):
    """`loss.weight` is one value per class, background first, for each MONAI loss; each gets it in
    its own form (DiceCELoss: a tensor of every class; the others: the foreground's values when
    the background is left out), so weighting a class changes the loss as MONAI's own call does."""
    from monai import losses

    from medtrain.engine.build import build_task

    logits, target, _ = _example()
    key = "loss.weight" if name == "dice_ce" else "+loss.weight"
    cfg = compose_cfg(
        ["experiment=synthetic_segmentation", f"loss={name}", f"{key}=[0.5,1,3]", *extra]
    )
    mine = build_task(cfg).loss_fn(logits, target)
    settings = {k: v for k, v in cfg.loss.items() if k not in ("_target_", "weight")}
    without = settings.get("include_background", True) is False
    weight = (
        torch.tensor([0.5, 1.0, 3.0])
        if name == "dice_ce"
        else ([1.0, 3.0] if without else [0.5, 1.0, 3.0])
    )
    theirs = getattr(losses, cfg.loss._target_.rsplit(".", 1)[-1])(**settings, weight=weight)
    plain = compose_cfg(["experiment=synthetic_segmentation", f"loss={name}", *extra])
    unweighted = build(plain.loss, "l")
    assert float(mine) == pytest.approx(float(theirs(logits, target)), rel=1e-6)
    assert float(mine) != pytest.approx(float(unweighted(logits, target)), rel=1e-3)


def test_a_scalar_weight_of_dice_ce_is_refused_by_key():
    from medtrain.engine.config import check_against_data

    cfg = compose_cfg(["experiment=synthetic_segmentation", "loss=dice_ce", "loss.weight=2.0"])
    with pytest.raises(ConfigError, match=r"loss.weight=2.0: give one value per class"):
        check_against_data(cfg)
