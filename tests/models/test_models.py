"""Every model config in conf/model/ is built and checked: forward, backward, shape, finite output.

A new model (medtrain/models/<name>.py + conf/model/<name>.yaml) is picked up here without edits; it
receives the batch keys it declares in `input_keys` (`image` by default, `tabular` for clinical data).
"""

from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import open_dict

from medtrain.engine.build import build_model
from medtrain.errors import ConfigError
from medtrain.models import call_model
from medtrain.models.torchvision_nets import torchvision_classifier
from tests.conftest import CONF, compose_cfg

MODELS = sorted(p.stem for p in (CONF / "model").glob("*.yaml"))
# Models whose config takes `spatial_dims` (following the data's) have a 3D variant too.
MODELS_3D = [
    name for name in MODELS if "spatial_dims:" in (CONF / "model" / f"{name}.yaml").read_text()
]


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize(("channels", "classes", "size"), [(1, 2, 28), (3, 5, 33)])
def test_model_forward_backward(name, channels, classes, size):
    cfg = compose_cfg([f"model={name}"])
    with open_dict(cfg):  # tabular models (and fusion branches) read a vector of 6 columns
        cfg.dataset.num_features = 6
    cfg.dataset.in_channels, cfg.dataset.num_classes = channels, classes
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = {"image": torch.randn(2, channels, size, size), "tabular": torch.randn(2, 6)}
    out = call_model(model, batch)
    # Segmentation models give one prediction per pixel, classifiers one per image.
    expected = (2, classes, size, size) if out.ndim == 4 else (2, classes)
    assert out.shape == expected
    assert torch.isfinite(out).all()
    out.sum().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_3d_variants_are_checked():
    assert {"cnn", "unet", "basic_unet", "resnet"} <= set(MODELS_3D)


@pytest.mark.parametrize("name", MODELS_3D)
def test_3d_model_forward_backward(name):
    cfg = compose_cfg([f"model={name}"])
    with open_dict(cfg):  # what build_datasets writes for volume data
        cfg.dataset.spatial_dims = 3
    cfg.dataset.in_channels, cfg.dataset.num_classes = 1, 3
    torch.manual_seed(0)
    model = build_model(cfg)
    out = call_model(model, {"image": torch.randn(2, 1, 16, 16, 16)})
    segments = "unet" in name  # U-Nets: a map per voxel; classifiers: logits per volume
    assert out.shape == ((2, 3, 16, 16, 16) if segments else (2, 3))
    assert torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_small_input_keeps_resolution_in_the_stem():
    small = torchvision_classifier("resnet18", in_channels=1, num_classes=2, small_input=True)
    large = torchvision_classifier("resnet18", in_channels=1, num_classes=2, small_input=False)
    x = torch.randn(1, 1, 28, 28)
    assert small.layer1(small.maxpool(small.relu(small.bn1(small.conv1(x))))).shape[-1] == 28
    assert large.layer1(large.maxpool(large.relu(large.bn1(large.conv1(x))))).shape[-1] == 7


def test_local_weights_are_loaded_and_grey_stem_sums_rgb_filters(tmp_path: Path):
    reference = torchvision.models.resnet18(weights=None)
    weights = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), weights)
    model = torchvision_classifier("resnet18", in_channels=1, num_classes=3, weights=str(weights))
    assert torch.equal(model.layer3[0].conv1.weight, reference.layer3[0].conv1.weight)
    assert torch.allclose(model.conv1.weight, reference.conv1.weight.sum(1, keepdim=True))
    assert model.fc.out_features == 3
    # A small input's 3x3 stem (model=resnet18's default) takes the centre of the file's 7x7
    # filters: it was left random, and the file's stem unused, without a word.
    small = torchvision_classifier(
        "resnet18", 1, 3, small_input=True, weights=str(weights), stem_from_weights=True
    )
    centre = reference.conv1.weight[:, :, 2:5, 2:5].sum(1, keepdim=True)
    assert small.conv1.kernel_size == (3, 3) and torch.allclose(small.conv1.weight, centre)
    # Runs saved before the key (no model.stem_from_weights) are built as they were: rerun alike.
    before = torchvision_classifier("resnet18", 1, 3, small_input=True, weights=str(weights))
    assert not torch.allclose(before.conv1.weight, centre)
    from tests.conftest import compose_cfg

    assert compose_cfg(["model=resnet18"]).model.stem_from_weights is True
    # Untrained, the 3x3 stem keeps its own initialisation (earlier runs rerun alike).
    torch.manual_seed(0)
    untrained = torchvision_classifier("resnet18", 1, 3, small_input=True)
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    fresh = torch.nn.Conv2d(1, 64, 3, 1, 1, bias=False)
    assert torch.equal(untrained.conv1.weight, fresh.weight)


def test_missing_or_mismatched_weights_give_config_errors(tmp_path: Path):
    with pytest.raises(ConfigError, match="no such file. medtrain never downloads weights"):
        torchvision_classifier("resnet18", 1, 2, weights=str(tmp_path / "none.pth"))
    with pytest.raises(ConfigError, match="model.weights='IMAGENET1K_V1': no such file"):
        torchvision_classifier("resnet18", 1, 2, weights="IMAGENET1K_V1")
    with pytest.raises(ConfigError, match="model.weights=True: give the path of a local"):
        torchvision_classifier("resnet18", 1, 2, weights=True)
    bad = tmp_path / "bad.pth"
    torch.save({"fc.weight": torch.zeros(1)}, bad)
    with pytest.raises(ConfigError, match="does not fit resnet18"):
        torchvision_classifier("resnet18", 1, 2, weights=str(bad))
