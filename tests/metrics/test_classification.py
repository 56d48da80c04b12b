"""Metrics and thresholds against scikit-learn and hand computations."""

import numpy as np
import pytest
from sklearn import metrics as skm

from medtrain.metrics import classification as M


def test_binary_metrics_match_sklearn_and_hand_counts():
    target = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    prob = np.array([0.1, 0.4, 0.35, 0.8, 0.7, 0.9, 0.2, 0.6, 0.55, 0.45])
    m = M.binary_metrics(target, prob, threshold=0.5)
    # By hand: predictions >= 0.5 -> [0,0,0,1,1,1,0,1,1,0]: TP=4, FN=2, TN=3, FP=1.
    assert m["acc"] == pytest.approx(7 / 10)
    assert m["sensitivity"] == pytest.approx(4 / 6)
    assert m["specificity"] == pytest.approx(3 / 4)
    assert m["balanced_acc"] == pytest.approx((4 / 6 + 3 / 4) / 2)
    assert m["f1"] == pytest.approx(2 * 4 / (2 * 4 + 1 + 2))
    assert m["auc"] == pytest.approx(skm.roc_auc_score(target, prob))
    assert M.binary_metrics(target, prob, threshold=0.3)["acc"] == pytest.approx(6 / 10)


def test_multiclass_metrics_match_sklearn():
    rng = np.random.default_rng(0)
    target = rng.integers(0, 3, 200)
    logits = rng.normal(size=(200, 3)) + 2 * np.eye(3)[target]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    m = M.multiclass_metrics(target, probs, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(skm.roc_auc_score(target, probs, multi_class="ovr"))
    assert m["acc"] == pytest.approx(skm.accuracy_score(target, probs.argmax(1)))
    assert m["f1"] == pytest.approx(skm.f1_score(target, probs.argmax(1), average="macro"))
    assert m["auc_b"] == pytest.approx(skm.roc_auc_score(target == 1, probs[:, 1]))
    cm = skm.confusion_matrix(target, probs.argmax(1))
    spec_a = cm[1:, 1:].sum() / cm[1:, :].sum()
    assert m["specificity_a"] == pytest.approx(spec_a)


def test_multiclass_auc_with_a_class_missing_from_targets_is_finite():
    target = np.array([0, 1, 0, 1])
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    m = M.multiclass_metrics(target, probs, ["a", "b", "c"])
    assert m["auc"] == pytest.approx(1.0)
    assert np.isnan(m["auc_c"])
    # F1 over the classes in the targets or predictions, as sensitivity leaves the absent out:
    # 1.0 here, not (1 + 1 + 0) / 3 for a class nobody had or was called.
    assert m["f1"] == pytest.approx(1.0) == skm.f1_score(target, probs.argmax(1), average="macro")
    probs[0] = [0.1, 0.1, 0.8]  # one case called c, which no case is: its F1 of 0 counts
    m = M.multiclass_metrics(target, probs, ["a", "b", "c"])
    assert m["f1"] == pytest.approx(skm.f1_score(target, probs.argmax(1), average="macro"))
    assert m["f1"] == pytest.approx((2 / 3 + 1 + 0) / 3)


def test_multilabel_metrics_average_labels():
    rng = np.random.default_rng(1)
    target = rng.integers(0, 2, (100, 4))
    probs = np.clip(target * 0.6 + rng.uniform(0, 0.5, (100, 4)), 0, 1)
    m = M.multilabel_metrics(target, probs, [0.5] * 4, ["w", "x", "y", "z"])
    assert m["auc"] == pytest.approx(skm.roc_auc_score(target, probs, average="macro"))
    per_label_acc = [skm.accuracy_score(target[:, k], probs[:, k] >= 0.5) for k in range(4)]
    assert m["acc"] == pytest.approx(np.mean(per_label_acc))
    assert m["subset_acc"] == pytest.approx(skm.accuracy_score(target, probs >= 0.5))


def test_youden_threshold_maximises_sensitivity_plus_specificity():
    target = np.array([0, 0, 0, 0, 1, 1, 1])
    prob = np.array([0.1, 0.2, 0.3, 0.65, 0.6, 0.8, 0.9])
    t = M.choose_threshold(target, prob, "youden")
    # By hand: at 0.8, J = 2/3 - 0 = 0.667; at 0.6, J = 1 - 1/4 = 0.75 (the best); at 0.3, J = 1 - 2/4.
    assert t == pytest.approx(0.6)
    m = M.binary_metrics(target, prob, t)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(0.75)


def test_a_threshold_rule_on_one_class_says_it_falls_back_to_one_half(caplog):
    with caplog.at_level("WARNING"):
        assert M.choose_threshold(np.zeros(5), np.linspace(0, 1, 5), "youden") == 0.5
    assert "threshold youden: the validation targets hold one class" in caplog.text
    # Every positive ranked below every negative (AUC 0): no threshold beats chance, and the
    # "best" J of 0 would call no case positive (threshold 1.0); 0.5 instead, said.
    caplog.clear()
    with caplog.at_level("WARNING"):
        assert (
            M.choose_threshold(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.8, 0.9]), "youden")
            == 0.5
        )
    assert "no threshold separates the classes better than chance" in caplog.text
    assert "AUC 0.000" in caplog.text


