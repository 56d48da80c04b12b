"""medtrain's U-Net: any input size, every normalization and up-sampling, deep supervision."""

import pytest
import torch

from medtrain.errors import ConfigError
from medtrain.models.unet import UNet


@pytest.mark.parametrize("norm", ["batch", "instance", "group"])
@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_any_size_gives_logits_of_that_size(norm, upsample):
    torch.manual_seed(0)
    model = UNet(2, 3, depth=3, base_width=8, norm=norm, upsample=upsample, dropout=0.1)
    for height, width in ((37, 50), (16, 16), (13, 9), (64, 40)):
        out = model(torch.randn(2, 2, height, width))
        assert out.shape == (2, 3, height, width)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "depth, size, pad, mode",
    [
        (2, (30, 29), (0, 3, 0, 2), "reflect"),
        # reflection cannot pad 5 columns onto a 3-column image: the model pads with the edge values
        (3, (5, 3), (0, 5, 0, 3), "replicate"),
    ],
)
def test_inputs_are_padded_to_a_multiple_of_2_to_the_depth_and_cropped_back(depth, size, pad, mode):
    torch.manual_seed(0)
    model = UNet(1, 2, depth=depth, base_width=4).eval()
    x = torch.randn(1, 1, *size)
    with torch.no_grad():
        padded = model(torch.nn.functional.pad(x, pad, mode=mode))
        assert torch.equal(model(x), padded[..., : size[0], : size[1]])


def test_deep_supervision_outputs_in_training_only():
    model = UNet(1, 2, depth=4, base_width=4, deep_supervision=True)
    outputs = model(torch.randn(2, 1, 35, 33))
    assert isinstance(outputs, tuple) and len(outputs) == 4
    assert all(o.shape == (2, 2, 35, 33) for o in outputs)
    sum(o.sum() for o in outputs).backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    assert model(torch.randn(1, 1, 35, 33)).shape == (1, 2, 35, 33)


def test_bad_arguments_name_the_key():
    with pytest.raises(ConfigError, match="model.norm='layer'"):
        UNet(1, 2, norm="layer")
    with pytest.raises(ConfigError, match="model.upsample"):
        UNet(1, 2, upsample="nearest")
    with pytest.raises(ConfigError, match="model.dropout"):
        UNet(1, 2, dropout=1.5)


@pytest.mark.parametrize("upsample", ["bilinear", "transposed"])
def test_volumes_of_any_size_with_per_axis_strides(upsample):
    torch.manual_seed(0)
    net = UNet(
        1, 3, depth=3, base_width=4, upsample=upsample, spatial_dims=3, strides=[[1, 2, 2], 2, 2]
    ).eval()
    assert net.multiples == (4, 8, 8)
    x = torch.randn(2, 1, 7, 21, 18)
    with torch.no_grad():
        out = net(x)
    assert out.shape == (2, 3, 7, 21, 18) and torch.isfinite(out).all()


def test_2d_strides_and_wrong_dimensions_are_reported():
    with pytest.raises(ConfigError, match="model.strides"):
        UNet(1, 2, depth=2, strides=[2])
    with pytest.raises(ConfigError, match="model.strides"):
        UNet(1, 2, depth=2, spatial_dims=3, strides=[[1, 2], 2])
    with pytest.raises(ConfigError, match="model.spatial_dims"):
        UNet(1, 2, spatial_dims=1)
    with pytest.raises(ValueError, match="spatial_dims=3"):
        UNet(1, 2, depth=1, base_width=2, spatial_dims=3)(torch.randn(1, 1, 8, 8))
