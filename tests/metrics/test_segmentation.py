"""Segmentation metrics against MONAI, scikit-learn and hand computations."""

import math
import warnings

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, MeanIoU, compute_hausdorff_distance
from scipy import ndimage
from sklearn import metrics as skm

from medtrain.metrics import segmentation as SM

CLASSES = ["background", "liver", "tumour"]
# MONAI warns about classes that are empty in a mask (the conventions here are tested explicitly)
# and, from inside its own Hausdorff code, about one of its deprecated arguments.
pytestmark = [
    pytest.mark.filterwarnings("ignore:the (ground truth|prediction) of class"),
    pytest.mark.filterwarnings("ignore:monai.metrics.utils get_mask_edges:FutureWarning"),
]


def blob_mask(shape, seed, smoothing=3.0):
    """Class-index mask of random blobs; smoothing=0 gives speckle with very many edge pixels."""
    noise = np.random.default_rng(seed).normal(size=shape)
    if smoothing:
        noise = ndimage.gaussian_filter(noise, smoothing)
    noise /= noise.std()
    mask = np.zeros(shape, dtype=np.int64)
    mask[noise > 0.3] = 1
    mask[noise > 1.2] = 2
    return mask


def one_hot(mask, num_classes=len(CLASSES)):
    return torch.nn.functional.one_hot(torch.as_tensor(mask), num_classes).permute(2, 0, 1)[None]


def monai_hd95(pred, true, spacing=None):
    return compute_hausdorff_distance(
        one_hot(pred), one_hot(true), percentile=95, distance_metric="euclidean", spacing=spacing
    )[0].numpy()


@pytest.mark.parametrize("seed", range(4))
def test_dice_and_iou_match_monai(seed):
    pred, true = blob_mask((48, 40), seed), blob_mask((48, 40), seed + 50)
    if seed == 3:  # a class absent from both masks: MONAI with ignore_empty=False also gives 1
        pred[pred == 2], true[true == 2] = 1, 1
    m = SM.case_metrics(pred, true, CLASSES)
    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    iou = MeanIoU(include_background=False, reduction="none", ignore_empty=False)
    ref_dice = dice(one_hot(pred), one_hot(true))[0].numpy()
    ref_iou = iou(one_hot(pred), one_hot(true))[0].numpy()
    np.testing.assert_allclose([m["dice_liver"], m["dice_tumour"]], ref_dice, atol=1e-6)
    np.testing.assert_allclose([m["iou_liver"], m["iou_tumour"]], ref_iou, atol=1e-6)


def test_pixel_metrics_match_sklearn_on_flattened_masks():
    pred, true = blob_mask((64, 64), 1), blob_mask((64, 64), 2)
    m = SM.case_metrics(pred, true, CLASSES)
    for index, name in enumerate(CLASSES[1:], start=1):
        p, t = (pred == index).ravel(), (true == index).ravel()
        assert m[f"dice_{name}"] == pytest.approx(skm.f1_score(t, p))
        assert m[f"iou_{name}"] == pytest.approx(skm.jaccard_score(t, p))
        assert m[f"precision_{name}"] == pytest.approx(skm.precision_score(t, p))
        assert m[f"recall_{name}"] == pytest.approx(skm.recall_score(t, p))


# Distances come from a KD-tree or from the distance transform depending on how many edge pixels
# there are; force each way so that both are checked against MONAI on the same masks.
@pytest.mark.parametrize("method, pixels_per_point", [("kdtree", 0), ("edt", 10**12)])
@pytest.mark.parametrize("spacing", [None, (0.5, 1.0), (1.3, 0.7)])
@pytest.mark.parametrize("smoothing", [3.0, 0.0])
def test_hd95_matches_monai(monkeypatch, method, pixels_per_point, spacing, smoothing):
    monkeypatch.setattr(SM, "_KDTREE_PIXELS_PER_POINT", pixels_per_point)
    for seed in range(3):
        pred, true = blob_mask((50, 70), seed, smoothing), blob_mask((50, 70), seed + 9, smoothing)
        m = SM.case_metrics(pred, true, CLASSES, spacing=spacing)
        ours = [m["hd95_mm_liver"], m["hd95_mm_tumour"]]
        # MONAI computes in float32, hence the tolerance.
        np.testing.assert_allclose(ours, monai_hd95(pred, true, spacing), rtol=1e-5, atol=1e-5)
        pixel = [m["hd95_liver"], m["hd95_tumour"]]
        np.testing.assert_allclose(pixel, monai_hd95(pred, true), rtol=1e-5, atol=1e-5)


