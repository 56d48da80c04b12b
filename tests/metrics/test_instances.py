"""Instance metrics and instance separation: hand-made cases, an independent computation and
MONAI's panoptic quality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medtrain.analysis.instances import check_instances, contact_pixels, separate_instances
from medtrain.errors import ConfigError
from medtrain.metrics.instances import (
    IOU_THRESHOLDS,
    instance_metrics,
    iou_matrix,
    summarize_instances,
)


def disc(shape, centre, radius):
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def brute_force_score(true: np.ndarray, pred: np.ndarray) -> float:
    """The competition's score object by object, with boolean masks and no shortcuts."""
    true_ids = [t for t in np.unique(true) if t]
    pred_ids = [p for p in np.unique(pred) if p]
    if not true_ids and not pred_ids:
        return 1.0
    scores = []
    for threshold in np.arange(0.5, 1.0, 0.05):
        hits = 0
        for t in true_ids:
            for p in pred_ids:
                a, b = true == t, pred == p
                if (a & b).sum() / (a | b).sum() > threshold:
                    hits += 1
        scores.append(hits / (hits + (len(pred_ids) - hits) + (len(true_ids) - hits)))
    return float(np.mean(scores))


def test_thresholds_are_the_competitions():
    assert IOU_THRESHOLDS == (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def test_a_missed_and_a_spurious_object_by_hand():
    true = np.zeros((40, 40), np.int32)
    true[2:12, 2:12] = 1  # A: 100 px, found with IoU 80 / 120
    true[20:30, 20:30] = 2  # B: 100 px, missed
    pred = np.zeros_like(true)
    pred[4:14, 2:12] = 7  # A', shifted by 2 rows: 80 px shared, union 120
    pred[30:35, 2:7] = 3  # C: spurious
    iou = iou_matrix(true, pred)
    assert iou.shape == (2, 2)  # rows A, B; columns C (label 3), A' (label 7)
    assert iou[0, 1] == pytest.approx(80 / 120) and iou[0, 0] == 0 and iou[1].max() == 0
    m = instance_metrics(true, pred)
    # IoU 0.667 beats the thresholds 0.50-0.65 (TP 1, FP 1, FN 1: 1/3), none above.
    assert m["instance_score"] == pytest.approx(4 * (1 / 3) / 10)
    assert m["rq"] == pytest.approx(1 / (1 + 0.5 + 0.5))
    assert m["sq"] == pytest.approx(80 / 120)
    assert m["pq"] == pytest.approx(0.5 * 80 / 120)
    assert (m["count_true"], m["count_pred"], m["count_abs_rel_error"]) == (2, 2, 0)
    assert m["instance_score"] == pytest.approx(brute_force_score(true, pred))


def test_empty_images_and_perfect_predictions():
    empty = np.zeros((8, 8), np.int32)
    nothing = instance_metrics(empty, empty)  # nothing to score: left out of the means
    assert all(np.isnan(nothing[k]) for k in ("instance_score", "pq", "sq", "rq"))
    one = empty.copy()
    one[2:5, 2:5] = 4
    assert instance_metrics(one, empty)["instance_score"] == 0.0
    assert instance_metrics(empty, one)["pq"] == 0.0
    assert np.isnan(instance_metrics(empty, one)["count_abs_rel_error"])
    perfect = instance_metrics(one, one * 3)  # other numbers, the same object
    assert perfect["instance_score"] == perfect["pq"] == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_random_label_images_agree_with_an_independent_computation_and_monai(seed):
    from monai.metrics import compute_panoptic_quality

    rng = np.random.default_rng(seed)
    true = np.zeros((64, 64), np.int32)
    pred = np.zeros_like(true)
    for label in range(1, 9):
        centre, radius = rng.integers(6, 58, 2), int(rng.integers(3, 7))
        true[disc(true.shape, centre, radius)] = label
        if rng.random() < 0.8:  # found, slightly moved and resized
            moved = centre + rng.integers(-2, 3, 2)
            pred[disc(true.shape, moved, radius + int(rng.integers(-1, 2)))] = label + 10
    for label in range(2):  # spurious objects
        pred[disc(true.shape, rng.integers(6, 58, 2), 3)] = 30 + label
    m = instance_metrics(true, pred)
    assert m["instance_score"] == pytest.approx(brute_force_score(true, pred))
    pq = compute_panoptic_quality(torch.from_numpy(pred), torch.from_numpy(true), metric_name="pq")
    assert m["pq"] == pytest.approx(float(pq), abs=1e-5)  # MONAI adds 1e-6 to denominators


def test_summary_averages_images_and_takes_the_median_count_error():
    rows = [
        {"instance_score": 0.5, "pq": 0.4, "sq": 0.8, "rq": 0.5, "count_abs_rel_error": 0.1},
        {"instance_score": 0.7, "pq": 0.6, "sq": 0.9, "rq": 0.7, "count_abs_rel_error": 0.2},
        {"instance_score": 0.6, "pq": 0.5, "sq": 0.9, "rq": 0.6, "count_abs_rel_error": 0.9},
        {"instance_score": np.nan, "pq": np.nan, "sq": np.nan, "rq": np.nan},  # an empty image
    ]
    s = summarize_instances(rows)
    assert s["instance_score"] == pytest.approx(0.6)  # NaN left out
    assert s["count_abs_rel_error"] == pytest.approx(0.4)  # the mean
    assert s["count_median_abs_rel_error"] == pytest.approx(0.2)  # the median


def test_two_touching_discs_are_split_in_two_by_the_watershed():
    mask = disc((40, 60), (20, 20), 10) | disc((40, 60), (20, 38), 10)
    assert separate_instances(mask, "components").max() == 1  # merged
    labels = separate_instances(mask, "watershed", h=2.0)
    assert labels.max() == 2
    left, right = labels[20, 20], labels[20, 38]
    assert left and right and left != right
    assert (labels > 0).sum() == mask.sum()  # every object pixel is kept
    # Each half holds about its disc (the cut runs along the neck).
    assert abs(int((labels == left).sum()) - int(disc((40, 60), (20, 20), 10).sum())) < 40


def test_small_objects_without_a_peak_stay_objects_and_counts_match_a_hand_count():
    mask = np.zeros((30, 30), bool)
    mask[2:4, 2:4] = True  # 2 x 2: no distance peak of height 2
    mask[10:20, 10:20] = True
    mask[25, 25] = True
    for method in ("components", "watershed"):
        labels = separate_instances(mask, method, h=2.0)
        assert labels.max() == 3, method
        assert (labels > 0).sum() == mask.sum()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"method": "stardist"}, "task.instances.method='stardist'"),
        ({"h": 0}, "task.instances.h=0"),
        ({"method": "contacts", "threshold": 1.0}, r"task.instances.threshold=1.0: .* \(0, 1\)"),
        ({"method": "contacts", "threshold": True}, "task.instances.threshold=True"),
        ({"method": "watershed", "depth": 2}, "unknown keys"),
        ("watershed", r"task.instances='watershed': give \{method: watershed"),
    ],
)
def test_bad_instance_settings_name_the_key(settings, message):
    with pytest.raises(ConfigError, match=message):
        check_instances(settings)


