"""Encoding of clinical columns: statistics from the training rows only."""

import numpy as np
import pytest

from medtrain.data.tabular import TabularEncoder, encode_tabular, is_missing, with_unit
from medtrain.errors import DataError


def test_numbers_are_standardised_with_training_rows_only():
    ages = [50.0, 60.0, 70.0, 100.0, 5.0]
    columns = {"age": [str(a) for a in ages]}
    train = [0, 1, 2]
    matrix, names = encode_tabular(columns, train, source="cases.csv")
    reference = np.array(ages)[train]
    expected = (np.array(ages) - reference.mean()) / reference.std()
    assert names == ["age"]
    assert matrix.dtype == np.float32 and matrix.shape == (5, 1)
    np.testing.assert_allclose(matrix[:, 0], expected, rtol=1e-6)


def test_constant_column_keeps_unit_scale():
    matrix, _ = encode_tabular({"x": ["3", "3", "4"]}, [0, 1])
    np.testing.assert_allclose(matrix[:, 0], [0.0, 0.0, 1.0])


def test_categories_are_one_hot_sorted_and_unseen_gives_zeros():
    columns = {"sex": ["M", "F", "M", "X", ""]}
    encoder = TabularEncoder().fit(columns, rows=[0, 1, 2])
    assert encoder.names == ["sex=F", "sex=M"]
    matrix = encoder.transform(columns)
    np.testing.assert_array_equal(matrix, [[0, 1], [1, 0], [0, 1], [0, 0], [0, 0]])
    np.testing.assert_array_equal(encoder.transform(columns, rows=[1]), [[1, 0]])
    # The unseen category of a val or test row is said (predict and the service refuse it).
    assert encoder.warnings == {
        "sex:unseen": "tabular data: column 'sex' holds categories that no training row holds "
        "in 1 other row(s) (row 3: 'X'; training: F, M): they are encoded as missing, while "
        "medtrain predict and the service refuse them; correct a misspelt category, or leave "
        "the cell empty (or NA) for a missing value"
    }


def test_unseen_categories_of_a_manifest_are_a_data_check_warning(tmp_path):
    """A misspelt category in the val and test rows (`f` for `F`) was trained and scored as
    missing without a word, while evaluate and predict refuse the same rows."""
    from medtrain.data.validation import built_warnings
    from medtrain.engine.build import build_datasets
    from tests.conftest import compose_cfg
    from tests.data.test_manifest import make_cases

    sexes = ["F", "M"] * 10
    splits = ["train"] * 14 + ["val"] * 3 + ["test"] * 3
    sexes[15], sexes[18] = "f", "male"
    csv_path = make_cases(tmp_path, [i % 2 for i in range(20)], {"sex": sexes, "split": splits})
    cfg = compose_cfg(
        ["dataset=manifest", f"dataset.path={csv_path}", "dataset.image_size=16"]
        + ["dataset.tabular_columns=[sex]"]
    )
    said = built_warnings(build_datasets(cfg))
    assert said["categories_of:sex:unseen"].startswith(
        f"{csv_path}: column 'sex' holds categories that no training row holds in 2 other "
        "row(s) (line 17: 'f'; line 20: 'male'; training: F, M)"
    )


def test_missing_numbers_get_the_mean_and_an_indicator():
    columns = {"age": ["40", "NA", "60", "", "nan"], "bmi": ["20", "22", "24", "26", "28"]}
    matrix, names = encode_tabular(columns, [0, 1, 2, 3])
    assert names == ["age", "age_missing", "bmi"]
    mean, std = np.mean([40, 60]), np.std([40, 60])
    np.testing.assert_allclose(matrix[:, 0], [(40 - mean) / std, 0, (60 - mean) / std, 0, 0])
    np.testing.assert_array_equal(matrix[:, 1], [0, 1, 0, 1, 1])
    assert all(is_missing(v) for v in ["", " NA ", "NaN", "NULL", "null"])