def test_hd95_in_pixels_equals_mm_without_spacing():
    pred, true = blob_mask((40, 40), 3), blob_mask((40, 40), 4)
    m = SM.case_metrics(pred, true, CLASSES)
    assert m["hd95_mm_liver"] == m["hd95_liver"]
    assert m["hd95_mm_tumour"] == m["hd95_tumour"]


def test_squares_shifted_by_three_pixels():
    # 10 x 10 squares; the prediction is 3 rows lower. Every edge pixel of one square is at most 3
    # rows from the other's edge, and more than 5% of them are exactly 3 rows away: HD95 = 3
    # pixels, = 1.5 mm with rows 0.5 mm apart. Overlap is 7 x 10 pixels.
    true = np.zeros((32, 32), dtype=np.int64)
    pred = np.zeros_like(true)
    true[10:20, 10:20] = 1
    pred[13:23, 10:20] = 1
    m = SM.case_metrics(pred, true, ["background", "square"], spacing=(0.5, 1.0))
    assert m["hd95_square"] == pytest.approx(3.0)
    assert m["hd95_mm_square"] == pytest.approx(1.5)
    assert m["dice_square"] == pytest.approx(2 * 70 / 200)
    assert m["iou_square"] == pytest.approx(70 / 130)
    assert m["precision_square"] == m["recall_square"] == pytest.approx(0.7)
    # Shifted along columns instead, the 3-pixel gap is 3 mm.
    pred = np.zeros_like(true)
    pred[10:20, 13:23] = 1
    m = SM.case_metrics(pred, true, ["background", "square"], spacing=(0.5, 1.0))
    assert m["hd95_square"] == pytest.approx(3.0)
    assert m["hd95_mm_square"] == pytest.approx(3.0)


def test_empty_mask_conventions():
    empty = np.zeros((16, 16), dtype=np.int64)
    blob = empty.copy()
    blob[4:9, 4:9] = 1
    names = ["background", "lesion"]

    both = SM.case_metrics(empty, empty, names)
    assert both["dice_lesion"] == both["iou_lesion"] == 1.0
    for key in ("hd95_lesion", "hd95_mm_lesion", "precision_lesion", "recall_lesion"):
        assert math.isnan(both[key])

    missed = SM.case_metrics(empty, blob, names)  # nothing predicted
    assert missed["dice_lesion"] == missed["iou_lesion"] == 0.0
    assert math.isnan(missed["hd95_lesion"]) and math.isnan(missed["hd95_mm_lesion"])
    assert math.isnan(missed["precision_lesion"]) and missed["recall_lesion"] == 0.0

    spurious = SM.case_metrics(blob, empty, names)  # predicted where there is nothing
    assert spurious["dice_lesion"] == spurious["iou_lesion"] == 0.0
    assert math.isnan(spurious["hd95_lesion"])
    assert spurious["precision_lesion"] == 0.0 and math.isnan(spurious["recall_lesion"])


def test_case_metrics_keys_cover_foreground_classes_only():
    m = SM.case_metrics(blob_mask((20, 20), 0), blob_mask((20, 20), 1), CLASSES)
    expected = {f"{metric}_{name}" for metric in SM.METRIC_NAMES for name in CLASSES[1:]}
    assert set(m) == expected


