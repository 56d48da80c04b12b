"""Sliding-window inference against MONAI, whole-image inference and hand-built predictors."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference as monai_sliding_window

from medtrain.errors import ConfigError
from medtrain.models.sliding_window import importance_map, sliding_window_inference


def small_net(in_channels=3, classes=4, seed=0):
    """Two 3 x 3 convolutions: each output pixel sees 2 pixels around it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, classes, 3, padding=1),
    ).eval()


def monai_reference(net, image, window, overlap, blend, batch_size=4):
    size = (window, window) if isinstance(window, int) else window
    return monai_sliding_window(
        image, size, batch_size, net, overlap=overlap, mode=blend, sigma_scale=0.125
    )


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
@pytest.mark.parametrize("shape, window", [((70, 95), 32), ((64, 96), 32), ((70, 95), (24, 40))])
def test_matches_monai(blend, overlap, shape, window):
    net = small_net()
    image = torch.randn(2, 3, *shape)
    ours = sliding_window_inference(net, image, window, overlap, blend, batch_size=3)
    reference = monai_reference(net, image, window, overlap, blend, batch_size=3)
    assert ours.shape == (2, 4, *shape) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6 if blend == "constant" else 1e-5)


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_identity_predict_reconstructs_the_image(blend, overlap):
    image = torch.randn(2, 2, 45, 70)
    out = sliding_window_inference(lambda x: x, image, (16, 24), overlap, blend)
    # Blending is a weighted mean of identical values: exact up to float32 rounding, which grows
    # with the number of windows summed per pixel (up to 16 x 12 at overlap 0.9).
    tolerance = 1e-6 if overlap <= 0.5 else 2e-5
    torch.testing.assert_close(out, image, rtol=tolerance, atol=tolerance)


def window_edge_pixels(length, window, overlap, radius):
    """Pixels within `radius` of a window edge that lies inside the image (where tiles differ)."""
    stride = max(int(window * (1 - overlap)), 1)
    starts = [*range(0, length - window, stride), length - window]
    near = torch.zeros(length, dtype=torch.bool)
    for start in starts:
        if start > 0:
            near[max(start - radius, 0) : start + radius + 1] = True
        end = start + window - 1
        if end < length - 1:
            near[max(end - radius, 0) : end + radius + 1] = True
    return near


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize("overlap", [0.25, 0.5])
def test_tiles_equal_whole_image_inference_away_from_tile_edges(blend, overlap):
    net, radius, window = small_net(), 2, (32, 32)
    image = torch.randn(2, 3, 70, 95)
    tiled = sliding_window_inference(net, image, window, overlap, blend)
    with torch.no_grad():
        whole = net(image)
    near_rows = window_edge_pixels(70, window[0], overlap, radius)
    near_cols = window_edge_pixels(95, window[1], overlap, radius)
    interior = ~near_rows[:, None] & ~near_cols[None, :]
    assert interior.float().mean() > 0.3  # the check covers much of the image
    torch.testing.assert_close(tiled[..., interior], whole[..., interior], rtol=0, atol=1e-5)
    # Near tile edges the zero padding of each window does change the result.
    assert (tiled - whole).abs().max() > 1e-3


def test_image_smaller_than_window_runs_predict_once_on_the_padded_image():
    net, calls = small_net(), []

    def predict(x):
        calls.append(tuple(x.shape))
        return net(x)

    image = torch.randn(2, 3, 20, 25)
    out = sliding_window_inference(predict, image, 32, blend="gaussian")
    assert calls == [(2, 3, 32, 32)]
    with torch.no_grad():
        expected = net(F.pad(image, (3, 4, 6, 6)))[..., 6:26, 3:28]  # padding split evenly
    assert torch.equal(out, expected)
    torch.testing.assert_close(out, monai_reference(net, image, 32, 0.25, "gaussian"))


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
def test_image_smaller_than_window_along_one_axis(blend):
    net = small_net()
    image = torch.randn(2, 3, 20, 90)
    out = sliding_window_inference(net, image, 32, 0.25, blend)
    assert out.shape == (2, 4, 20, 90)
    torch.testing.assert_close(out, monai_reference(net, image, 32, 0.25, blend), rtol=0, atol=1e-5)


def test_windows_are_batched_across_images():
    net, calls = small_net(), []

    def predict(x):
        calls.append(x.shape[0])
        return net(x)

    image = torch.randn(3, 3, 64, 64)  # 3 x 3 windows of 32 at overlap 0.25: 9 per image
    one_at_a_time = sliding_window_inference(net, image, 32, batch_size=1)
    batched = sliding_window_inference(predict, image, 32, batch_size=5)
    assert calls == [5] * 5 + [2]
    assert len(calls) == math.ceil(27 / 5)
    torch.testing.assert_close(batched, one_at_a_time)


@pytest.mark.parametrize("container", [tuple, list])
def test_deep_supervision_outputs_use_the_first_element(container):
    net = small_net()

    def deep(x):
        main = net(x)
        return container([main, main[:, :, ::2, ::2] * 10])

    image = torch.randn(2, 3, 50, 41)
    out = sliding_window_inference(deep, image, 32, 0.5, "gaussian")
    torch.testing.assert_close(out, sliding_window_inference(net, image, 32, 0.5, "gaussian"))


