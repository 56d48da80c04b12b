"""Datasets, preprocessing and seeded loading."""

import re
import shutil
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from medtrain.data.image_folder import ImageFolder
from medtrain.data.loading import make_loader
from medtrain.data.medmnist import MedMNIST
from medtrain.data.readers import read_image_file
from medtrain.data.synthetic import SyntheticLesions
from medtrain.data.transforms import Normalize, SeededAugment, match_channels, to_float01
from medtrain.errors import ConfigError, DataError
from tests.conftest import ROOT, SHARED_DATA


def write_npz(path: Path, shape=(28, 28), labels_per_split=None, n=(20, 6, 8), seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = (
            labels_per_split(count, rng)
            if labels_per_split
            else rng.integers(0, 3, (count, 1), dtype=np.uint8)
        )
    np.savez(path, **arrays)
    return arrays


def test_synthetic_is_seeded_and_balanced():
    a, b = (
        SyntheticLesions("train", seed=3, num_train=50),
        SyntheticLesions("train", seed=3, num_train=50),
    )
    c = SyntheticLesions("train", seed=4, num_train=50)
    assert np.array_equal(a.images, b.images) and not np.array_equal(a.images, c.images)
    assert a.labels.sum() == 25
    sample = a[0]
    assert sample["image"].shape == (1, 32, 32) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["id"] == "train_00000"
    # Positive images are brighter in the centre region on average (the blob).
    pos, neg = a.images[a.labels == 1].mean(), a.images[a.labels == 0].mean()
    assert pos > neg


def test_medmnist_infers_grey_multiclass(tmp_path):
    arrays = write_npz(tmp_path / "d.npz")
    ds = MedMNIST(str(tmp_path / "d.npz"), "val")
    assert (ds.in_channels, ds.multilabel, len(ds)) == (1, False, 6)
    every = np.concatenate([arrays[f"{s}_labels"] for s in ("train", "val", "test")])
    assert ds.num_classes == int(every.max()) + 1
    assert ds[2]["label"].item() == arrays["val_labels"][2, 0]
    expected = (arrays["val_images"][2] / 255.0 - 0.5) / 0.5
    assert torch.allclose(
        ds[2]["image"][0], torch.from_numpy(expected.astype(np.float32)), atol=1e-6
    )


def test_medmnist_rgb_multilabel_and_resize(tmp_path):
    write_npz(
        tmp_path / "m.npz",
        shape=(64, 64, 3),
        labels_per_split=lambda c, rng: rng.integers(0, 2, (c, 5), dtype=np.uint8),
    )
    ds = MedMNIST(str(tmp_path / "m.npz"), "train", image_size=32)
    assert (ds.in_channels, ds.num_classes, ds.multilabel) == (3, 5, True)
    sample = ds[0]
    assert sample["image"].shape == (3, 32, 32)
    assert sample["label"].dtype == torch.float32 and sample["label"].shape == (5,)
    grey = MedMNIST(str(tmp_path / "m.npz"), "train", in_channels=1)
    assert grey[0]["image"].shape == (1, 64, 64)


def test_medmnist_errors_name_the_file_and_key(tmp_path):
    np.savez(tmp_path / "bad.npz", train_images=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"bad.npz: missing keys .*'train_labels'"):
        MedMNIST(str(tmp_path / "bad.npz"), "train")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"junk.npz: not a .npz file \(a MedMNIST file is a zip"):
        MedMNIST(str(tmp_path / "junk.npz"), "train")
    (tmp_path / "cut.npz").write_bytes((tmp_path / "bad.npz").read_bytes()[:60])  # a cut zip
    with pytest.raises(DataError, match="cut.npz: not a readable .npz file"):
        MedMNIST(str(tmp_path / "cut.npz"), "train")
    with pytest.raises(DataError, match="a folder; dataset=medmnist reads one .npz file"):
        MedMNIST(str(tmp_path), "train")
    write_npz(tmp_path / "d.npz")
    with pytest.raises(DataError, match="outside the 2 classes"):
        MedMNIST(str(tmp_path / "d.npz"), "train", num_classes=2)


