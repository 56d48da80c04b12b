"""3D data: synthetic volumes of known size, 3D patches, seeded MONAI augmentation that keeps masks
aligned with their volumes, resampling, and MedMNIST3D files with their 2D/3D checks."""

import math

import numpy as np
import pytest
import torch

from medtrain.data.medmnist import MedMNIST
from medtrain.data.segmentation import random_patch
from medtrain.data.synthetic_volumes import SyntheticVolumes, ellipsoid
from medtrain.data.volume_transforms import SeededVolumeAugment, resize_volume
from medtrain.engine.build import build, build_datasets, build_model
from medtrain.errors import ConfigError
from tests.conftest import compose_cfg


def test_an_ellipsoid_holds_its_analytic_volume():
    inside = ellipsoid((40, 50, 60), centre=(20, 24.5, 30), radii=(8, 12, 15))
    assert inside.sum() == pytest.approx(4 / 3 * math.pi * 8 * 12 * 15, rel=0.01)


def test_synthetic_volumes_are_seeded_and_hold_their_classes():
    a = SyntheticVolumes("train", seed=3, num_train=4, num_classes=3, image_size=24)
    b = SyntheticVolumes("train", seed=3, num_train=4, num_classes=3, image_size=24)
    assert all(np.array_equal(x, y) for x, y in zip(a.images, b.images, strict=True))
    assert a.images[0].shape == (24, 24, 24) and a.masks[0].max() <= 2
    # Foreground is brighter than background in every volume.
    for volume, mask in zip(a.images, a.masks, strict=True):
        assert volume[mask > 0].mean() > volume[mask == 0].mean() + 0.1


def volume_pipeline(**overrides):
    cfg = compose_cfg(["augmentation=volume"])
    return SeededVolumeAugment(build(cfg.augmentation.train, "augmentation.train"), **overrides)


def test_augmented_masks_stay_aligned_with_their_volumes():
    """A volume that is its own mask (1 inside, 0 outside): after flips, turns, rotation and
    scaling, the interpolated volume and the nearest-neighbour mask still coincide."""
    augment = volume_pipeline(seed=0)
    mask = ellipsoid((24, 28, 28), (11, 13, 15), (6, 9, 5)).astype(np.int64)
    mask[4:8, 4:10, 18:24] = 1  # a second, box-shaped object breaks the symmetries
    volume = mask[..., None].astype(np.float32)
    moved = 0
    for index in range(24):
        out = augment(index, image=volume, mask=mask)
        image, labels = out["image"][..., 0], out["mask"]
        assert labels.shape == image.shape and set(np.unique(labels)) <= {0, 1}
        # Intensity transforms scale by 0.9-1.1 and shift by +-0.1: the threshold 0.5 holds.
        agreement = ((image > 0.5) == (labels > 0)).mean()
        assert agreement > 0.985, (index, agreement)
        moved += not np.array_equal(labels, mask)
    assert moved >= 20  # the pipeline does move the volumes


def test_volume_augmentation_is_seeded_by_sample_and_epoch():
    augment = volume_pipeline(seed=5)
    volume = np.random.default_rng(0).random((16, 16, 16, 1), dtype=np.float32)
    first = augment(3, image=volume)["image"]
    assert np.array_equal(first, augment(3, image=volume)["image"])
    assert not np.array_equal(first, augment(4, image=volume)["image"])
    augment.set_epoch(1)
    assert not np.array_equal(first, augment(3, image=volume)["image"])


def test_3d_patches_cover_foreground_when_asked():
    rng = np.random.default_rng(0)
    mask = np.zeros((30, 40, 50), dtype=np.int64)
    mask[2:5, 3:6, 40:44] = 1
    image = mask[..., None].astype(np.float32)
    for _ in range(20):
        patch, labels = random_patch(image, mask, (8, 10, 12), rng, foreground_fraction=1.0)
        assert patch.shape == (8, 10, 12, 1) and labels.sum() > 0
        assert np.array_equal(patch[..., 0], labels)
    small, labels = random_patch(image[:4], mask[:4], (8, 10, 12), rng)  # padded, mask alike
    assert small.shape == (8, 10, 12, 1) and np.array_equal(small[..., 0], labels)


def test_resampling_keeps_labels_whole_and_intensities_smooth():
    labels = np.zeros((10, 20, 20), dtype=np.int64)
    labels[2:8, 5:15, 5:15] = 2
    resized = resize_volume(labels, (20, 20, 20), labels=True)
    assert set(np.unique(resized)) == {0, 2} and resized.sum() == pytest.approx(
        2 * 2 * 600, rel=0.1
    )
    volume = labels[..., None].astype(np.float32)
    halved = resize_volume(volume, (5, 10, 10))
    assert halved.shape == (5, 10, 10, 1) and halved.mean() == pytest.approx(volume.mean())


