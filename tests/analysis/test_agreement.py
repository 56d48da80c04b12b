"""Count and area agreement against hand computations with numpy."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from medtrain.analysis.agreement import bland_altman, measurement_agreement
from medtrain.analysis.measurements import TOTAL_FIELDS
from medtrain.errors import DataError
from medtrain.io import save_csv, save_json

IDS = ["a", "b", "c", "d"]
TRUE_COUNTS = [4, 0, 10, 2]
PRED_COUNTS = [5, 1, 7, 2]
TRUE_AREAS = [40.0, 0.0, 120.0, 10.0]
PRED_AREAS = [44.0, 3.0, 90.0, 12.5]


def table(counts, areas, source, klass="nucleus", unit="mm"):
    return [
        {
            "id": i,
            "source": source,
            "class": klass,
            "count": n,
            "total_area_px": 0,
            "total_area_mm2": a,
            "mean_area_mm2": a / n if n else "",
            "unit": unit,
        }
        for i, n, a in zip(IDS, counts, areas, strict=True)
    ]


def test_per_image_entries():
    result = measurement_agreement(
        table(TRUE_COUNTS, TRUE_AREAS, "true"), table(PRED_COUNTS, PRED_AREAS, "pred")
    )
    assert result["unit"] == "mm"
    images = result["classes"]["nucleus"]["images"]
    assert [e["id"] for e in images] == IDS
    assert images[0] == {
        "id": "a",
        "count_true": 4,
        "count_pred": 5,
        "count_error": 1,
        "count_error_relative": 0.25,
        "area_true_mm2": 40.0,
        "area_pred_mm2": 44.0,
        "area_error_mm2": 4.0,
        "area_error_relative": pytest.approx(0.1),
    }
    assert images[1]["count_error_relative"] is None  # nothing to be relative to
    assert images[1]["area_error_relative"] is None
    assert images[2]["count_error"] == -3


def test_summary_matches_numpy():
    result = measurement_agreement(
        table(TRUE_COUNTS, TRUE_AREAS, "true"), table(PRED_COUNTS, PRED_AREAS, "pred")
    )
    summary = result["classes"]["nucleus"]["summary"]
    t, p = np.array(TRUE_COUNTS, float), np.array(PRED_COUNTS, float)
    ta, pa = np.array(TRUE_AREAS), np.array(PRED_AREAS)
    nonzero = t > 0
    assert summary["n_images"] == 4
    assert summary["n_images_with_true_objects"] == 3
    assert summary["count_mean_absolute_error"] == pytest.approx(np.mean(np.abs(p - t)))
    assert summary["count_mean_error"] == pytest.approx(np.mean(p - t))
    assert summary["count_median_absolute_relative_error"] == pytest.approx(
        np.median(np.abs(p - t)[nonzero] / t[nonzero])
    )
    assert summary["area_mean_absolute_error_mm2"] == pytest.approx(np.mean(np.abs(pa - ta)))
    assert summary["area_mean_absolute_relative_error"] == pytest.approx(
        np.mean(np.abs(pa - ta)[ta > 0] / ta[ta > 0])
    )
    for key, diff in (("count_bland_altman", p - t), ("area_bland_altman_mm2", pa - ta)):
        mean, sd = diff.mean(), diff.std(ddof=1)
        assert summary[key] == pytest.approx(
            {
                "mean_difference": mean,
                "sd_difference": sd,
                "lower_limit": mean - 1.96 * sd,
                "upper_limit": mean + 1.96 * sd,
            }
        )


def test_rows_read_back_from_csv_and_strict_json(tmp_path):
    save_csv(tmp_path / "true.csv", table(TRUE_COUNTS, TRUE_AREAS, "true"), TOTAL_FIELDS)
    save_csv(tmp_path / "pred.csv", table(PRED_COUNTS, PRED_AREAS, "pred"), TOTAL_FIELDS)
    with open(tmp_path / "true.csv") as f_true, open(tmp_path / "pred.csv") as f_pred:
        result = measurement_agreement(list(csv.DictReader(f_true)), list(csv.DictReader(f_pred)))
    direct = measurement_agreement(
        table(TRUE_COUNTS, TRUE_AREAS, "true"), table(PRED_COUNTS, PRED_AREAS, "pred")
    )
    assert result == direct
    save_json(tmp_path / "agreement.json", result)
    text = (tmp_path / "agreement.json").read_text()
    assert "NaN" not in text
    assert json.loads(text)["classes"]["nucleus"]["images"][1]["count_error_relative"] is None


def test_one_image_and_no_true_objects_give_nulls():
    truth = table(TRUE_COUNTS, TRUE_AREAS, "true")[1:2]  # image b: nothing there
    pred = table(PRED_COUNTS, PRED_AREAS, "pred")[1:2]
    summary = measurement_agreement(truth, pred)["classes"]["nucleus"]["summary"]
    assert summary["count_median_absolute_relative_error"] is None
    assert summary["area_mean_absolute_relative_error"] is None
    assert summary["count_bland_altman"] == {
        "mean_difference": 1.0,
        "sd_difference": None,
        "lower_limit": None,
        "upper_limit": None,
    }


def test_classes_are_summarised_separately():
    truth = table(TRUE_COUNTS, TRUE_AREAS, "true") + table([1] * 4, [1.0] * 4, "true", "cell")
    pred = table(PRED_COUNTS, PRED_AREAS, "pred") + table([1] * 4, [1.0] * 4, "pred", "cell")
    result = measurement_agreement(truth, pred)
    assert list(result["classes"]) == ["nucleus", "cell"]
    cell = result["classes"]["cell"]["summary"]
    assert cell["count_mean_absolute_error"] == 0.0
    assert cell["count_bland_altman"]["sd_difference"] == 0.0


def test_mismatched_images_and_units_are_refused():
    truth = table(TRUE_COUNTS, TRUE_AREAS, "true")
    with pytest.raises(DataError, match="different images"):
        measurement_agreement(truth, table(PRED_COUNTS, PRED_AREAS, "pred")[:3])
    with pytest.raises(DataError, match="different units"):
        measurement_agreement(truth, table(PRED_COUNTS, PRED_AREAS, "pred", unit="px"))
    with pytest.raises(DataError, match="twice"):
        measurement_agreement(truth + truth[:1], table(PRED_COUNTS, PRED_AREAS, "pred"))


def test_bland_altman_of_nothing_is_null():
    assert set(bland_altman([]).values()) == {None}
