"""Losses against torch's own implementations and the focal-loss formula."""

import pytest
import torch
import torch.nn.functional as F

from medtrain.losses import BCEWithLogits, CrossEntropy, FocalLoss


def test_cross_entropy_weights_and_smoothing_match_torch():
    logits, target = torch.randn(8, 3), torch.randint(0, 3, (8,))
    loss = CrossEntropy(class_weights=[1.0, 2.0, 0.5], label_smoothing=0.1)(logits, target)
    expected = F.cross_entropy(
        logits, target, weight=torch.tensor([1.0, 2.0, 0.5]), label_smoothing=0.1
    )
    assert loss.item() == pytest.approx(expected.item())


def test_bce_pos_weight_and_integer_targets():
    logits, target = torch.randn(6, 4), torch.randint(0, 2, (6, 4)).float()
    pos_weight = torch.tensor([1.0, 3.0, 0.5, 2.0])
    loss = BCEWithLogits(pos_weight=pos_weight.tolist())(logits, target)
    assert loss.item() == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight).item()
    )
    # Class-index targets are one-hot encoded for a 2-output binary head.
    idx = torch.tensor([0, 1, 1])
    two = torch.randn(3, 2)
    assert BCEWithLogits()(two, idx).item() == pytest.approx(
        F.binary_cross_entropy_with_logits(two, F.one_hot(idx, 2).float()).item()
    )


def test_focal_with_gamma_zero_is_cross_entropy():
    logits, target = torch.randn(10, 5), torch.randint(0, 5, (10,))
    assert FocalLoss(gamma=0)(logits, target).item() == pytest.approx(
        F.cross_entropy(logits, target).item(), rel=1e-5
    )


def test_focal_matches_formula_for_softmax_and_sigmoid():
    logits, target = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0])
    p = torch.softmax(logits, 1)[torch.arange(2), target]
    expected = (-((1 - p) ** 2) * p.log()).mean()
    assert FocalLoss(gamma=2)(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)
    ml_logits, ml_target = torch.tensor([[1.5, -0.5]]), torch.tensor([[1.0, 0.0]])
    p_true = torch.tensor([torch.sigmoid(torch.tensor(1.5)), 1 - torch.sigmoid(torch.tensor(-0.5))])
    expected_ml = (-((1 - p_true) ** 2) * p_true.log()).mean()
    assert FocalLoss(gamma=2)(ml_logits, ml_target).item() == pytest.approx(
        expected_ml.item(), rel=1e-5
    )


def test_focal_alpha_weighs_classes_and_labels_and_stays_positive():
    logits, target = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    unweighted = FocalLoss(gamma=2, alpha=None)
    per_sample = (
        -((1 - torch.softmax(logits, 1)[torch.arange(6), target]) ** 2)
        * torch.log_softmax(logits, 1)[torch.arange(6), target]
    )
    weights = torch.tensor([1.0, 3.0, 0.5])
    assert FocalLoss(gamma=2, alpha=weights.tolist())(logits, target).item() == pytest.approx(
        (per_sample * weights[target]).mean().item(), rel=1e-5
    )
    assert unweighted(logits, target).item() == pytest.approx(per_sample.mean().item(), rel=1e-5)
    multi_hot = torch.zeros(4, 2)  # all negative: every term must stay >= 0 whatever the weights
    assert FocalLoss(alpha=[1.0, 3.0])(torch.randn(4, 2), multi_hot).item() >= 0