def test_samples_train_on_patches_and_evaluate_whole_volumes_with_their_geometry():
    cfg = compose_cfg(
        [
            "experiment=synthetic_segmentation3d",
            "dataset.num_train=2",
            "dataset.num_val=1",
            "dataset.num_test=1",
            "dataset.target_spacing=[2.0, 2.0, 2.0]",
        ]
    )
    datasets = build_datasets(cfg)
    assert cfg.dataset.spatial_dims == 3
    train = datasets["train"][0]
    assert train["image"].shape == (1, 24, 24, 24) and train["mask"].shape == (24, 24, 24)
    test = datasets["test"][0]
    # The model sees 2 mm voxels (40 x 20 x 20); the mask and intensity stay native (40^3).
    assert test["image"].shape == (1, 40, 20, 20) and test["mask"].shape == (40, 40, 40)
    assert test["intensity"].shape == (40, 40, 40, 1)
    assert test["spacing"].tolist() == [2.0, 1.0, 1.0]
    assert torch.equal(
        test["affine"], torch.diag(torch.tensor([2.0, 1.0, 1.0, 1.0], dtype=torch.float64))
    )
    # Training volumes are resampled to the target spacing before patches are cut.
    image, mask = datasets["train"].training_volume(0)
    assert image.shape == (32, 16, 16, 1) and mask.shape == (32, 16, 16)  # 32^3 at 2 x 1 x 1 mm


def write_npz(path, dims: int):
    rng = np.random.default_rng(0)
    shape = (8, 8, 8) if dims == 3 else (8, 8)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 255, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def test_medmnist3d_files_are_read_as_volumes(tmp_path):
    path = write_npz(tmp_path / "vol3d.npz", 3)
    data = MedMNIST(str(path), "train")
    assert data.spatial_dims == 3 and data.in_channels == 1 and data.num_classes == 2
    assert data[0]["image"].shape == (1, 8, 8, 8)
    batch = data.__getitems__([0, 1, 2])
    assert batch["image"].shape == (3, 1, 8, 8, 8)
    assert torch.equal(batch["image"][1], data[1]["image"])


def test_2d_networks_on_volumes_and_3d_on_images_get_one_line_naming_the_key(tmp_path):
    volumes = str(write_npz(tmp_path / "vol3d.npz", 3))
    images = str(write_npz(tmp_path / "img2d.npz", 2))
    data3d = ["dataset=medmnist", f"dataset.path={volumes}", "augmentation=volume"]
    cases = [
        ([*data3d, "model=cnn", "model.spatial_dims=2"], "set model.spatial_dims=3"),
        ([*data3d, "model=resnet18"], "is a 2D network, but the data are volumes"),
        (
            [
                "dataset=medmnist",
                f"dataset.path={images}",
                "model=unet",
                "model.spatial_dims=3",
                "augmentation=none",
            ],
            "set model.spatial_dims=2",
        ),
    ]
    for overrides, message in cases:
        cfg = compose_cfg(overrides)
        build_datasets(cfg)
        with pytest.raises(ConfigError, match=message) as caught:
            build_model(cfg)
        assert "\n" not in str(caught.value)
    with pytest.raises(ConfigError, match="augmentation=basic is a 2D"):
        build_datasets(compose_cfg(["dataset=medmnist", f"dataset.path={volumes}"]))
    with pytest.raises(ConfigError, match="set dataset.spatial_dims=3"):
        build_datasets(compose_cfg([*data3d, "+dataset.spatial_dims=2"]))
    # Left alone, the network follows the data.
    cfg = compose_cfg([*data3d, "model=resnet"])
    build_datasets(cfg)
    assert build_model(cfg)(torch.zeros(2, 1, 8, 8, 8)).shape == (2, 2)


def test_volumes_asked_of_a_dataset_of_2d_images_are_refused_naming_the_key():
    with pytest.raises(ConfigError, match="dataset.spatial_dims=3: SyntheticClinical reads 2D"):
        build_datasets(compose_cfg(["dataset=synthetic_clinical", "+dataset.spatial_dims=3"]))


def test_patch_area_power_shares_patches_by_volume_size():
    """A volume of twice the voxels of the other gives twice the patches at power 1 (6 patches:
    one each, the 4 left shared 1 : 2 = (1.33, 2.67) -> 2 and 4), each cut from its volume."""
    volumes = SyntheticVolumes(
        "train", num_train=2, patch_size=16, patches_per_image=3, patch_area_power=1.0
    )
    volumes.images[1] = np.concatenate([volumes.images[1]] * 2, axis=0)  # 64 x 32 x 32
    volumes.masks[1] = np.concatenate([volumes.masks[1]] * 2, axis=0)
    assert [volumes.model_shape(i) for i in (0, 1)] == [(32, 32, 32), (64, 32, 32)]
    assert volumes.sample_images == [0, 0, 1, 1, 1, 1] and len(volumes) == 6
    assert [volumes[k]["id"] for k in (1, 2)] == ["train_0000", "train_0001"]
