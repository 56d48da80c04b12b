"""The classification task object: forward (with test-time views), thresholds, collector outputs."""

import numpy as np
import pytest
import torch
from torch import nn

from medtrain.errors import ConfigError
from medtrain.losses import CrossEntropy
from medtrain.tasks import ClassificationTask


class LeftHalfModel(nn.Module):
    """Logit 1 = mean of the left half of the image: changes when the image is mirrored."""

    def forward(self, x):
        left = x[..., : x.shape[-1] // 2].mean(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(left), left], dim=1)


def test_hflip_tta_averages_probabilities_of_image_and_mirror_only_in_eval():
    x = torch.zeros(1, 1, 2, 4)
    x[..., :2] = 1.0  # bright left half
    batch = {"image": x}
    model = LeftHalfModel().eval()
    plain = ClassificationTask(CrossEntropy()).forward(model, batch)
    tta = ClassificationTask(CrossEntropy(), tta="hflip").forward(model, batch)
    assert plain[0, 1].item() == pytest.approx(1.0)
    # Softmax of (0, 1) and of (0, 0) averaged: the output's softmax gives that mean back.
    mean = (torch.softmax(torch.tensor([0.0, 1.0]), 0) + 0.5) / 2
    torch.testing.assert_close(tta.softmax(1)[0], mean)
    model.train()
    assert ClassificationTask(CrossEntropy(), tta="hflip").forward(model, batch)[0, 1].item() == 1.0
    # Runs before release 0.4 said flip_tta=true.
    assert ClassificationTask(CrossEntropy(), flip_tta=True).tta == "hflip"


def test_threshold_rules_are_checked():
    with pytest.raises(ConfigError, match="task.threshold='best'"):
        ClassificationTask(CrossEntropy(), threshold="best")
    with pytest.raises(ConfigError, match=r"task.threshold=1.5 must be in \(0, 1\)"):
        ClassificationTask(CrossEntropy(), threshold=1.5)


def test_youden_threshold_is_fitted_on_validation_outputs():
    task = ClassificationTask(CrossEntropy(), threshold="youden", class_names=["a", "b"])
    val = task.collector()
    logits = torch.tensor([[0.0, -2.0], [0.0, -1.0], [0.0, 0.5], [0.0, 1.0]])
    val.update(logits, {"id": list("wxyz"), "label": torch.tensor([0, 0, 1, 1])})
    threshold = task.fit_threshold(val)
    assert threshold == pytest.approx(torch.sigmoid(torch.tensor(0.5)).item())
    assert val.metrics("val")["val/acc"] == 1.0
    rows, fields = val.prediction_rows()
    assert fields == ["id", "target", "pred", "prob_0", "prob_1"]
    assert [r["pred"] for r in rows] == [0, 0, 1, 1]
    assert np.isclose(float(rows[2]["prob_1"]), threshold)


def test_a_threshold_per_label_is_a_list_of_a_multi_label_task():
    """`task.threshold=[0.3,0.5]` crashed with a TypeError deep in the settings check: a list is
    one threshold per label of a multi-label task, each in (0, 1); elsewhere it is refused."""
    from omegaconf import OmegaConf

    from medtrain.losses import BCEWithLogits

    ClassificationTask.check_settings(OmegaConf.create({"threshold": [0.3, 0.5]}))
    with pytest.raises(ConfigError, match=r"task.threshold=\[0.3, 1.5\]: each of its numbers"):
        ClassificationTask.check_settings(OmegaConf.create({"threshold": [0.3, 1.5]}))
    task = ClassificationTask(BCEWithLogits(), multilabel=True, threshold=[0.3, 0.7])
    assert task.threshold == [0.3, 0.7]

    def checked(multilabel, threshold):
        cfg = OmegaConf.create(
            {
                "dataset": {"multilabel": multilabel, "num_classes": 2, "class_names": ["a", "b"]},
                "task": {"threshold": threshold},
                "loss": {"_target_": "medtrain.losses.classification.BCEWithLogits"},
            }
        )
        ClassificationTask.check_against_data(cfg)

    checked(True, [0.3, 0.7])
    with pytest.raises(ConfigError, match=r"this one has 2 labels \(\['a', 'b'\]\)"):
        checked(True, [0.3, 0.7, 0.5])
    with pytest.raises(ConfigError, match="this one has one class per image: give one number"):
        checked(False, [0.3, 0.7])


def test_multi_label_predictions_are_written_as_the_data_wrote_its_labels():
    """predict joined an image's labels with ';' and left an image of none empty, whatever the
    training data's `dataset.label_separator` and `dataset.no_label`; the task follows them."""
    from medtrain.losses import BCEWithLogits

    def row(task, probs):
        result = task.prediction(torch.logit(torch.tensor([probs])), None)
        return task.prediction_row("a.png", result, None)["labels"]

    names = ["Effusion", "Nodule", "Mass"]
    # Runs saved before (no task.label_separator) write as they did.
    plain = ClassificationTask(BCEWithLogits(), multilabel=True, class_names=names)
    assert row(plain, [0.9, 0.2, 0.8]) == "Effusion;Mass" and row(plain, [0.1, 0.2, 0.3]) == ""
    data = ClassificationTask(BCEWithLogits(), True, names, label_separator="|")
    assert row(data, [0.9, 0.2, 0.8]) == "Effusion|Mass"
    chest = ClassificationTask(
        BCEWithLogits(), True, names, label_separator=", ", no_label="No Finding"
    )
    assert row(chest, [0.9, 0.2, 0.8]) == "Effusion, Mass"
    assert row(chest, [0.1, 0.2, 0.3]) == "No Finding"
    with pytest.raises(ConfigError, match="task.label_separator=''"):
        ClassificationTask(BCEWithLogits(), True, names, label_separator="")