def make_folder(root: Path, per_class=10, bits=8, size=(12, 10), ext=".png"):
    rng = np.random.default_rng(0)
    for name in ("benign", "malignant"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            dtype = np.uint8 if bits == 8 else np.uint16
            pixels = rng.integers(0, np.iinfo(dtype).max, size, dtype=dtype)
            Image.fromarray(pixels).save(root / name / f"{i}{ext}")


@pytest.mark.parametrize(("bits", "ext"), [(8, ".png"), (16, ".png"), (16, ".tif"), (8, ".jpg")])
def test_read_image_keeps_bit_depth(tmp_path, bits, ext):
    pixels = (np.arange(120).reshape(12, 10) * (200 if bits == 16 else 2)).astype(
        np.uint16 if bits == 16 else np.uint8
    )
    Image.fromarray(pixels).save(tmp_path / f"x{ext}")
    read = read_image_file(tmp_path / f"x{ext}")
    assert read.dtype == (np.uint16 if bits == 16 else np.uint8)
    if ext != ".jpg":
        assert np.array_equal(read, pixels)
    assert to_float01(read).max() <= 1.0


def test_image_folder_stratified_split_is_seeded_and_disjoint(tmp_path):
    make_folder(tmp_path, per_class=20, bits=16)
    splits = {
        s: ImageFolder(str(tmp_path), s, val_fraction=0.2, test_fraction=0.2, seed=1, image_size=8)
        for s in ("train", "val", "test")
    }
    assert [len(splits[s]) for s in ("train", "val", "test")] == [24, 8, 8]
    assert all(splits[s].labels.sum() == len(splits[s]) // 2 for s in splits)  # stratified
    ids = [set(d.ids) for d in splits.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = ImageFolder(
        str(tmp_path), "val", val_fraction=0.2, test_fraction=0.2, seed=1, image_size=8
    )
    assert again.ids == splits["val"].ids
    assert splits["train"].class_names == ["benign", "malignant"]
    assert splits["train"][0]["image"].shape == (1, 8, 8)


def test_training_data_with_non_finite_pixels_is_refused_naming_the_file(tmp_path):
    from tests.hostile_files import nan_tiff

    make_folder(tmp_path, per_class=4, bits=8)
    (tmp_path / "benign" / "corrupt.tif").write_bytes(nan_tiff())
    splits = [ImageFolder(str(tmp_path), s, image_size=8) for s in ("train", "val", "test")]
    (split,) = [d for d in splits if "benign/corrupt.tif" in d.ids]
    with pytest.raises(DataError, match=r"corrupt\.tif: pixel values are not finite"):
        split[split.ids.index("benign/corrupt.tif")]


def test_patient_subfolders_split_image_by_image_are_warned_about(tmp_path):
    """<class>/<patient>/<image>: the seeded split draws images, so a patient's images can
    straddle splits; said (the data check prints it), and not for flat class folders."""
    for patient in ("P1", "P2", "P3", "P4"):
        make_folder(tmp_path / "nested" / "x", per_class=3)
        for name in ("benign", "malignant"):
            target = tmp_path / "nested" / name / patient
            target.mkdir(parents=True)
            for image in (tmp_path / "nested" / "x" / name).iterdir():
                image.rename(target / image.name)
        shutil.rmtree(tmp_path / "nested" / "x")
    data = ImageFolder(str(tmp_path / "nested"), "train", image_size=8)
    said = data.data_warnings["nested_folders"]
    assert said.startswith(f"{tmp_path / 'nested'}: 24 images lie in subfolders of their class")
    assert re.search(r"\(e\.g\. (benign|malignant)/P\d/\d\.png\), and val and test are drawn", said)
    make_folder(tmp_path / "flat", per_class=6)
    assert not getattr(
        ImageFolder(str(tmp_path / "flat"), "train", image_size=8), "data_warnings", {}
    )


def test_a_class_folder_without_images_is_named(tmp_path):
    """A 3-class folder whose third class holds no readable image trained as binary without a
    word; its class names then failed with "3 names for 2 classes" alone."""
    make_folder(tmp_path, per_class=6)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.bmp").write_bytes(b"BM")
    said = (
        f"{tmp_path}: other/ hold(s) no .png images and is left out of the classes; add its "
        "images (or set dataset.extensions to their suffix), or remove the folder"
    )
    data = ImageFolder(str(tmp_path), "train", image_size=8, extensions=(".png",))
    assert data.class_names == ["benign", "malignant"]
    assert data.data_warnings == {"empty_class_folders": said}
    with pytest.raises(ConfigError) as err:
        names = ["benign", "malignant", "other"]
        ImageFolder(str(tmp_path), "train", image_size=8, extensions=(".png",), class_names=names)
    assert str(err.value) == (
        "dataset.class_names=['benign', 'malignant', 'other'] names ['other'], which have no "
        f"class folder with images in {tmp_path} (the folders: ['benign', 'malignant']); {said}"
    )


def test_class_names_name_the_class_folders_in_index_order(tmp_path):
    """`dataset.class_names` orders the classes by the folders' names: listed in another order
    than the folders sort, each image keeps its folder's class (they were renamed by position,
    which swapped the labels); a name that is no folder's, or a folder left out, is an error."""
    make_folder(tmp_path, per_class=6)
    sorted_ = ImageFolder(str(tmp_path), "train", image_size=8, val_fraction=0, test_fraction=0)
    swapped = ImageFolder(
        str(tmp_path),
        "train",
        image_size=8,
        val_fraction=0,
        test_fraction=0,
        class_names=["malignant", "benign"],
    )
    assert sorted_.class_names == ["benign", "malignant"]
    assert swapped.class_names == ["malignant", "benign"]
    for ds in (sorted_, swapped):
        for file, label in zip(ds.files, ds.labels, strict=True):
            assert ds.class_names[label] == file.parent.name
    with pytest.raises(DataError) as err:
        ImageFolder(str(tmp_path), "train", image_size=8, class_names=["Benign", "malignant"])
    assert str(err.value) == (
        f"{tmp_path}: class folder(s) ['benign'] are not in dataset.class_names=['Benign', "
        "'malignant'] ('benign' is like 'Benign': a typo?); the names are the class folders' "
        "names, in the order of the class indices"
    )
    with pytest.raises(ConfigError, match="names \\['benign'\\] twice"):
        ImageFolder(str(tmp_path), "train", image_size=8, class_names=["benign", "benign"])


def test_a_class_of_one_image_that_stops_the_split_is_named_with_its_like(tmp_path):
    """One image in `malignnt/` beside `malignant/`: the stratified split cannot be made, and the
    error says which class and that its name is like another's."""
    make_folder(tmp_path, per_class=6)
    (tmp_path / "malignnt").mkdir()
    shutil.copy(tmp_path / "malignant" / "0.png", tmp_path / "malignnt" / "0.png")
    with pytest.raises(DataError) as err:
        ImageFolder(str(tmp_path), "train", image_size=8)
    assert str(err.value) == (
        f"{tmp_path}: cannot make a stratified test split of 0.15: too few images of class "
        "malignnt (1) ('malignnt' is like 'malignant': a misspelt folder?); add images, or give "
        "the splits as train/, val/ and test/ folders"
    )


def test_image_folder_with_split_folders(tmp_path):
    make_folder(tmp_path / "train", per_class=6)
    make_folder(tmp_path / "test", per_class=2)
    train = ImageFolder(str(tmp_path), "train", val_fraction=0.5, image_size=8)
    test = ImageFolder(str(tmp_path), "test", val_fraction=0.5, image_size=8)
    val = ImageFolder(str(tmp_path), "val", val_fraction=0.5, image_size=8)
    assert (len(train), len(val), len(test)) == (6, 6, 4)
    assert all(i.startswith("test/") for i in test.ids)


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        ImageFolder(str(tmp_path / "missing"), "train")
    for name in ("a", "b"):  # DICOM class folders: the extension to set is named
        (tmp_path / "dcm" / name).mkdir(parents=True)
        (tmp_path / "dcm" / name / "1.dcm").write_bytes(b"x")
    with pytest.raises(DataError, match=r"\(the files there end in \['.dcm'\]: set dataset"):
        ImageFolder(str(tmp_path / "dcm"), "train", extensions=(".png", ".jpg"))
    (tmp_path / "rare" / "a").mkdir(parents=True)  # a class of one image: named, with a way out
    (tmp_path / "rare" / "b").mkdir()
    for k in range(6):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "rare" / "a" / f"{k}.png")
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / "rare" / "b" / "only.png")
    with pytest.raises(DataError, match=r"too few images of class b \(1\); add images, or give"):
        ImageFolder(str(tmp_path / "rare"), "train")
    tmp_path = tmp_path / "png"
    make_folder(tmp_path, per_class=4)
    (tmp_path / "benign" / "3.png").write_bytes(b"\x89PNG broken")
    # The broken file is reported by name whether it is met while building a split or while loading it.
    with pytest.raises(DataError, match="3.png: cannot read image"):
        for split in ("train", "val", "test"):
            ds = ImageFolder(
                str(tmp_path), split, val_fraction=0.25, test_fraction=0.25, image_size=8
            )
            [ds[i] for i in range(len(ds))]


def test_normalize_modes():
    image = np.array([[[0.2], [0.6]], [[0.4], [1.0]]], dtype=np.float32)
    assert np.allclose(Normalize("fixed", [0.5], [0.25])(image), (image - 0.5) / 0.25)
    z = Normalize("zscore")(image)
    assert z.mean() == pytest.approx(0, abs=1e-6) and z.std() == pytest.approx(1, abs=1e-5)
    mm = Normalize("minmax")(image)
    assert mm.min() == 0 and mm.max() == pytest.approx(1)
    assert np.array_equal(Normalize("none")(image), image)
    # what /info shows: only the settings the mode uses (params keeps all, to rebuild it)
    assert Normalize("zscore", invert="auto").described() == {"mode": "zscore", "invert": "auto"}
    assert Normalize("fixed", [0.5], [0.25]).described() == {
        "mode": "fixed",
        "mean": [0.5],
        "std": [0.25],
        "invert": False,
    }
    assert Normalize("percentile").described()["percentiles"] == [1.0, 99.8]


def test_normalize_percentile_and_invert():
    rng = np.random.default_rng(0)
    image = rng.uniform(0.2, 0.4, size=(40, 50, 1)).astype(np.float32)
    image[0, 0] = 1.0  # one saturated pixel does not set the scale
    out = Normalize("percentile", percentiles=(1, 99))(image)
    low, high = np.percentile(image, [1, 99])
    expected = np.clip((image - low) / (high - low), 0, 1)
    assert np.allclose(out, expected) and out.min() == 0.0 and out.max() == 1.0
    assert np.allclose(Normalize("none", invert=True)(image), 1 - image)
    bright = 1 - image  # median > 0.5: a bright-field-like image
    assert np.allclose(Normalize("none", invert="auto")(bright), image)
    assert np.array_equal(Normalize("none", invert="auto")(image), image)  # dark: unchanged


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [({"percentiles": (50, 10)}, "percentiles"), ({"invert": "yes"}, "invert")],
)
def test_normalize_rejects_bad_values(kwargs, key):
    with pytest.raises(ConfigError, match=f"dataset.normalize.{key}"):
        Normalize("percentile", **kwargs)