def test_contact_pixels_mark_where_objects_touch_by_hand():
    labels = np.zeros((6, 12), np.uint16)
    labels[1:5, 1:4] = 1
    labels[1:5, 4:7] = 300  # touches 1 along columns 3 | 4
    labels[1:3, 8:10] = 2  # one background column away from 300: not touching
    want = np.zeros(labels.shape, bool)
    want[1:5, 3:5] = True  # the two columns on either side of the meeting line
    np.testing.assert_array_equal(contact_pixels(labels), want)
    # Two pixels away, the object beyond the gap counts (and 2's own contact pixels with it).
    wide = contact_pixels(labels, width=2)
    assert wide[1:5, 2:7].all() and wide[1:3, 8].all() and not wide[1:3, 9].any()
    assert not contact_pixels(np.where(labels == 1, 1, 0)).any()  # one object alone: none
    diagonal = np.zeros((4, 4), int)
    diagonal[0:2, 0:2], diagonal[2:4, 2:4] = 1, 2  # corners meet: 8-connected neighbours
    assert contact_pixels(diagonal).sum() == 2 and contact_pixels(diagonal)[1, 1]


def test_learned_contacts_split_what_the_outline_cannot_and_keep_every_pixel():
    truth = np.zeros((40, 60), np.int32)
    truth[10:30, 10:30], truth[10:30, 30:50] = 1, 2  # two squares side by side: no neck
    mask = truth > 0
    assert separate_instances(mask, "watershed", h=1.0, sigma=1.0).max() == 1  # one rectangle
    contact = contact_pixels(truth).astype(np.float32) * 0.9  # a confident contact map
    labels = separate_instances(mask, "contacts", contact=contact, h=1.0, sigma=1.0)
    assert labels.max() == 2 and (labels > 0).sum() == mask.sum()
    assert labels[20, 15] != labels[20, 45]
    assert instance_metrics(truth, labels)["instance_score"] >= 0.9
    # Below the threshold the contact cuts nothing; a mask that is all contact stays one object.
    assert separate_instances(mask, "contacts", contact=contact, threshold=0.95).max() == 1
    assert separate_instances(mask, "contacts", contact=np.ones(mask.shape)).max() == 1
    with pytest.raises(ValueError, match="contact probability map of the mask's shape"):
        separate_instances(mask, "contacts")
