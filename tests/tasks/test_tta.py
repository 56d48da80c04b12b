"""Test-time augmentation (`medtrain.tasks.tta`): the views, their exact inverses, and the averages
every task makes of them."""

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from medtrain.errors import ConfigError
from medtrain.tasks import RegressionTask, SegmentationTask
from medtrain.tasks.tta import View, check_tta, tta_views, turn


def test_views_of_each_choice():
    assert tta_views(None) == (View(),)
    assert tta_views("hflip") == (View(), View((-1,)))
    assert len(tta_views("flips")) == 4 and len(tta_views("flips", spatial_dims=3)) == 8
    assert tta_views("flips", 3)[0].identity and not any(
        v.identity for v in tta_views("flips", 3)[1:]
    )
    assert len(tta_views("dihedral")) == 8
    with pytest.raises(ConfigError, match="volumes take task.tta=flips"):
        tta_views("dihedral", spatial_dims=3)
    with pytest.raises(ConfigError, match="task.tta='rotate'"):
        check_tta("rotate")
    with pytest.raises(ConfigError, match="set task.tta only"):
        check_tta("flips", flip_tta=True)


@pytest.mark.parametrize(("tta", "dims"), [("flips", 2), ("dihedral", 2), ("flips", 3)])
def test_views_are_distinct_and_inverted_exactly(tta, dims):
    """Each view moves the pixels of a non-square image differently; `invert` restores a mask
    (and a map of several channels) exactly, value for value."""
    shape = (2, 3, *(5, 6, 7)[-dims:])
    mask = torch.randint(0, 4, shape, generator=torch.Generator().manual_seed(0))
    seen = set()
    for view in tta_views(tta, dims):
        moved = view.apply(mask)
        seen.add(moved.numpy().tobytes() + bytes(moved.shape))
        assert torch.equal(view.invert(moved), mask)
    assert len(seen) == len(tta_views(tta, dims))


def test_turns_equal_torch_rot90():
    x = torch.arange(24.0).reshape(1, 2, 3, 4)
    for k in range(-4, 5):
        assert torch.equal(turn(x, k), torch.rot90(x, k, (-2, -1)))


def test_dihedral_views_are_the_eight_symmetries_of_the_square():
    square = torch.arange(9.0).reshape(1, 1, 3, 3)
    got = {tuple(v.apply(square).flatten().tolist()) for v in tta_views("dihedral")}
    image = square[0, 0].numpy()
    want = {
        tuple(np.rot90(np.fliplr(image) if f else image, k).flatten().tolist())
        for f, k in itertools.product((False, True), range(4))
    }
    assert got == want


class PixelEcho(nn.Module):
    """Two-class logits: class 1's logit is the image itself (3 x its value), so any view of it,
    inverted, gives back the same map."""

    def forward(self, x):
        return torch.cat([torch.zeros_like(x), 3 * x], dim=1)


class RowPosition(nn.Module):
    """A per-pixel logit that depends on the pixel's position (its row): views disagree."""

    def forward(self, x):
        rows = torch.arange(x.shape[-2], dtype=x.dtype).view(1, 1, -1, 1).expand_as(x)
        return torch.cat([torch.zeros_like(x), rows], dim=1)


@pytest.mark.parametrize("tta", [None, "hflip", "flips", "dihedral"])
def test_segmentation_views_are_brought_back_to_the_image(tta):
    """A network whose output follows the image gives the same probabilities under every view
    (each view inverted before averaging), at a non-square size."""
    task = SegmentationTask(torch.nn.CrossEntropyLoss(), ["background", "object"], tta=tta)
    image = torch.rand(2, 1, 6, 9, generator=torch.Generator().manual_seed(1))
    logits = task.infer(PixelEcho().eval(), image)
    torch.testing.assert_close(logits.softmax(1), PixelEcho()(image).softmax(1))


def test_segmentation_views_average_probabilities():
    """Views that disagree are averaged as probabilities: the vertical mirror sees row r as row
    H - 1 - r, so class 1's probability is the mean of the two sigmoids."""
    task = SegmentationTask(torch.nn.CrossEntropyLoss(), ["background", "object"], tta="flips")
    image = torch.zeros(1, 1, 4, 3)
    probs = task.infer(RowPosition().eval(), image).softmax(1)[0, 1, :, 0]
    rows = torch.arange(4.0)
    torch.testing.assert_close(probs, (torch.sigmoid(rows) + torch.sigmoid(3 - rows)) / 2)


class MeanOfLeftColumn(nn.Module):
    def forward(self, x):
        return x[..., 0].mean(dim=(1, 2))[:, None]


def test_regression_views_average_target_units():
    task = RegressionTask(torch.nn.MSELoss(), target_mean=[10.0], target_std=[2.0], tta="hflip")
    image = torch.zeros(1, 1, 3, 3)
    image[..., 0] = 1.0  # left column bright: the mirror sees its right column
    out = task.forward(MeanOfLeftColumn().eval(), {"image": image})
    assert task.values(out).item() == pytest.approx(10.0 + 2.0 * 0.5)


def test_the_benchmark_skips_the_choices_a_volume_run_does_not_take(tmp_path, capsys):
    """`benchmarks/tta.py` (docs/configuration.md recommends it) on a 3D network's run: every
    choice a volume takes, with a volume's number of views, and dihedral skipped with the reason
    (it stopped there with a traceback)."""
    import runpy

    from tests.conftest import ON_CPU, ROOT, train_in_process
    from tests.inference.test_volume_inference import VOLUME_RUN

    run = tmp_path / "run"
    train_in_process(run, [*VOLUME_RUN, "trainer.max_epochs=1", "task.tta=flips", ON_CPU])
    benchmark = runpy.run_path(str(ROOT / "benchmarks" / "tta.py"))
    capsys.readouterr()
    benchmark["main"](["--run-dir", str(run), "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{run}: 2 val volumes")
    assert [line.split("  ")[0].split()[0] for line in lines[1:]] == [
        "tta=None",
        "tta=hflip",
        "tta=flips",
        "tta=dihedral",
    ]
    assert [int(line.split()[2]) for line in lines[1:4]] == [1, 2, 8]
    assert lines[4] == (
        "tta=dihedral  skipped: task.tta=dihedral turns images in their plane; volumes take "
        "task.tta=flips"
    )
