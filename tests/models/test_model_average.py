"""`ModelAverage`: k networks as one, averaged as the task's ensembles average (`Task.combine`)."""

import pytest
import torch
from torch import nn

from medtrain.errors import ConfigError
from medtrain.models.ensemble import ModelAverage
from medtrain.tasks import ClassificationTask, RegressionTask, SegmentationTask


def nets(out_channels: int, conv: bool = False, count: int = 3) -> list[nn.Module]:
    torch.manual_seed(0)
    if conv:
        return [nn.Conv2d(1, out_channels, 3, padding=1) for _ in range(count)]
    return [nn.Sequential(nn.Flatten(), nn.Linear(16, out_channels)) for _ in range(count)]


def test_softmax_average_equals_the_tasks_combine():
    members = nets(3)
    task = ClassificationTask(nn.CrossEntropyLoss(), class_names=["a", "b", "c"])
    x = torch.randn(5, 1, 4, 4)
    got = ModelAverage(members, "softmax")(x)
    want = task.combine([m(x) for m in members], [task] * 3)
    torch.testing.assert_close(got.softmax(1), want.softmax(1))


def test_sigmoid_average_for_multilabel():
    members = nets(2)
    x = torch.randn(4, 1, 4, 4)
    got = torch.sigmoid(ModelAverage(members, "sigmoid")(x))
    want = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(0)
    torch.testing.assert_close(got, want)


def test_segmentation_maps_are_averaged_per_pixel():
    members = nets(2, conv=True, count=2)
    task = SegmentationTask(nn.CrossEntropyLoss(), ["background", "object"])
    x = torch.randn(2, 1, 6, 5)
    got = ModelAverage(members, task.average_rule())(x)
    torch.testing.assert_close(got, task.combine([m(x) for m in members], [task] * 2))


def test_regression_members_of_other_statistics_average_in_target_units():
    """Each fold standardised its targets with its own training data: the average is taken in
    target units, and returned in the ensemble task's standardisation."""
    members = nets(1, count=2)
    own = [
        RegressionTask(nn.MSELoss(), target_mean=[10.0], target_std=[2.0]),
        RegressionTask(nn.MSELoss(), target_mean=[12.0], target_std=[4.0]),
    ]
    task = own[0]
    affine = [task.member_affine(t) for t in own]
    assert affine[0] is None
    filled = [a or ([1.0], [0.0]) for a in affine]
    model = ModelAverage(
        members,
        "mean",
        output_scale=[a[0] for a in filled],
        output_shift=[a[1] for a in filled],
    )
    x = torch.randn(3, 1, 4, 4)
    want = torch.stack([t.values(m(x)) for m, t in zip(members, own, strict=True)]).mean(0)
    torch.testing.assert_close(task.values(model(x)), want)


def test_members_normalized_otherwise_get_their_own_input():
    members = nets(2, count=2)
    # The ensemble's input is (raw - 0.5) / 0.25; member 1 was trained on (raw - 0.3) / 0.5.
    model = ModelAverage(members, "softmax", input_scale=[[1.0], [0.5]], input_shift=[[0.0], [0.4]])
    raw = torch.rand(3, 1, 4, 4)
    x0, x1 = (raw - 0.5) / 0.25, (raw - 0.3) / 0.5
    want = (members[0](x0).softmax(1) + members[1](x1).softmax(1)) / 2
    torch.testing.assert_close(model(x0).softmax(1), want)


def test_bad_settings_are_refused():
    with pytest.raises(ConfigError, match="model.rule='median'"):
        ModelAverage(nets(2), "median")
    with pytest.raises(ConfigError, match="2 or more"):
        ModelAverage(nets(2, count=1), "softmax")
    with pytest.raises(ConfigError, match="model.output_scale has 1 rows for 3 members"):
        ModelAverage(nets(2), "mean", output_scale=[[1.0]], output_shift=[[0.0]])


class TableThenImage(nn.Module):
    """Reads its inputs as a fusion model may: the table first."""

    input_keys = ("tabular", "image")

    def forward(self, tabular, image):
        return torch.stack([tabular.sum(1), image.mean(dim=(1, 2, 3))], dim=1)


def test_the_image_is_rescaled_and_other_inputs_are_not():
    model = ModelAverage(
        [TableThenImage(), TableThenImage()],
        "mean",
        input_scale=[[1.0], [2.0]],
        input_shift=[[0.0], [1.0]],
    )
    assert model.input_keys == ("tabular", "image")
    tabular, image = torch.ones(1, 3), torch.full((1, 1, 2, 2), 0.5)
    out = model(tabular, image)
    # The table's sum is 3 for both; the image's mean is 0.5 and 0.5 * 2 + 1 = 2.
    torch.testing.assert_close(out, torch.tensor([[3.0, 1.25]]))
    with pytest.raises(ConfigError, match="give both or neither"):
        ModelAverage(nets(2), "softmax", input_scale=[[1.0]] * 3)
    with pytest.raises(ConfigError, match="not rule=softmax"):
        ModelAverage(nets(2), "softmax", output_scale=[[1.0]] * 3, output_shift=[[0.0]] * 3)