def test_sensitivity_threshold_reaches_target():
    rng = np.random.default_rng(2)
    target = rng.integers(0, 2, 500)
    prob = np.clip(0.3 * target + rng.uniform(0, 0.7, 500), 0, 1)
    t = M.choose_threshold(target, prob, "sensitivity", target_sensitivity=0.95)
    sens = M.binary_metrics(target, prob, t)["sensitivity"]
    assert sens >= 0.95
    # The highest threshold that reaches it: any higher one falls short.
    assert M.binary_metrics(target, prob, t + 1e-9)["sensitivity"] < 0.95


def test_confusion_matrix_uses_threshold_for_binary():
    target = np.array([0, 1, 1])
    probs = np.array([[0.6, 0.4], [0.7, 0.3], [0.2, 0.8]])
    assert M.confusion(target, probs, False, 0.5).tolist() == [[1, 0], [1, 1]]
    assert M.confusion(target, probs, False, 0.25).tolist() == [[0, 1], [0, 2]]


def test_targets_of_one_class_give_undefined_metrics_quietly():
    """`medtrain evaluate` on cases of one class leaked numpy's "Mean of empty slice" (the macro
    AUC of classes that are each all present or all absent) and scikit-learn's warnings; the
    binary specificity of positive cases alone read 0.0. Undefined is NaN (null in JSON)."""
    import warnings

    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        many = M.multiclass_metrics(np.zeros(4, int), probs, ["a", "b", "c"])
        labels = M.multilabel_metrics(np.ones((4, 2), int), probs[:, :2], [0.5, 0.5], ["a", "b"])
        binary = M.binary_metrics(np.ones(4, int), probs[:, 0], 0.5)
        none_called = M.binary_metrics(np.ones(4, int), np.full(4, 0.9), 0.5)
    assert np.isnan(many["auc"]) and all(np.isnan(many[f"auc_{n}"]) for n in "abc")
    assert many["sensitivity"] == pytest.approx(2 / 4) == many["balanced_acc"]
    assert many["specificity"] == pytest.approx(3 / 4)  # of b and c: a has no negatives
    assert np.isnan(labels["auc"]) and np.isnan(labels["specificity"])
    assert labels["sensitivity"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert np.isnan(binary["auc"]) and np.isnan(binary["specificity"])
    assert binary["sensitivity"] == pytest.approx(2 / 4) == binary["balanced_acc"]
    assert none_called["balanced_acc"] == 1.0 and np.isnan(none_called["specificity"])


def test_a_class_without_cases_has_no_sensitivity_and_one_never_seen_no_f1():
    """Targets of classes a and b only, of a, b, c: sensitivity_c read 0 (while auc_c was NaN)."""
    probs = np.array([[0.7, 0.2, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.2, 0.7]])
    out = M.multiclass_metrics(np.array([0, 0, 1, 1]), probs, ["a", "b", "c"])
    assert np.isnan(out["sensitivity_c"]) and np.isnan(out["auc_c"])
    assert out["f1_c"] == 0.0  # predicted once, never true: a real 0
    pred = probs.argmax(axis=1)
    assert (
        out["sensitivity_a"] == skm.recall_score([0, 0, 1, 1], pred, labels=[0, 1], average=None)[0]
    )
    never = M.multiclass_metrics(np.array([0, 0, 1, 1]), probs[:, [0, 1, 1]] * [1, 1, 0], "abc")
    assert np.isnan(never["f1_c"]) and np.isnan(never["sensitivity_c"])