def test_channel_conversion():
    rgb = np.random.default_rng(0).random((4, 4, 3)).astype(np.float32)
    grey = match_channels(rgb, 1)
    assert grey.shape == (4, 4, 1)
    assert grey[0, 0, 0] == pytest.approx(rgb[0, 0] @ np.array([0.299, 0.587, 0.114]))
    assert match_channels(grey, 3).shape == (4, 4, 3)


def augmented_stream(num_workers: int, epoch: int) -> torch.Tensor:
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=1.0)])
    ds = SyntheticLesions("train", seed=0, num_train=24, transform=SeededAugment(pipeline, seed=7))
    loader = make_loader(ds, batch_size=8, shuffle=True, seed=7, num_workers=num_workers)
    loader.set_epoch(epoch)
    return torch.cat([b["image"] for b in loader])


def test_augmented_stream_is_identical_across_runs_and_workers():
    first = augmented_stream(0, epoch=1)
    assert torch.equal(first, augmented_stream(0, epoch=1))
    assert torch.equal(first, augmented_stream(2, epoch=1))
    assert not torch.equal(first, augmented_stream(0, epoch=2))


@pytest.mark.parametrize("seeding", ["pipeline", "per_transform"])
def test_persistent_workers_follow_the_epoch(seeding):
    """Workers started once and kept across epochs see each new epoch (written to shared memory by
    set_epoch): epoch by epoch, their batches equal those of a loader without workers."""
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=1.0)])

    def loader(workers):
        augment = SeededAugment(pipeline, seed=7, seeding=seeding)
        ds = SyntheticLesions("train", seed=0, num_train=24, transform=augment)
        return make_loader(ds, batch_size=8, shuffle=True, seed=7, num_workers=workers)

    kept, plain = loader(2), loader(0)
    assert kept.persistent_workers
    streams = []
    for epoch in range(3):
        kept.set_epoch(epoch)
        plain.set_epoch(epoch)
        streams.append(torch.cat([b["image"] for b in kept]))
        assert torch.equal(streams[-1], torch.cat([b["image"] for b in plain]))
    assert not torch.equal(streams[0], streams[1]) and not torch.equal(streams[1], streams[2])


