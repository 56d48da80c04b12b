"""`trainer.augment_on_device`: splits as tensors, augmented and normalized in whole batches."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch

from medtrain.data.device_batches import BatchAugment, DeviceBatches, normalized, uniforms
from medtrain.data.loading import make_loader
from medtrain.data.synthetic import SyntheticLesions
from medtrain.data.transforms import Normalize, SeededAugment
from medtrain.errors import ConfigError
from tests.conftest import ON_CPU, TINY, train_in_process

CPU = torch.device("cpu")


def lesions(pipeline=None, normalize=None, split="train"):
    augment = None if pipeline is None else SeededAugment(pipeline, seed=7, seeding="pipeline")
    return SyntheticLesions(split, seed=0, num_train=40, transform=augment, normalize=normalize)


def test_without_augmentation_the_batches_equal_the_loaders():
    """Same order (the loader's sampler), same images, labels and ids, every epoch."""
    normalize = {"mode": "fixed", "mean": [0.4], "std": [0.15]}
    data = lesions(normalize=normalize)
    loader = make_loader(data, batch_size=16, shuffle=True, seed=3)
    on_device = DeviceBatches(data, batch_size=16, shuffle=True, seed=3, device=CPU)
    assert len(on_device) == len(loader)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        on_device.set_epoch(epoch)
        for want, got in zip(loader, on_device, strict=True):
            assert want["id"] == got["id"]
            assert torch.equal(want["label"], got["label"])
            torch.testing.assert_close(got["image"], want["image"], rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    "mode",
    [
        {"mode": "zscore"},
        {"mode": "minmax"},
        {"mode": "percentile", "percentiles": [2, 98]},
        {"mode": "fixed", "mean": [0.3], "std": [0.2], "invert": "auto"},
        {"mode": "none", "invert": True},
    ],
)
def test_batched_normalization_equals_the_per_image_one(mode):
    rng = np.random.default_rng(0)
    images = rng.random((5, 1, 12, 10)).astype(np.float32) * rng.random((5, 1, 1, 1))
    images[0] += 0.5  # one bright image (inverted by invert=auto)
    normalize = Normalize(**mode)
    want = np.stack([normalize(image.transpose(1, 2, 0)).transpose(2, 0, 1) for image in images])
    got = normalized(torch.from_numpy(images), normalize).numpy()
    np.testing.assert_allclose(got, want, atol=2e-5)


def test_draws_depend_on_the_sample_not_on_its_batch():
    both = uniforms(42, 3, np.array([5, 9]), 4)
    assert np.array_equal(both[1], uniforms(42, 3, np.array([9]), 4)[0])
    assert not np.array_equal(both[0], uniforms(42, 4, np.array([5]), 4)[0])  # the epoch counts
    many = uniforms(0, 0, np.arange(20_000), 2)
    assert many.min() >= 0 and many.max() < 1
    assert abs(many.mean() - 0.5) < 0.01 and abs(np.corrcoef(many.T)[0, 1]) < 0.03


def test_batched_transforms_do_what_they_say():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4) / 32
    ones, zeros = torch.full((2, 8), 0.0), torch.full((2, 8), 0.999)
    flip = BatchAugment(A.Compose([A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]))
    assert torch.equal(flip(x, ones), x.flip(-1).flip(-2))  # u=0 < p: both applied
    assert torch.equal(flip(x, zeros), x)
    mixed = torch.tensor([[0.0, 0.0, 0.9, 0.0], [0.9, 0.0, 0.9, 0.0]])
    assert torch.equal(flip(x, mixed)[0], x[0].flip(-1)) and torch.equal(flip(x, mixed)[1], x[1])
    rot = BatchAugment(A.RandomRotate90(p=1.0))
    quarter = torch.tensor([[0.0, 0.30], [0.0, 0.80]])  # k = 1 and k = 3
    out = rot(x, quarter)
    assert torch.equal(out[0], torch.rot90(x[0], 1, (-2, -1)))
    assert torch.equal(out[1], torch.rot90(x[1], 3, (-2, -1)))
    # An affine map with no rotation, scale 1 and no shift is the identity; 90 degrees is rot90.
    still = BatchAugment(A.Affine(rotate=(0, 0), scale=(1, 1), p=1.0))
    torch.testing.assert_close(still(x, torch.zeros(2, 6)), x, atol=1e-6, rtol=0)
    turn = BatchAugment(A.Affine(rotate=(90, 90), p=1.0, border_mode=1))
    turned = turn(x, torch.zeros(2, 6))
    assert any(torch.allclose(turned, torch.rot90(x, k, (-2, -1)), atol=1e-5) for k in (1, 3))
    bc = BatchAugment(A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.5, p=1))
    u = torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 0.5]])  # alpha 1.5, beta 0.2 / alpha 0.5, beta 0
    want = torch.stack([(x[0] * 1.5 + 0.2).clamp(0, 1), (x[1] * 0.5).clamp(0, 1)])
    torch.testing.assert_close(bc(x, u), want)
    gamma = BatchAugment(A.RandomGamma(gamma_limit=(50, 200), p=1))
    torch.testing.assert_close(gamma(x, torch.tensor([[0.0, 0.0], [0.0, 1.0]]))[1], x[1] ** 2)
    blur = BatchAugment(A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(0.5, 0.5), p=1))
    flat = torch.full((1, 1, 5, 5), 0.25)
    torch.testing.assert_close(blur(flat, torch.zeros(1, 2)), flat)  # a flat image stays flat