def test_indicator_only_where_a_value_is_missing_in_some_row():
    # Missing only in a test row: still flagged, so every split has the same columns.
    _, names = encode_tabular({"age": ["1", "2", "3", "null"]}, [0, 1, 2])
    assert names == ["age", "age_missing"]


def test_bad_numbers_in_non_training_rows_are_named_together():
    """Every bad cell of every numeric column in one error (they came one per run)."""
    columns = {"age": ["40", "50", "sixty", "unknown"], "psa": ["1.1", "2.0", "3", "high"]}
    with pytest.raises(DataError) as err:
        encode_tabular(columns, [0, 1], source="cases.csv", row_label=lambda i: f"line {i + 2}")
    assert str(err.value).split("\n") == [
        "cases.csv: column 'age' holds 2 value(s) that are not numbers, but its training values "
        "are numbers: line 4: 'sixty'; line 5: 'unknown'; write a number, or leave the cell empty "
        "(or NA) for a missing value",
        "cases.csv: column 'psa' holds 1 value(s) that are not numbers, but its training values "
        "are numbers: line 5: 'high'; write a number, or leave the cell empty (or NA) for a "
        "missing value",
    ]


def test_words_and_numbers_beyond_float32_in_one_column_are_both_named():
    """A column with a word and a number beyond float32 named the word only."""
    columns = {"age": ["40", "50", "sixty", "1e39"]}
    with pytest.raises(DataError) as err:
        encode_tabular(columns, [0, 1], source="cases.csv", row_label=lambda i: f"line {i + 2}")
    lines = str(err.value).split("\n")
    assert len(lines) == 2
    assert "1 value(s) that are not numbers" in lines[0] and "line 4: 'sixty'" in lines[0]
    assert "1 value(s) beyond the float32 range" in lines[1] and "line 5: '1e39'" in lines[1]


def test_non_numeric_training_value_makes_the_column_categorical():
    matrix, names = encode_tabular({"grade": ["1", "2", "high"]}, [0, 1, 2])
    assert names == ["grade=1", "grade=2", "grade=high"]
    np.testing.assert_array_equal(matrix, np.eye(3))


def test_a_typo_among_numbers_is_refused_not_made_categories():
    # 1.2x among 19 numbers: before, every number became a category (20 one-hot columns).
    values = [f"{1 + k / 10:.1f}" for k in range(20)]
    values[7] = "1.2x"
    label = lambda i: f"line {i + 2}"  # noqa: E731
    with pytest.raises(DataError) as err:
        encode_tabular({"marker": values}, list(range(20)), source="c.csv", row_label=label)
    assert str(err.value) == (
        "c.csv: column 'marker' holds numbers in 19 of 20 training rows, and not in line 9: "
        "'1.2x': write a number, or leave the cell empty (or NA) for a missing value (codes of "
        "categories: write each as a name, e.g. g1, g2)"
    )
    values[7] = "NA"  # missing, as the message says: a number column with an indicator
    _, names = encode_tabular({"marker": values}, list(range(20)))
    assert names == ["marker", "marker_missing"]
    # Words in 1 of 10 rows or more (2 of 20) make a column of categories, as written, and the
    # column of mostly numbers is said (not a typo, but maybe words meant as missing values).
    values[7], values[8] = "unknown", "unknown"
    said = []
    _, names = encode_tabular(
        {"marker": values}, list(range(20)), source="c.csv", warn=lambda *w: said.append(w)
    )
    assert len(names) == 19 and "marker=unknown" in names
    assert said == [
        (
            "marker:many",
            "c.csv: column 'marker' holds 19 distinct values in 20 training rows (e.g. '1.0', "
            "'1.1', '1.2'): read as categories, one one-hot column each, which the model can "
            "only memorise; an identifier (a patient id: dataset.group_column, not an input) or "
            "a measurement written as text?",
        ),
        (
            "marker",
            "c.csv: column 'marker' holds numbers in 18 of 20 training rows and words in 2 "
            "('unknown' x2): it is read as categories, 19 one-hot columns, one per distinct value "
            "(a number no training row holds encodes as none). If the words mean a missing value, "
            "leave those cells empty (or NA): the column is then read as numbers, with a "
            "missing-value indicator",
        ),
    ]
    # A column of names with a few numbers is categories, with nothing to say.
    said.clear()
    encode_tabular({"site": ["a", "b", "c", "7"]}, [0, 1, 2, 3], warn=lambda *w: said.append(w))
    assert said == []