def test_pipeline_seeding_draws_each_transform_independently():
    """`augmentation.seeding=pipeline`: two transforms of p=0.5 are applied together about a
    quarter of the time (as independent draws), where `per_transform` seeds both alike and they are
    applied together every time one is (the defect of runs before release 0.3, kept for them)."""
    image = np.random.default_rng(0).random((8, 8, 1)).astype(np.float32)
    applied = {}
    for seeding in ("pipeline", "per_transform"):
        augment = SeededAugment(
            A.ReplayCompose([A.HorizontalFlip(p=0.5), A.RandomGamma(p=0.5)]),
            seed=3,
            seeding=seeding,
        )
        flags = np.array(
            [
                [t["applied"] for t in augment(i, image=image)["replay"]["transforms"]]
                for i in range(2000)
            ]
        )
        applied[seeding] = flags
    independent = applied["pipeline"]
    assert 900 < independent[:, 0].sum() < 1100 and 900 < independent[:, 1].sum() < 1100
    assert 400 < (independent[:, 0] & independent[:, 1]).sum() < 600
    correlated = applied["per_transform"]
    assert (correlated[:, 0] == correlated[:, 1]).all()
    # The same (seed, epoch, sample) gives the same draws in a new instance.
    again = SeededAugment(
        A.Compose([A.Affine(rotate=(-30, 30), p=1.0)]), seed=3, seeding="pipeline"
    )
    other = SeededAugment(
        A.Compose([A.Affine(rotate=(-30, 30), p=1.0)]), seed=3, seeding="pipeline"
    )
    other(11, image=image)
    assert all(
        np.array_equal(again(i, image=image)["image"], other(i, image=image)["image"])
        for i in range(20)
    )