def test_output_is_float32_on_the_input_device():
    net = small_net().double()
    out = sliding_window_inference(net, torch.randn(1, 3, 40, 40, dtype=torch.float64), 32)
    assert out.dtype == torch.float32 and out.device == torch.device("cpu")


def test_gaussian_importance_map():
    weights = importance_map((33, 20), "gaussian")
    assert weights.shape == (33, 20)

    def gaussian(offset, size):  # sigma = 0.125 * window size, 1 at the window centre
        return math.exp(-(offset**2) / (2 * (0.125 * size) ** 2))

    # Row 16 is the centre of 33 rows; columns 9 and 10 sit half a pixel either side of the centre.
    assert weights[16, 9] == weights[16, 10] == pytest.approx(gaussian(0.5, 20), rel=1e-6)
    assert weights[8, 5] == pytest.approx(gaussian(8, 33) * gaussian(4.5, 20), rel=1e-5)
    assert weights.min() == pytest.approx(1e-3)  # the floor under the far corners
    assert torch.equal(weights, weights.flip(0)) and torch.equal(weights, weights.flip(1))
    assert torch.equal(importance_map((8, 8), "constant"), torch.ones(8, 8))


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"overlap": 1.0}, "task.inference.overlap"),
        ({"overlap": -0.1}, "task.inference.overlap"),
        ({"blend": "linear"}, "task.inference.blend"),
        ({"window": 0}, "task.inference.window"),
        ({"window": (32, -1)}, "task.inference.window"),
        ({"window": (32,)}, "task.inference.window"),
        ({"window": 3.5}, "task.inference.window"),
        ({"batch_size": 0}, "task.inference.batch_size"),
        ({"batch_size": 2.5}, "task.inference.batch_size"),
        ({"overlap": "half"}, "task.inference.overlap"),
    ],
)
def test_invalid_arguments_name_the_config_key(kwargs, key):
    args = {"window": 32, **kwargs}
    with pytest.raises(ConfigError, match=key):
        sliding_window_inference(small_net(), torch.randn(1, 3, 40, 40), **args)


def test_numpy_and_whole_float_settings_are_accepted():
    net, image = small_net(), torch.randn(1, 3, 40, 40)
    expected = sliding_window_inference(net, image, 32, overlap=0.5, batch_size=8)
    same = sliding_window_inference(net, image, 32, overlap=np.float32(0.5), batch_size=8.0)
    assert torch.equal(same, expected)


def test_predict_with_wrong_output_size_is_reported():
    with pytest.raises(ValueError, match="window size"):
        sliding_window_inference(lambda x: x[..., ::2, ::2], torch.randn(1, 3, 40, 40), 16)


def small_net3d(in_channels=1, classes=3, seed=0):
    """Two 3 x 3 x 3 convolutions: each output voxel sees 2 voxels around it."""
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv3d(in_channels, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv3d(4, classes, 3, padding=1),
    ).eval()


@pytest.mark.parametrize("blend", ["constant", "gaussian"])
@pytest.mark.parametrize(("shape", "window"), [((20, 37, 30), 16), ((12, 40, 33), (8, 16, 24))])
def test_volumes_match_monai(blend, shape, window):
    net = small_net3d()
    image = torch.randn(2, 1, *shape)
    ours = sliding_window_inference(net, image, window, 0.5, blend, batch_size=5)
    size = (window,) * 3 if isinstance(window, int) else window
    reference = monai_sliding_window(
        image, size, 5, net, overlap=0.5, mode=blend, sigma_scale=0.125
    )
    assert ours.shape == (2, 3, *shape)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)


def test_volume_windows_equal_whole_volume_inference_away_from_window_borders():
    net, radius, window, overlap = small_net3d(), 2, (16, 24, 24), 0.5
    shape = (24, 36, 37)
    volume = torch.randn(1, 1, *shape)
    tiled = sliding_window_inference(net, volume, window, overlap, "gaussian")
    with torch.no_grad():
        whole = net(volume)
    near = [window_edge_pixels(n, w, overlap, radius) for n, w in zip(shape, window, strict=True)]
    interior = ~near[0][:, None, None] & ~near[1][None, :, None] & ~near[2][None, None, :]
    assert interior.float().mean() > 0.25
    torch.testing.assert_close(tiled[..., interior], whole[..., interior], rtol=0, atol=1e-5)
    assert (tiled - whole).abs().max() > 1e-3


def test_a_window_of_the_wrong_number_of_axes_names_the_key():
    with pytest.raises(ConfigError, match="task.inference.window"):
        sliding_window_inference(small_net3d(), torch.randn(1, 1, 20, 20, 20), (16, 16))


@pytest.mark.parametrize(
    ("sides", "window", "overlap"),
    [
        ((32, 32), (48, 48), 0.5),
        ((64, 64), (48, 48), 0.5),
        ((80, 40), (48, 48), 0.25),
        ((100, 30), (32, 48), 0.0),
        ((20, 70, 40), (16, 32, 32), 0.5),
    ],
)
def test_window_count_is_the_number_of_windows_the_inference_predicts(sides, window, overlap):
    """The service decides from it whether a request takes several model calls."""
    from medtrain.models.sliding_window import window_count

    seen = []

    def predict(windows: torch.Tensor) -> torch.Tensor:
        seen.append(len(windows))
        return windows

    sliding_window_inference(predict, torch.zeros(1, 1, *sides), window, overlap, batch_size=3)
    assert sum(seen) == window_count(sides, window, overlap)
