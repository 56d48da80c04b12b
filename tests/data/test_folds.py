"""Cross-validation folds (`medtrain.data.folds`): the assignment (seeded, stratified, grouped) and
a fold's datasets rebuilt from the data's own splits."""

from collections import Counter

import numpy as np
import pytest
import torch

from medtrain.data.folds import assign_folds, fold_datasets, regrouped
from medtrain.engine.build import build_datasets
from medtrain.errors import ConfigError
from medtrain.io import save_json
from tests.conftest import compose_cfg


def test_stratified_folds_keep_the_class_balance_and_repeat_with_the_seed():
    classes = np.array([0] * 70 + [1] * 30)
    ids = [f"c{i}" for i in range(100)]
    folds = assign_folds(ids, 5, seed=3, classes=classes)
    assert sorted(Counter(folds).values()) == [20] * 5
    for fold in range(5):  # 14 of class 0 and 6 of class 1 in each
        assert Counter(classes[folds == fold]) == {0: 14, 1: 6}
    np.testing.assert_array_equal(folds, assign_folds(ids, 5, seed=3, classes=classes))
    assert not np.array_equal(folds, assign_folds(ids, 5, seed=4, classes=classes))


def test_multilabel_folds_keep_each_combination_of_labels_balanced():
    """Multi-label cases are stratified by their combination of labels: each fold holds a fifth
    of every combination (the rare both-labels cases too). Combinations rarer than 10 cases are
    pooled: without, one rare combination made every fold unstratified (with a dozen labels,
    always)."""
    from medtrain.data.folds import stratifiable
    from medtrain.tasks.classification import ClassificationTask

    labels = np.array([[0, 0, 0]] * 40 + [[1, 0, 0]] * 30 + [[0, 1, 0]] * 20 + [[1, 1, 0]] * 10)
    strata = ClassificationTask.fold_strata(None, labels)
    assert strata.shape == (100,) and len(set(strata.tolist())) == 4
    folds = assign_folds([f"c{i}" for i in range(100)], 5, seed=0, classes=strata)
    for fold in range(5):
        held = labels[folds == fold]
        assert Counter(map(tuple, held.tolist())) == {
            (0, 0, 0): 8,
            (1, 0, 0): 6,
            (0, 1, 0): 4,
            (1, 1, 0): 2,
        }
    # Five rare combinations of 2-3 cases (12 together): one pooled stratum, 4 + 1 in all.
    rare = [[0, 0, 1], [1, 0, 1], [0, 1, 1], [1, 1, 1]]
    more = np.array([*labels, *[rare[k % 4] for k in range(10)], [0, 0, 1], [0, 0, 1]])
    strata = ClassificationTask.fold_strata(None, more)
    assert len(set(strata.tolist())) == 5 and stratifiable(strata, 5)
    # A pool smaller than the folds joins the commonest combination.
    few = np.array([*labels, [1, 1, 1], [0, 1, 1]])
    strata = ClassificationTask.fold_strata(None, few)
    assert len(set(strata.tolist())) == 4 and strata[-1] == strata[0] and stratifiable(strata, 5)


def test_grouped_folds_keep_each_group_in_one_fold():
    rng = np.random.default_rng(0)
    groups = [f"patient{rng.integers(0, 23)}" for _ in range(120)]
    classes = rng.integers(0, 2, 120)
    for given in (None, classes):
        folds = assign_folds([str(i) for i in range(120)], 4, seed=1, classes=given, groups=groups)
        by_group = {}
        for group, fold in zip(groups, folds, strict=True):
            assert by_group.setdefault(group, fold) == fold
        assert set(folds) == {0, 1, 2, 3}
    with pytest.raises(ConfigError, match="only 3 groups"):
        assign_folds(["a", "b", "c", "d"], 4, seed=0, groups=["x", "x", "y", "z"])
    with pytest.raises(ConfigError, match="cv.folds=1"):
        assign_folds(["a", "b"], 1, seed=0)


SMALL = [
    "dataset.num_train=30",
    "dataset.num_val=12",
    "dataset.num_test=10",
    "dataset.image_size=16",
]


@pytest.mark.parametrize(
    "overrides",
    [
        ["augmentation=none", *SMALL],
        ["dataset=synthetic_clinical", "augmentation=none", *SMALL[:3]],
        [
            "experiment=synthetic_segmentation",
            "augmentation=none",
            "dataset.num_train=12",
            "dataset.num_val=6",
            "dataset.num_test=4",
        ],
        [
            "experiment=synthetic_segmentation3d",
            "augmentation=none",
            "dataset.num_train=6",
            "dataset.num_val=3",
            "dataset.num_test=1",
            "dataset.test_image_size=32",
        ],
    ],
    ids=["synthetic", "clinical", "segmentation", "volumes"],
)
def test_fold_samples_are_the_cases_samples(tmp_path, overrides):
    """A fold's validation set holds exactly its fold's cases, each sample equal to the one the
    data's own split makes of it, and its training set the other cases."""
    cfg = compose_cfg(overrides)
    native = build_datasets(cfg)
    train, val = native["train"], native["val"]
    pool = list(train.ids) + list(val.ids)
    folds = assign_folds(pool, 3, seed=0)
    save_json(tmp_path / "folds.json", {"folds": 3, "seed": 0, "ids": pool, "fold": folds.tolist()})
    fold_train, fold_val = fold_datasets(
        train, val, tmp_path / "folds.json", 1, train.transform, val.transform
    )
    assert list(fold_val.ids) == [i for i, f in zip(pool, folds, strict=True) if f == 1]
    assert sorted(fold_train.ids) == sorted(i for i, f in zip(pool, folds, strict=True) if f != 1)
    assert fold_train.split == "train" and fold_val.split == "val"
    where = {i: (train, k) for k, i in enumerate(train.ids)} | {
        i: (val, k) for k, i in enumerate(val.ids)
    }
    eval_copy = regrouped([(train, range(len(train.ids)))], "val", val.transform)
    for index, case in enumerate(fold_val.ids):
        source, k = where[case]
        want = (eval_copy if source is train else val)[k]
        got = fold_val[index]
        for key, value in want.items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(got[key], value), (case, key)
            else:
                assert got[key] == value
    if hasattr(train, "labels") and train.labels is not None and len(train.labels):
        labels = dict(zip(pool, np.concatenate([train.labels, val.labels]), strict=True))
        for index, case in enumerate(fold_train.ids):
            np.testing.assert_array_equal(fold_train.labels[index], labels[case])


def test_a_fold_of_another_file_or_number_is_refused(tmp_path):
    cfg = compose_cfg(["augmentation=none", *SMALL])
    native = build_datasets(cfg)
    train, val = native["train"], native["val"]
    save_json(tmp_path / "folds.json", {"folds": 2, "seed": 0, "ids": ["x", "y"], "fold": [0, 1]})
    with pytest.raises(ConfigError, match="other cases"):
        fold_datasets(train, val, tmp_path / "folds.json", 0, None, None)
    with pytest.raises(ConfigError, match=r"cv.fold=5: .* has folds 0..1"):
        fold_datasets(train, val, tmp_path / "folds.json", 5, None, None)