def test_unknown_seeding_is_refused():
    with pytest.raises(ConfigError, match="augmentation.seeding='each'"):
        SeededAugment(A.Compose([]), seed=0, seeding="each")


@pytest.mark.realdata
@pytest.mark.skipif(
    not (SHARED_DATA / "medmnist" / "pneumoniamnist.npz").exists(), reason="shared data absent"
)
def test_pneumoniamnist_official_split():
    path = str(SHARED_DATA / "medmnist" / "pneumoniamnist.npz")
    sizes = {s: len(MedMNIST(path, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 4708, "val": 524, "test": 624}
    ds = MedMNIST(path, "test")
    assert (ds.in_channels, ds.num_classes, ds.multilabel) == (1, 2, False)


def test_image_folder_ignores_archive_debris_and_reads_big_endian_tiff(tmp_path):
    make_folder(tmp_path, per_class=6)
    (tmp_path / "__MACOSX" / "benign").mkdir(parents=True)
    (tmp_path / "__MACOSX" / "benign" / "0.png").write_bytes(b"junk")
    (tmp_path / "benign" / "._0.png").write_bytes(b"junk")
    ds = ImageFolder(str(tmp_path), "train", val_fraction=0.25, test_fraction=0.25, image_size=8)
    assert ds.class_names == ["benign", "malignant"] and not any("._" in i for i in ds.ids)
    big = (np.arange(120).reshape(12, 10) * 500).astype(">u2")
    Image.fromarray(big.astype(np.uint16)).save(tmp_path / "le.tif")
    Image.frombytes("I;16B", (10, 12), big.tobytes()).save(tmp_path / "be.tif")
    read = read_image_file(tmp_path / "be.tif")
    assert read.dtype == np.uint16 and np.array_equal(read, big.astype(np.uint16))
    assert to_float01(read).max() == pytest.approx(119 * 500 / 65535)


def test_image_folder_channels_decided_once_for_all_splits(tmp_path):
    make_folder(tmp_path, per_class=6)
    rgb = np.zeros((12, 10, 3), dtype=np.uint8)
    for name in ("benign", "malignant"):
        for i in range(3, 6):
            Image.fromarray(rgb).save(tmp_path / name / f"{i}.png")
    splits = [
        ImageFolder(str(tmp_path), s, val_fraction=0.25, test_fraction=0.25, image_size=8)
        for s in ("train", "val", "test")
    ]
    assert len({d.in_channels for d in splits}) == 1
    assert {d[i]["image"].shape[0] for d in splits for i in range(len(d))} == {
        splits[0].in_channels
    }


def test_medmnist_arrays_of_no_image_shape_are_refused_with_the_shape(tmp_path):
    """Volumes are read (tests/data/test_volume_segmentation.py); 5 channels are no image."""
    write_npz(tmp_path / "odd.npz", shape=(8, 8, 8, 5))
    with pytest.raises(
        DataError, match=r"odd.npz: train_images has shape \(20, 8, 8, 8, 5\); expected 2D"
    ):
        MedMNIST(str(tmp_path / "odd.npz"), "train")


@pytest.mark.parametrize(
    "name", ["basic", "xray", "strong", "segmentation", "nuclei", "mri_slices"]
)
def test_reseeding_in_place_draws_what_fresh_generators_draw(name):
    """Every shipped augmentation: the per-sample reseeding that resets generator states in place
    gives, seed for seed, the images and masks of albumentations' own set_random_seed."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from medtrain.data.transforms import generator_holders, reseed

    node = OmegaConf.load(ROOT / "conf" / "augmentation" / f"{name}.yaml").train
    fresh, in_place = instantiate(node, _convert_="all"), instantiate(node, _convert_="all")
    holders = generator_holders(in_place)
    assert holders is not None and len(holders) == 1 + len(in_place.transforms)
    image = np.random.default_rng(0).random((24, 24, 1)).astype(np.float32)
    mask = (image[..., 0] > 0.5).astype(np.uint8)
    for seed in (0, 1, 7, 2**31 - 1, 4_000_000_000):
        fresh.set_random_seed(seed)
        expected = fresh(image=image, mask=mask)
        reseed(in_place, holders, seed)
        got = in_place(image=image, mask=mask)
        assert np.array_equal(got["image"], expected["image"]) and np.array_equal(
            got["mask"], expected["mask"]
        )


def test_a_transform_that_seeds_itself_otherwise_keeps_albumentations_seeding():
    from medtrain.data.transforms import generator_holders

    class Own(A.HorizontalFlip):
        def set_random_seed(self, seed):
            super().set_random_seed(seed)

    assert generator_holders(A.Compose([Own(p=0.5)])) is None


def test_pipeline_seeding_pickles_with_its_stream():
    """Loader workers started by spawn (macOS, Windows) get the augmentation pickled: the copy
    draws what the original draws, its pipeline still drawing from the copy's own generators."""
    import pickle

    from medtrain.data.file_cache import DecodedCache

    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=0.7)])
    augment = SeededAugment(pipeline, seed=5, seeding="pipeline")
    copy = pickle.loads(pickle.dumps(augment))
    assert copy.pipeline.random_generator is copy.stream[0]
    assert copy.pipeline.py_random is copy.stream[1]
    image = np.random.default_rng(1).random((16, 16, 1)).astype(np.float32)
    for index in range(10):
        assert np.array_equal(
            augment(index, image=image)["image"], copy(index, image=image)["image"]
        )
    cache = DecodedCache(1)
    cache.get("a", lambda: np.zeros(4, np.uint8))
    assert list(pickle.loads(pickle.dumps(cache)).arrays) == ["a"]