def test_column_empty_in_training_rows_is_an_error():
    with pytest.raises(DataError, match=r"column 'x' is empty in all 2 training rows"):
        encode_tabular({"x": ["", "NA", "3"]}, [0, 1])


def test_a_value_beyond_float32_is_named_not_standardised_into_nan():
    """1e308 in an age column: standardised it overflowed, the outputs became NaN and validation
    failed inside scikit-learn without naming the row."""
    columns = {"age": ["50", "60", "1e308", "70"]}
    with pytest.raises(DataError, match=r"row 2: column 'age' holds '1e308', beyond the float32"):
        encode_tabular(columns, [0, 1, 2])
    with pytest.raises(DataError, match=r"1 value\(s\) beyond the float32 range .*: row 2"):
        encode_tabular(columns, [0, 1, 3])  # in a val or test row


def test_numbers_with_units_or_decimal_commas_are_refused_not_made_categories():
    """`72 kg` and `1,5` are measurements float() cannot read: one category per value before (45
    one-hot columns for 160 weights, and a new patient's weight refused by the service)."""
    label = lambda i: f"line {i + 2}"  # noqa: E731
    weights = [f"{60 + k} kg" for k in range(12)]
    with pytest.raises(DataError) as err:
        encode_tabular({"weight": weights}, list(range(12)), source="c.csv", row_label=label)
    assert str(err.value) == (
        "c.csv: column 'weight' holds numbers written with a unit or a decimal comma in 12 of 12 "
        "training rows (line 2: '60 kg'; line 3: '61 kg'; line 4: '62 kg'; and 9 more): read as "
        "they are, each value would be a category of its own; write the number alone with a "
        "decimal point (72, 1.5; 1500 for a thousands separator), the unit in the column's name "
        "(weight_kg)"
    )
    hba1c = ["5.5", "6,1", "4.9", "7,2"]
    with pytest.raises(
        DataError, match=r"in 2 of 4 training rows \(line 3: '6,1'; line 5: '7,2'\)"
    ):
        encode_tabular({"hba1c": hba1c}, list(range(4)), source="c.csv", row_label=label)
    for cell in ("72 kg", "72kg", "5.5 %", "1,5", "-3 mmHg", "37 c", "37 C", "5 L", "12 years"):
        assert with_unit(cell), cell
    for cell in ("2a", "3c", "4 S", "2 A", "T2", "kg", "M", "stage 2", "1.5", "n/a"):  # stages
        assert not with_unit(cell), cell
    # Stage codes stay categories.
    matrix, names = encode_tabular({"stage": ["2a", "2b", "3c", "2a"]}, [0, 1, 2, 3])
    assert names == ["stage=2a", "stage=2b", "stage=3c"]


def test_spellings_of_missing_values_are_missing():
    for cell in ("", " ", "NA", "n/a", "N/A", "#N/A", "<NA>", "NaN", "null"):
        assert is_missing(cell), cell
    for cell in ("none", "None", "-", "0", "unknown"):  # a category's name, or a value
        assert not is_missing(cell), cell
    matrix, names = encode_tabular({"bp": ["120", "n/a", "140", "N/A"]}, [0, 1, 2, 3])
    assert names == ["bp", "bp_missing"]
    np.testing.assert_allclose(matrix[:, 1], [0, 1, 0, 1])