def test_summarize_ignores_nan_and_averages_classes():
    nan = float("nan")
    names = ["background", "a", "b"]

    def row(dice_a, dice_b, hd_a, hd_b):
        values = {"dice": (dice_a, dice_b), "hd95": (hd_a, hd_b)}
        out = {}
        for metric in SM.METRIC_NAMES:
            a, b = values.get(metric.removesuffix("_mm"), (nan, nan))
            out |= {f"{metric}_a": a, f"{metric}_b": b}
        return out

    rows = [row(0.8, 1.0, 2.0, nan), row(0.6, 0.5, nan, nan), row(0.4, 0.0, 4.0, nan)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-NaN column must not warn
        s = SM.summarize(rows, names)
    assert s["dice_a"] == pytest.approx(0.6)
    assert s["dice_b"] == pytest.approx(0.5)
    assert s["dice"] == pytest.approx(0.55)
    assert s["hd95_a"] == pytest.approx(3.0) and s["hd95_mm_a"] == pytest.approx(3.0)
    assert math.isnan(s["hd95_b"])
    assert s["hd95"] == pytest.approx(3.0)  # the class never defined is left out of the mean
    assert math.isnan(s["precision"]) and math.isnan(s["recall_a"])
    expected = {f"{m}_{n}" for m in SM.METRIC_NAMES for n in ("a", "b")} | set(SM.METRIC_NAMES)
    assert set(s) == expected


def test_summarize_of_case_metrics_matches_nanmean():
    rows = [
        SM.case_metrics(blob_mask((24, 24), s), blob_mask((24, 24), s + 7), CLASSES)
        for s in range(5)
    ]
    s = SM.summarize(rows, CLASSES)
    for key in rows[0]:
        assert s[key] == pytest.approx(np.nanmean([r[key] for r in rows]), nan_ok=True)
    assert s["dice"] == pytest.approx((s["dice_liver"] + s["dice_tumour"]) / 2)


def test_full_size_image():
    # A 512 x 512 image, as from the product, with large smooth structures.
    pred, true = blob_mask((512, 512), 5, smoothing=24), blob_mask((512, 512), 6, smoothing=24)
    m = SM.case_metrics(pred, true, CLASSES, spacing=(0.7, 0.7))
    assert all(np.isfinite(v) for v in m.values())
    np.testing.assert_allclose(
        [m["hd95_mm_liver"], m["hd95_mm_tumour"]], monai_hd95(pred, true, (0.7, 0.7)), rtol=1e-5
    )


def test_invalid_inputs():
    mask = np.zeros((8, 8), dtype=np.int64)
    with pytest.raises(ValueError, match="same shape"):
        SM.case_metrics(mask, np.zeros((8, 9), dtype=np.int64), CLASSES)
    with pytest.raises(ValueError, match="spacing"):
        SM.case_metrics(mask, mask, CLASSES, spacing=(1.0, 0.0))


@pytest.mark.parametrize("spacing", [None, (2.0, 0.5, 0.75)])
def test_3d_volumes_match_monai(spacing):
    """Volumes (slices reassembled) use the same definitions over voxels."""
    pred, true = blob_mask((12, 20, 16), 7, 2.0), blob_mask((12, 20, 16), 8, 2.0)
    m = SM.case_metrics(pred, true, CLASSES, spacing)

    def hot(mask):
        return torch.nn.functional.one_hot(torch.as_tensor(mask), 3).permute(3, 0, 1, 2)[None]

    dice = DiceMetric(include_background=False, reduction="none", ignore_empty=False)
    ref_dice = dice(hot(pred), hot(true))[0].numpy()
    ref_hd = compute_hausdorff_distance(
        hot(pred), hot(true), percentile=95, distance_metric="euclidean", spacing=spacing
    )[0].numpy()
    np.testing.assert_allclose([m["dice_liver"], m["dice_tumour"]], ref_dice, atol=1e-6)
    np.testing.assert_allclose([m["hd95_mm_liver"], m["hd95_mm_tumour"]], ref_hd, atol=1e-5)