def batch_of_samples(ds, indices):
    from medtrain.data.loading import collate

    return collate([ds[i] for i in indices])


def assert_same_batch(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for key, value in want.items():
        if torch.is_tensor(value):
            assert got[key].dtype == value.dtype and torch.equal(got[key], value), key
        elif isinstance(value, list) and value and torch.is_tensor(value[0]):
            assert all(torch.equal(a, b) for a, b in zip(got[key], value, strict=True)), key
        else:
            assert got[key] == value, key


@pytest.mark.parametrize("kind", ["augmented", "multilabel", "regression", "tabular", "sizes"])
def test_a_batch_fetched_whole_equals_its_samples_collated(kind, tmp_path):
    """`ImageDataset.__getitems__` (what the loader fetches) gives the batch that collating the
    samples one by one gives, for every kind of image-level sample."""
    from medtrain.data.synthetic_clinical import SyntheticClinical

    if kind == "augmented":
        pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-30, 30), p=0.8)])
        augment = SeededAugment(pipeline, seed=3, seeding="pipeline")
        ds = SyntheticLesions("train", seed=0, num_train=24, transform=augment)
    elif kind == "multilabel":
        labels = lambda c, rng: rng.integers(0, 2, (c, 4), dtype=np.uint8)  # noqa: E731
        write_npz(tmp_path / "m.npz", shape=(12, 12, 3), labels_per_split=labels)
        ds = MedMNIST(str(tmp_path / "m.npz"), "train")
    elif kind == "regression":
        values = lambda c, rng: rng.random((c, 2)).astype(np.float64)  # noqa: E731
        write_npz(tmp_path / "r.npz", labels_per_split=values)
        ds = MedMNIST(str(tmp_path / "r.npz"), "train", regression=True)
    elif kind == "tabular":
        ds = SyntheticClinical("train", seed=0, num_train=24)
    else:  # images of several sizes, kept at their own size: the batch keeps a list
        folder = tmp_path / "imgs"
        for label in ("a", "b"):
            (folder / label).mkdir(parents=True)
            for k in range(4):
                size = (10 + k, 12 + 2 * k)
                Image.fromarray(np.full(size, 40 * k, np.uint8)).save(folder / label / f"{k}.png")
        ds = ImageFolder(str(folder), "train", val_fraction=0.0, test_fraction=0.0)
    indices = [5, 0, 3, 3, 1] if len(ds) > 5 else [2, 0, 1]
    if hasattr(ds, "set_epoch"):
        ds.set_epoch(2)
    got = ds.__getitems__(indices)
    assert isinstance(got, dict)
    assert isinstance(got["image"], list) == (kind == "sizes")
    if kind != "sizes":  # allocated as torch.stack allocates: kernels then round alike on reruns
        assert got["image"].data_ptr() % 64 == 0
    assert_same_batch(got, batch_of_samples(ds, indices))
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=1)
    loader.set_epoch(1)
    order = [i for batch in loader.batch_sampler for i in batch]
    loader.set_epoch(1)
    fetched = list(loader)
    start = 0
    for batch in fetched:
        n = len(batch["id"])
        assert_same_batch(batch, batch_of_samples(ds, order[start : start + n]))
        start += n