def test_augmentation_changes_images_and_repeats_by_epoch():
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=1.0)])
    data = lesions(pipeline, normalize={"mode": "fixed", "mean": [0.4], "std": [0.15]})

    def stream(epoch):
        batches = DeviceBatches(data, batch_size=16, shuffle=True, seed=3, device=CPU)
        batches.set_epoch(epoch)
        return torch.cat([b["image"] for b in batches])

    first = stream(1)
    assert torch.equal(first, stream(1)) and not torch.equal(first, stream(2))
    assert first.shape == (40, 1, 32, 32)


def test_transforms_without_a_batched_version_are_refused_by_name():
    with pytest.raises(ConfigError, match=r"augmentation.train.transforms\[1\]: CLAHE"):
        BatchAugment(A.Compose([A.HorizontalFlip(p=0.5), A.CLAHE(p=0.5)]))
    with pytest.raises(ConfigError, match="shear"):
        BatchAugment(A.Compose([A.Affine(shear=(-5, 5), p=0.5)]))
    with pytest.raises(ConfigError, match=r"transforms\[0\]: Affine interpolation"):
        BatchAugment(A.Compose([A.Affine(interpolation=0, p=0.5)]))
    with pytest.raises(ConfigError, match="ensure_safe_range"):
        BatchAugment(A.Compose([A.RandomBrightnessContrast(ensure_safe_range=True)]))
    with pytest.raises(ConfigError, match="Compose with p < 1"):
        BatchAugment(A.Compose([A.HorizontalFlip()], p=0.5))
    wide = SyntheticLesions("train", seed=0, num_train=8)
    wide.image_size = [16, 24]  # resized by `scaled`: images that are not square
    wide.transform = SeededAugment(A.Compose([A.HorizontalFlip(), A.RandomRotate90()]), seed=0)
    with pytest.raises(ConfigError, match=r"transforms\[1\]: RandomRotate90 needs square"):
        DeviceBatches(wide, batch_size=4, shuffle=True, seed=0, device=CPU)


def test_a_run_on_device_trains_as_the_loader_path(tmp_path):
    """The default experiment with its augmentation on the device: a sound run (other draws than
    the loader path, so close, not equal), refused for segmentation with the key named."""
    loader = train_in_process(tmp_path / "loader", [*TINY, ON_CPU])
    device = train_in_process(
        tmp_path / "device", [*TINY, ON_CPU, "trainer.augment_on_device=true"]
    )
    assert device["test/auc"] == pytest.approx(loader["test/auc"], abs=0.1)
    from medtrain.data.synthetic_segmentation import SyntheticShapes

    with pytest.raises(ConfigError, match="trainer.augment_on_device=true holds image-level"):
        DeviceBatches(
            SyntheticShapes("train", num_train=4), batch_size=2, shuffle=True, seed=0, device=CPU
        )


@pytest.mark.parametrize(
    "options",
    [
        {"rotate": (30, 30)},
        {"rotate": (-20, -20), "scale": (1.2, 1.2), "translate_percent": (0.1, 0.1)},
        {"rotate": (0, 0), "scale": {"x": (0.8, 0.8), "y": (1.1, 1.1)}, "translate_px": (3, 3)},
        {"rotate": (45, 45), "border_mode": 0, "fill": 0.25},
    ],
)
def test_affine_moves_pixels_as_albumentations_does(options):
    """A fixed rotation, scale and shift on an image that is not square: the batched version and
    albumentations' (cv2's warpAffine) agree up to interpolation rounding."""
    rows, cols = np.mgrid[0:24, 0:36].astype(np.float32)
    image = 0.5 + 0.4 * np.exp(-((rows - 8) ** 2 + (cols - 25) ** 2) / 40) - cols / 100
    options = {"border_mode": 1, **options}
    want = A.Affine(p=1.0, **options)(image=image[..., None])["image"][..., 0]
    step = BatchAugment(A.Affine(p=1.0, **options))
    got = step(torch.from_numpy(image)[None, None], torch.zeros(1, 6))[0, 0].numpy()
    inner = (slice(2, -2), slice(2, -2))  # the edge pixels depend on each library's border rule
    assert np.abs(got - want)[inner].max() < 0.02