def test_categories_that_cannot_inform_the_model_are_warned_about():
    """One value in every training row, categories that differ only in case, and a column of
    mostly distinct values (a patient id given as an input)."""
    said = {}
    encode_tabular(
        {
            "const": ["1"] * 6,
            "site": ["a"] * 5 + ["b"],  # `b` in a test row only: the training rows hold one value
            "sex": ["F", "f", "M", "F", "m", "M"],
            "patient": [f"p{k}" for k in range(6)],
        },
        [0, 1, 2, 3, 4],
        source="c.csv",
        warn=lambda column, text: said.setdefault(column, text),
    )
    assert said["const:constant"] == (
        "c.csv: column 'const' holds '1' in all 5 training rows (missing cells aside): it tells "
        "the model nothing; leave it out of dataset.tabular_columns"
    )
    assert said["site:constant"].startswith("c.csv: column 'site' holds 'a' in all 5 training")
    assert said["sex:case"] == (
        "c.csv: column 'sex' holds categories that differ only in case ('F' x2, 'f' x1; 'M' x1, "
        "'m' x1): each is a one-hot column of its own; write each category one way"
    )
    assert "patient:many" not in said  # 5 values: too few to tell
    patients = {"patient": [f"p{k // 2}" for k in range(40)]}
    encode_tabular(patients, range(40), warn=lambda column, text: said.setdefault(column, text))
    assert said["patient:many"].startswith(
        "tabular data: column 'patient' holds 20 distinct values in 40 training rows (e.g. 'p0', "
        "'p1', 'p10'): read as categories"
    )


def test_each_member_s_encoding_is_a_linear_map_of_the_union():
    """Encoders fitted on other rows (a CV's folds: other means, deviations and categories): every
    row's member encoding, missing values and categories a member never saw included, equals
    the union encoding through `member_map`."""
    from medtrain.data.tabular import member_map, union_encoding

    rng = np.random.default_rng(0)
    age = [f"{v:.1f}" for v in rng.normal(60, 10, 40)]
    age[3] = age[17] = ""  # missing: an indicator column
    sex = list(rng.choice(["F", "M"], 40))
    site = ["a"] * 15 + ["b"] * 15 + ["c"] * 10  # `c` only in the last rows
    columns = {"age": age, "sex": sex, "site": site}
    folds = [range(0, 20), range(10, 30), range(20, 40)]
    encoders = [TabularEncoder().fit(columns, list(rows)) for rows in folds]
    assert encoders[0].codes[2].categories == ["a", "b"]  # fold 0 never saw `c`
    union = union_encoding([e.state() for e in encoders])
    assert union[2]["categories"] == ["a", "b", "c"] and union[0]["indicator"] is True
    whole = TabularEncoder.from_state(union).transform(columns)
    for encoder in encoders:
        weight, bias = member_map(union, encoder.state())
        np.testing.assert_allclose(whole @ weight.T + bias, encoder.transform(columns), atol=1e-5)
    # No missing training cell, but other means: a missing value at prediction reads as each
    # member's own mean (its 0), through the indicator the union adds.
    full = {"age": [str(v) for v in range(40)], "sex": sex, "site": site}
    encoders = [TabularEncoder().fit(full, list(rows)) for rows in folds]
    assert not any(e.codes[0].indicator for e in encoders)
    union = union_encoding([e.state() for e in encoders])
    assert union[0]["indicator"] is True
    # The training range of the union is the members' together (fold 0: 0-19, fold 2: 20-39).
    assert [encoders[0].codes[0].low, encoders[2].codes[0].high] == [0.0, 39.0]
    assert (union[0]["low"], union[0]["high"]) == (0.0, 39.0)
    new = {"age": ["", "12"], "sex": ["F", "M"], "site": ["a", "c"]}
    whole = TabularEncoder.from_state(union).transform(new)
    for encoder in encoders:
        weight, bias = member_map(union, encoder.state())
        np.testing.assert_allclose(whole @ weight.T + bias, encoder.transform(new), atol=1e-5)
    with pytest.raises(ValueError, match="read as numbers by one encoding and as categories"):
        words = TabularEncoder().fit(
            {"age": ["x", "y"] + age[2:], "sex": sex, "site": site}, [0, 1]
        )
        union_encoding([encoders[0].state(), words.state()])