@pytest.mark.parametrize("value", [-5, 0, "abc", [32], [32, 0], [32, 32, 32, 32], 1.5, True])
def test_a_wrong_image_size_is_a_config_error_naming_the_key(value):
    """image_folder and manifest passed it on: OpenCV's resize failed (`inv_scale_x > 0`), or an
    unpacking did, after the data check had passed it."""
    from medtrain.data.base import checked_image_size

    with pytest.raises(ConfigError, match=r"dataset.image_size=.*: give a positive whole number"):
        checked_image_size(value, 2 if isinstance(value, list) and len(value) == 3 else None)


def test_image_sizes_of_images_and_volumes_pass():
    from medtrain.data.base import checked_image_size

    assert checked_image_size(32, 2) == 32
    assert checked_image_size([24, 32], None) == [24, 32]
    assert checked_image_size([8, 24, 32], 3) == [8, 24, 32]
    assert checked_image_size(None, 2) is None


@pytest.mark.parametrize(
    "val, test, said",
    [
        (0.5, 0.5, "dataset.val_fraction + dataset.test_fraction = 1 leaves no training images"),
        (1.5, 0.1, "dataset.val_fraction=1.5 must be a number in [0, 1)"),
        (0.1, "a", "dataset.test_fraction='a' must be a number in [0, 1)"),
    ],
)
def test_split_fractions_that_leave_no_training_images_are_named(tmp_path, val, test, said):
    """image_folder passed a sum of 1 on to scikit-learn ("...Got 1.0 instead.")."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(tmp_path / name / f"{i}.png")
    with pytest.raises(ConfigError, match=re.escape(said)):
        ImageFolder(str(tmp_path), "train", val_fraction=val, test_fraction=test)
