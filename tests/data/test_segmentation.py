"""Segmentation datasets: masks from files, splits, joint augmentation, patches, and clear errors."""

from pathlib import Path

import albumentations as A
import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from medtrain.data.loading import collate
from medtrain.data.masks import read_mask_file
from medtrain.data.readers import file_spacing
from medtrain.data.seg_folder import SegFolder
from medtrain.data.segmentation import patch_shares, random_patch
from medtrain.data.synthetic_segmentation import SyntheticShapes
from medtrain.data.transforms import SeededAugment
from medtrain.engine.build import build, build_datasets
from medtrain.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA, compose_cfg


def disc_pair(size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 image and its {0, 255} mask with a few discs."""
    mask = np.zeros((size, size), np.uint8)
    for _ in range(3):
        centre = tuple(int(v) for v in rng.integers(8, size - 8, 2))
        cv2.circle(mask, centre, int(rng.integers(3, 8)), 255, -1)
    image = (40 + mask // 2 + rng.integers(0, 20, mask.shape)).astype(np.uint8)
    return image, mask


def make_folder(root: Path, n: int = 20, size: int = 40, mask_ext: str = ".png") -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        image, mask = disc_pair(size + i % 3, rng)
        Image.fromarray(image).save(root / "images" / f"case{i:02d}.png")
        Image.fromarray(mask).save(root / "masks" / f"case{i:02d}{mask_ext}")
    return root


def test_mask_values_become_classes(tmp_path):
    binary = np.array([[0, 255], [255, 0]], np.uint8)
    Image.fromarray(binary).save(tmp_path / "b.png")
    assert read_mask_file(tmp_path / "b.png").tolist() == [[0, 1], [1, 0]]
    # All foreground, stored as 255 (no 0 to tell it from class 255): binary all the same.
    Image.fromarray(np.full((2, 2), 255, np.uint8)).save(tmp_path / "full.png")
    assert read_mask_file(tmp_path / "full.png").tolist() == [[1, 1], [1, 1]]
    assert read_mask_file(tmp_path / "full.png", num_classes=256).tolist() == [[255] * 2] * 2
    multi = np.array([[0, 128], [255, 0]], np.uint8)
    Image.fromarray(multi).save(tmp_path / "m.png")
    mapped = read_mask_file(tmp_path / "m.png", {0: 0, 128: 1, 255: 2})
    assert mapped.tolist() == [[0, 1], [2, 0]]
    with pytest.raises(DataError, match=r"m.png: mask values \[128\]"):
        read_mask_file(tmp_path / "m.png", {0: 0, 255: 1})
    indices = np.array([[0, 1], [2, 3]], np.uint8)
    Image.fromarray(indices).save(tmp_path / "i.png")
    assert read_mask_file(tmp_path / "i.png").tolist() == [[0, 1], [2, 3]]
    colour = np.zeros((2, 2, 3), np.uint8)
    colour[0, 0] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="c.png: colour mask"):
        read_mask_file(tmp_path / "c.png")


def test_multi_class_masks_keep_class_two_when_it_is_the_only_class(tmp_path):
    only_two = np.array([[0, 2], [2, 0]], np.uint8)
    Image.fromarray(only_two).save(tmp_path / "two.png")
    assert read_mask_file(tmp_path / "two.png", num_classes=3).tolist() == [[0, 2], [2, 0]]
    assert read_mask_file(tmp_path / "two.png").tolist() == [[0, 1], [1, 0]]  # {0, v}: binary
    # through the dataset: with dataset.num_classes=3 a mask showing only class 2 is not relabelled
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for name, values in (("a", (0, 2)), ("b", (0, 1, 2)), ("c", (0, 1))):
        mask = np.resize(np.array(values, np.uint8), (8, 8))
        Image.fromarray(mask * 40).save(root / "images" / f"{name}.png")
        Image.fromarray(mask).save(root / "masks" / f"{name}.png")
    splits = {"train": ["b"], "val": ["c"], "test": ["a"]}
    test = SegFolder(str(root), "test", splits=splits, num_classes=3)
    assert set(np.unique(test[0]["mask"].numpy())) == {0, 2}
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "masks" / "c.jpg")
    with pytest.raises(DataError, match=r"c.jpg: a JPEG mask of 3 classes needs class_values"):
        read_mask_file(root / "masks" / "c.jpg", num_classes=3)


def test_jpeg_masks_are_thresholded(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    cv2.circle(mask, (32, 32), 15, 255, -1)
    Image.fromarray(mask).save(tmp_path / "m.jpg", quality=60)
    read = read_mask_file(tmp_path / "m.jpg")
    assert set(np.unique(read)) == {0, 1}
    assert np.mean(read == (mask > 0)) > 0.99
    # Small discs at quality 50: the most ringing, still binary.
    small = np.zeros((64, 64), np.uint8)
    for x in range(8, 64, 12):
        cv2.circle(small, (x, x), 3, 255, -1)
    Image.fromarray(small).save(tmp_path / "s.jpg", quality=50)
    assert np.mean(read_mask_file(tmp_path / "s.jpg") == (small > 0)) > 0.99
    # Drawn large and shrunk smoothly (LANCZOS): values between, spread, no level of their own.
    drawn = np.zeros((256, 256), np.uint8)
    for x in range(20, 256, 40):
        cv2.circle(drawn, (x, x), 32, 255, -1)
    shrunk = Image.fromarray(drawn).resize((64, 64), Image.LANCZOS)
    shrunk.save(tmp_path / "shrunk.jpg", quality=90)
    assert np.mean(read_mask_file(tmp_path / "shrunk.jpg") == (np.asarray(shrunk) > 127)) > 0.98
    # A third level (an interior of 128 in a border of 255) is no binary mask: it was cut at its
    # own value, a quarter of the foreground lost without a word.
    cv2.circle(mask, (32, 32), 11, 128, -1)
    Image.fromarray(mask).save(tmp_path / "three.jpg", quality=75)
    with pytest.raises(DataError, match=r"three.jpg: a JPEG mask read as binary holds a level"):
        read_mask_file(tmp_path / "three.jpg")
    three = read_mask_file(tmp_path / "three.jpg", {0: 0, 128: 1, 255: 2}, num_classes=3)
    assert np.mean(three == np.select([mask == 128, mask == 255], [1, 2], 0)) > 0.98


def test_spacing_from_metric_png_and_tiff_but_not_screen_dpi(tmp_path):
    image = Image.fromarray(np.zeros((4, 4), np.uint8))
    # 0.25 mm per pixel = 4000 pixels per metre = 101.6 dpi
    image.save(tmp_path / "metric.png", dpi=(101.6, 101.6))
    assert file_spacing(tmp_path / "metric.png") == pytest.approx((0.25, 0.25), rel=1e-3)
    image.save(tmp_path / "screen.png", dpi=(72, 72))
    assert file_spacing(tmp_path / "screen.png") is None
    image.save(tmp_path / "plain.png")
    assert file_spacing(tmp_path / "plain.png") is None
    image.save(tmp_path / "cm.tif", resolution=20.0, resolution_unit=3)  # 20 px/cm = 0.5 mm
    assert file_spacing(tmp_path / "cm.tif") == pytest.approx((0.5, 0.5))
    image.save(tmp_path / "inch.tif", resolution=300.0, resolution_unit=2)
    assert file_spacing(tmp_path / "inch.tif") is None


def test_spacing_from_imagej_and_ome_tiff(tmp_path):
    tifffile = pytest.importorskip("tifffile")
    pixels = np.zeros((6, 8), np.uint8)
    # ImageJ/Fiji: pixels per unit in X/YResolution, the unit in the description (as Fiji writes µm)
    for unit in ("um", "\\u00B5m", "micron"):
        path = tmp_path / f"imagej_{len(unit)}.tif"
        tifffile.imwrite(
            path, pixels, imagej=True, resolution=(1 / 0.65, 1 / 0.5), metadata={"unit": unit}
        )
        assert file_spacing(path) == pytest.approx((0.0005, 0.00065))
    tifffile.imwrite(tmp_path / "imagej_no_unit.tif", pixels, imagej=True)
    assert file_spacing(tmp_path / "imagej_no_unit.tif") is None
    # OME-TIFF: PhysicalSizeX/Y, in µm unless the unit attribute says otherwise
    ome = {"axes": "YX", "PhysicalSizeX": 0.325, "PhysicalSizeY": 0.5}
    tifffile.imwrite(tmp_path / "ome.tif", pixels, ome=True, metadata=ome)
    assert file_spacing(tmp_path / "ome.tif") == pytest.approx((0.0005, 0.000325))
    in_mm = {**ome, "PhysicalSizeXUnit": "mm", "PhysicalSizeYUnit": "mm"}
    tifffile.imwrite(tmp_path / "ome_mm.tif", pixels, ome=True, metadata=in_mm)
    assert file_spacing(tmp_path / "ome_mm.tif") == pytest.approx((0.5, 0.325))


def test_seg_folder_refuses_images_with_and_without_a_pixel_spacing(tmp_path):
    root = make_folder(tmp_path / "data", n=6)
    image = np.array(Image.open(root / "images" / "case02.png"))
    Image.fromarray(image).save(root / "images" / "case02.png", dpi=(101.6, 101.6))  # 0.25 mm
    with pytest.raises(DataError, match=r"1 image states a pixel spacing.*5 do not.*case00"):
        SegFolder(str(root), "train", val_size=1, test_size=1)
    # dataset.spacing fills in for the others; file_spacing=false ignores the files
    SegFolder(str(root), "train", val_size=1, test_size=1, spacing=[0.25, 0.25])
    assert (
        SegFolder(str(root), "test", val_size=1, test_size=1, file_spacing=False)[0]["spacing"]
        .isnan()
        .all()
    )


def test_a_mask_without_its_image_is_warned_about(tmp_path):
    """A misspelt image name leaves its mask unused: said, naming the mask."""
    root = make_folder(tmp_path / "data", n=6)
    assert not getattr(SegFolder(str(root), "train", val_size=1, test_size=1), "data_warnings", {})
    (root / "images" / "case03.png").rename(root / "images" / "cas03.png")
    (root / "masks" / "case03.png").rename(root / "masks" / "cas03.png")
    (root / "masks" / "extra.png").write_bytes((root / "masks" / "case00.png").read_bytes())
    data = SegFolder(str(root), "train", val_size=1, test_size=1)
    assert data.data_warnings["masks_without_image"] == (
        f"{root / 'masks'}: 1 mask(s) match no image in {root / 'images'} and are not used "
        "(e.g. extra.png): a misspelt or missing image?"
    )


def test_seg_folder_seeded_split_by_counts_and_explicit_lists(tmp_path):
    root = make_folder(tmp_path / "data", n=20)
    splits = {
        s: SegFolder(str(root), s, val_size=4, test_size=3, seed=5).ids
        for s in ("train", "val", "test")
    }
    assert [len(splits[s]) for s in ("train", "val", "test")] == [13, 4, 3]
    assert sorted(sum(splits.values(), [])) == [f"case{i:02d}" for i in range(20)]
    again = SegFolder(str(root), "test", val_size=4, test_size=3, seed=5).ids
    other = SegFolder(str(root), "test", val_size=4, test_size=3, seed=6).ids
    assert again == splits["test"] and other != splits["test"]
    fractions = SegFolder(str(root), "val", val_size=0.25, test_size=0.1, seed=5)
    assert len(fractions) == 5
    explicit = {"train": ["case00", "case01"], "val": ["case02"], "test": ["case03"]}
    assert SegFolder(str(root), "val", splits=explicit).ids == ["case02"]
    split_file = tmp_path / "splits.json"
    split_file.write_text('{"train": ["case05"], "val": ["case06"], "test": ["case07", "case08"]}')
    assert SegFolder(str(root), "test", split_file=str(split_file)).ids == ["case07", "case08"]
    with pytest.raises(DataError, match="not found among the images"):
        SegFolder(str(root), "val", splits={"train": ["nope"], "val": [], "test": []})
    with pytest.raises(ConfigError, match="leave no training images"):
        SegFolder(str(root), "val", val_size=15, test_size=5)


@pytest.mark.parametrize(
    "splits, message",
    [
        (  # an image in two splits would leak the test set into training
            {"train": ["case00", "case15"], "val": ["case01"], "test": ["case15"]},
            "dataset.splits: 'case15' is in both the train and the test list",
        ),
        (
            {"train": ["case00"], "val": ["case01"], "test": ["case02"], "tset": ["case03"]},
            "dataset.splits has a list 'tset': the splits are ['train', 'val', 'test']",
        ),
        ({"train": [], "val": ["case01"], "test": ["case02"]}, "the train list is empty"),
        (
            {"train": ["case00", "case00"], "val": ["case01"], "test": ["case02"]},
            "'case00' is twice in the train list",
        ),
        ({"train": ["case00"], "val": ["case01"]}, "dataset.splits has no 'test' list"),
    ],
)
def test_seg_folder_explicit_splits_are_checked(tmp_path, splits, message):
    root = make_folder(tmp_path / "data", n=20)
    with pytest.raises(ConfigError) as err:
        SegFolder(str(root), "train", splits=splits)
    assert message in str(err.value)


def test_seg_folder_split_file_errors_name_the_file_and_unused_images_are_logged(tmp_path, caplog):
    root = make_folder(tmp_path / "data", n=20)
    split_file = tmp_path / "splits.json"
    split_file.write_text('{"train": ["case05"], "val": ["case06"]}')
    with pytest.raises(ConfigError, match=r"dataset.split_file='.*splits.json' has no 'test' list"):
        SegFolder(str(root), "train", split_file=str(split_file))
    split_file.write_text('{"train": ["case05"], "val": ["case06"], "test": ["case07"]}')
    with caplog.at_level("WARNING"):
        for split in ("train", "val", "test"):
            SegFolder(str(root), split, split_file=str(split_file))
    assert "17 of 20 images of images/ are in no split and not used (e.g. case00" in caplog.text
    assert caplog.text.count("are in no split") == 1  # once, not for each split


def test_seg_folder_sample_and_native_size_evaluation(tmp_path):
    root = make_folder(tmp_path / "data", n=6)
    train = SegFolder(
        str(root), "train", val_size=1, test_size=1, image_size=32, spacing=[0.5, 0.5]
    )
    sample = train[0]
    assert sample["image"].shape == (1, 32, 32) and sample["mask"].shape == (32, 32)
    assert set(np.unique(sample["mask"].numpy())) <= {0, 1}
    test = SegFolder(str(root), "test", val_size=1, test_size=1, image_size=32, spacing=[0.5, 0.5])
    sample = test[0]
    native = np.array(Image.open(root / "masks" / f"{test.ids[0]}.png")) > 0
    assert sample["image"].shape == (1, 32, 32)  # the model sees the resized image ...
    assert np.array_equal(sample["mask"].numpy(), native)  # ... scored against the native mask
    assert sample["spacing"].tolist() == [0.5, 0.5]
    assert sample["intensity"].shape == (*native.shape, 1)


def test_seg_folder_errors_name_the_file(tmp_path):
    root = make_folder(tmp_path / "data", n=6)
    (root / "masks" / "case03.png").unlink()
    with pytest.raises(DataError, match="no mask for 1 image.*case03.png"):
        SegFolder(str(root), "train", val_size=1, test_size=1)
    for mask in (root / "masks").glob("*.png"):  # masks named <image>_mask.png: the suffix is named
        mask.rename(mask.with_name(f"{mask.stem}_mask.png"))
    with pytest.raises(DataError, match="the masks end in '_mask': set dataset.mask_suffix"):
        SegFolder(str(root), "train", val_size=1, test_size=1)
    for mask in (root / "masks").glob("*.png"):
        mask.rename(mask.with_name(mask.name.replace("_mask", "")))
    with pytest.raises(DataError, match="the masks have no suffix: set dataset.mask_suffix=''"):
        SegFolder(str(root), "train", val_size=1, test_size=1, mask_suffix="_mask")
    from medtrain.data.seg_folder import mask_suffix_hint

    assert mask_suffix_hint(["case1"], {"case10": root, "case2": root}, "") == ""  # not a suffix
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "masks" / "case03.png")
    data = {s: SegFolder(str(root), s, val_size=1, test_size=1) for s in ("train", "val", "test")}
    holder = next(d for d in data.values() if "case03" in d.ids)
    with pytest.raises(DataError, match=r"case03.png: mask is 5x5 but the image is"):
        holder[holder.ids.index("case03")]
    Image.fromarray(np.full((41, 41), 3, np.uint8)).save(root / "masks" / "case01.png")
    holder = next(
        SegFolder(str(root), s, val_size=1, test_size=1)
        for s in ("train", "val", "test")
        if "case01" in SegFolder(str(root), s, val_size=1, test_size=1).ids
    )
    with pytest.raises(DataError, match="case01.png: mask value 3 is outside the 2 classes"):
        holder[holder.ids.index("case01")]
    smooth = np.zeros((41, 41), np.uint8)
    smooth[10:30, 10:30], smooth[9, 10:30], smooth[30, 10:30] = 255, 90, 160  # resized: blurred
    Image.fromarray(smooth).save(root / "masks" / "case01.png")
    holder = SegFolder(str(root), holder.split, val_size=1, test_size=1)  # not the cached mask
    with pytest.raises(DataError, match=r"case01.png: a binary mask holds 4 values \(0, 90, 160"):
        holder[holder.ids.index("case01")]
    with pytest.raises(DataError, match="no folder"):
        SegFolder(str(tmp_path / "missing"), "train")


def test_augmentation_moves_image_and_mask_together():
    """A rotated, scaled and cropped mask stays on its image (nearest interpolation for both, so
    the image, which encodes the mask, must equal it exactly)."""
    rng = np.random.default_rng(1)
    _, mask = disc_pair(64, rng)
    mask = (mask > 0).astype(np.uint8)
    image = mask.astype(np.float32)[..., None]
    pipeline = A.Compose(
        [
            A.Affine(rotate=(-40, 40), scale=(0.7, 1.3), interpolation=cv2.INTER_NEAREST, p=1),
            A.RandomCrop(40, 40),
            A.HorizontalFlip(p=0.5),
            A.RandomRotate90(p=1),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.0, p=1),
        ]
    )
    augment = SeededAugment(pipeline, seed=3)
    for index in range(20):
        out = augment(index, image=image, mask=mask)
        assert out["mask"].shape == (40, 40)
        assert np.array_equal(out["image"][..., 0] > 0.5, out["mask"] == 1)
        assert set(np.unique(out["mask"])) <= {0, 1}  # nearest neighbour: no new values


def test_shipped_segmentation_augmentation_keeps_alignment():
    cfg = compose_cfg(["augmentation=segmentation"])
    augment = SeededAugment(build(cfg.augmentation.train, "augmentation.train"), seed=0)
    rng = np.random.default_rng(2)
    _, mask = disc_pair(64, rng)
    mask = (mask > 0).astype(np.uint8)
    image = (0.2 + 0.6 * mask).astype(np.float32)[..., None]
    changed = 0
    for index in range(30):
        out = augment(index, image=image, mask=mask)
        changed += not np.array_equal(out["mask"], mask)
        # Bilinear image vs nearest mask differ only along edges: almost every pixel agrees.
        level = (out["image"].min() + out["image"].max()) / 2
        agree = (out["image"][..., 0] > level) == (out["mask"] == 1)
        assert agree.mean() > 0.98
    assert changed > 10  # the geometry did change


def test_random_patch_is_aligned_and_pads_small_images():
    rng = np.random.default_rng(0)
    mask = np.arange(100).reshape(10, 10) % 2
    image = mask.astype(np.float32)[..., None]
    patch_image, patch_mask = random_patch(image, mask, (6, 6), rng)
    assert np.array_equal(patch_image[..., 0], patch_mask)
    patch_image, patch_mask = random_patch(image, mask, (16, 12), rng)
    assert patch_mask.shape == (16, 12) and patch_image.shape == (16, 12, 1)
    assert np.array_equal(patch_image[..., 0], patch_mask)  # padded alike
    sparse = np.zeros((200, 200), np.int64)
    sparse[150, 20] = 1
    hits = sum(
        random_patch(sparse[..., None], sparse, (16, 16), rng, 1.0)[1].any() for _ in range(10)
    )
    assert hits == 10


def test_synthetic_shapes_are_reproducible_and_sized():
    a = SyntheticShapes(
        "test", seed=1, image_size=32, test_image_size=48, num_test=4, num_classes=3
    )
    b = SyntheticShapes(
        "test", seed=1, image_size=32, test_image_size=48, num_test=4, num_classes=3
    )
    assert np.array_equal(a[2]["mask"].numpy(), b[2]["mask"].numpy())
    assert a[0]["image"].shape == (1, 48, 48)
    masks = np.stack([a[i]["mask"].numpy() for i in range(4)])
    assert masks.max() <= 2 and (masks > 0).any()
    with pytest.raises(ConfigError, match="reads no files"):
        SyntheticShapes("train", path="x")


def test_collate_keeps_different_sizes_as_lists():
    import torch

    same = collate(
        [{"image": torch.zeros(1, 4, 4), "id": "a"}, {"image": torch.ones(1, 4, 4), "id": "b"}]
    )
    assert same["image"].shape == (2, 1, 4, 4) and same["id"] == ["a", "b"]
    mixed = collate([{"image": torch.zeros(1, 4, 4)}, {"image": torch.zeros(1, 5, 4)}])
    assert isinstance(mixed["image"], list) and mixed["image"][1].shape == (1, 5, 4)


DSB = SHARED_DATA / "dsb2018_nuclei"


@pytest.mark.realdata
@pytest.mark.skipif(not DSB.is_dir(), reason="shared data absent")
def test_dsb2018_experiment_loads_the_recorded_47_10_10_split():
    cfg = compose_cfg(["experiment=dsb2018_nuclei", f"dataset.path={DSB}"])
    datasets = build_datasets(cfg)
    assert {s: len(d.ids) for s, d in datasets.items()} == {"train": 47, "val": 10, "test": 10}
    assert len(datasets["train"]) == 47 * 4  # patches_per_image
    # the test images listed in docs/benchmarks.md for split seed 42
    prefixes = (
        "220b37f4 34c9f4eb 358e47ea 3bfd6bb1 5953af50 610f32e2 80632d6b a4c44fc5 a7a581e6 d0f2a00d"
    )
    assert [i[:8] for i in datasets["test"].ids] == prefixes.split()
    assert not set(datasets["train"].ids) & set(datasets["val"].ids + datasets["test"].ids)
    sample = datasets["test"][0]
    stored = np.array(Image.open(DSB / "masks" / f"{datasets['test'].ids[0]}.png"))
    assert sample["image"].shape[0] == 3 and sample["image"].shape[1:] == stored.shape
    assert np.array_equal(sample["mask"].numpy(), stored > 0)
    assert sample["spacing"].isnan().all()  # these PNGs state no pixel size: measured in px


def test_decoded_files_are_read_once_and_give_the_same_samples(tmp_path, monkeypatch):
    """`dataset.cache_mb`: a file-based dataset decodes each image and mask once per process; the
    samples equal those of a dataset that decodes every time, epoch after epoch."""
    import medtrain.data.seg_folder as seg_folder
    from medtrain.data.file_cache import DecodedCache

    root = make_folder(tmp_path, n=12)
    pipeline = A.Compose([A.HorizontalFlip(p=0.5), A.Affine(rotate=(-20, 20), p=0.7)])
    reads = []
    real = seg_folder.read_image_file
    monkeypatch.setattr(
        seg_folder, "read_image_file", lambda *a, **k: reads.append(a[0]) or real(*a, **k)
    )

    def dataset(cache_mb):
        augment = SeededAugment(pipeline, seed=3, seeding="pipeline")
        return SegFolder(
            str(root),
            "train",
            val_size=2,
            test_size=2,
            transform=augment,
            patch_size=24,
            patches_per_image=2,
            cache_mb=cache_mb,
        )

    cached, plain = dataset(64), dataset(0)
    assert plain.decoded is None and isinstance(cached.decoded, DecodedCache)

    def samples(data):
        reads.clear()
        out = []
        for epoch in (0, 1):
            data.set_epoch(epoch)
            out += [data[k] for k in range(len(data))]
        return out, reads.count(data.image_files[0])

    (want, plain_reads), (got, cached_reads) = samples(plain), samples(cached)
    assert plain_reads == 4 and cached_reads == 1  # 2 patches an epoch, 2 epochs; or once
    for a, b in zip(want, got, strict=True):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    tight = DecodedCache(max_mb=2 * 40 * 40 * 3 / 2**20)  # room for two 40x40 RGB images
    for k in range(3):
        tight.get(k, lambda: np.zeros((40, 40, 3), np.uint8))
    assert list(tight.arrays) == [1, 2] and not tight.arrays[1].flags.writeable


def make_instance_folder(root: Path, n: int = 12, size: int = 48) -> Path:
    """Images with pairs of touching discs and their 16-bit instance labels in `labels/`, with a
    split.json as DSB2018 stage 1 has."""
    rng = np.random.default_rng(1)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    names = []
    for i in range(n):
        labels = np.zeros((size, size), np.uint16)
        for k, label in enumerate((300, 301)):  # numbers above 255: 16-bit files
            centre = (int(rng.integers(14, size - 14)) + 9 * k, int(rng.integers(14, size - 14)))
            cv2.circle(labels, (centre[1], min(centre[0], size - 8)), 7, label, -1)
        image = (40 + (labels > 0) * 120 + rng.integers(0, 20, labels.shape)).astype(np.uint8)
        name = f"cell{i:02d}"
        Image.fromarray(image).save(root / "images" / f"{name}.png")
        Image.fromarray(labels).save(root / "labels" / f"{name}.png")
        names.append(name)
    split = {"train": names[:8], "val": names[8:10], "test": names[10:]}
    (root / "split.json").write_text(__import__("json").dumps(split))
    return root


def test_instance_labels_give_the_binary_mask_and_the_objects(tmp_path):
    root = make_instance_folder(tmp_path / "cells")
    stored = np.array(Image.open(root / "labels" / "cell10.png"))
    assert stored.dtype == np.uint16 and set(np.unique(stored)) <= {0, 300, 301}
    kwargs = dict(
        path=str(root),
        split_file=str(root / "split.json"),
        masks_folder="labels",
        instance_labels=True,
        class_names=["background", "nucleus"],
    )
    test = SegFolder(split="test", **kwargs)
    assert test.ids == ["cell10", "cell11"]
    sample = test[0]
    assert np.array_equal(sample["mask"].numpy(), stored > 0)
    assert np.array_equal(sample["instances"].numpy(), stored)  # for scoring, as stored
    train = SegFolder(split="train", **kwargs)
    assert "instances" not in train[0]  # training learns the mask only
    batch = collate([test[0], test[1]])
    assert batch["instances"].shape == (2, 48, 48)
    # Read as classes, the labels are refused with the option that reads them as objects.
    as_classes = SegFolder(split="test", **(kwargs | {"instance_labels": False}))
    with pytest.raises(
        DataError,
        match=r"mask value 301 is outside the 2 classes .* \(2 nonzero "
        r"values: if each is one object, .* dataset.instance_labels=true; if they are classes, "
        r"dataset.num_classes=3 with dataset.class_values mapping them to 0..2\)$",
    ):
        as_classes[0]
    # A binary mask among the instance labels would be counted one object per image: refused.
    binary = np.zeros((48, 48), np.uint8)
    binary[5:12, 5:12] = 255  # one object: instance labels of one object
    binary[5:12, 30:40] = 255  # two parts of one object (cut by a tile's edge): still labels
    Image.fromarray(binary).save(root / "labels" / "cell11.png")
    assert SegFolder(split="test", **kwargs)[1]["instances"].max() == 255
    binary[30:40, 30:40] = 255  # three separate regions of one value: a binary mask
    Image.fromarray(binary).save(root / "labels" / "cell11.png")
    with pytest.raises(DataError) as err:
        SegFolder(split="test", **kwargs)[1]
    assert str(err.value) == (
        f"{root / 'labels' / 'cell11.png'}: label 255 covers 3 separate regions: this is a class "
        "mask, not instance labels (one number per object, as the data's instance labels are "
        "read); store one label per object, or set dataset.instance_labels=false"
    )


def test_contacts_mark_the_training_masks_only(tmp_path):
    from medtrain.analysis.instances import contact_pixels

    root = make_instance_folder(tmp_path / "cells")
    kwargs = dict(
        path=str(root),
        split_file=str(root / "split.json"),
        masks_folder="labels",
        instance_labels=True,
        contacts=True,
        class_names=["background", "nucleus"],
    )
    train = SegFolder(split="train", **kwargs)  # no augmentation, no patches: the stored frame
    touched = 0
    for index, name in enumerate(train.ids):
        stored = np.array(Image.open(root / "labels" / f"{name}.png"))
        touching = contact_pixels(stored)
        touched += bool(touching.any())
        mask = train[index]["mask"].numpy()
        np.testing.assert_array_equal(mask, np.where(touching, 2, stored > 0))
    assert touched  # some pairs of discs touch
    test = SegFolder(split="test", **kwargs)  # evaluation scores the binary mask
    stored = np.array(Image.open(root / "labels" / f"{test.ids[0]}.png"))
    np.testing.assert_array_equal(test[0]["mask"].numpy(), stored > 0)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"num_classes": 3}, ConfigError, "dataset.instance_labels: .* dataset.num_classes=2"),
        (
            {"instance_labels": False, "contacts": True},
            ConfigError,
            "dataset.contacts=true .* set dataset.instance_labels=true",
        ),
        ({"masks_folder": "../x"}, ConfigError, "dataset.masks_folder='../x'"),
        ({"masks_folder": "masks"}, DataError, r"no folder .*cells/masks .*dataset.masks_folder"),
    ],
)
def test_instance_label_settings_are_checked(tmp_path, overrides, error, message):
    root = make_instance_folder(tmp_path / "cells")
    kwargs = dict(path=str(root), split_file=str(root / "split.json"), masks_folder="labels")
    with pytest.raises(error, match=message):
        SegFolder(split="train", **({"instance_labels": True} | kwargs | overrides))


def test_patch_shares_follow_the_image_sizes_to_the_power_asked():
    # power 0: every image alike (as before the option existed)
    assert patch_shares([1, 1, 16, 4], 4, 0.0) == [4, 4, 4, 4]
    # power 1, by hand: one patch each, the 12 left shared as 12 * (1, 1, 16, 4) / 22 =
    # (0.55, 0.55, 8.73, 2.18) -> floors (0, 0, 8, 2), the 2 left to the largest remainders
    # (8.73, then the first 0.55)
    assert patch_shares([1, 1, 16, 4], 4, 1.0) == [2, 1, 10, 3]
    # power 0.5: weights (1, 1, 4, 2): 12 * w / 8 = (1.5, 1.5, 6, 3) -> (1, 1, 6, 3) + 1 left
    assert patch_shares([1, 1, 16, 4], 4, 0.5) == [3, 2, 7, 4]
    rng = np.random.default_rng(0)
    sizes = rng.integers(100, 10_000, 50).tolist()
    for power in (0.25, 0.5, 1.0):
        shares = patch_shares(sizes, 3, power)
        assert sum(shares) == 150 and min(shares) >= 1
        # a larger image never gets fewer patches than a smaller one
        assert all(
            shares[i] >= shares[j] for i in range(50) for j in range(50) if sizes[i] > sizes[j]
        )


def test_patch_area_power_draws_more_patches_from_larger_images(tmp_path):
    """`dataset.patch_area_power=1`: a 64x64 image gives about 4 times the patches of a 32x32 one,
    every sample index is a patch of its image, and the epoch keeps its length."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    for name, size in (("small", 32), ("large", 64), ("val", 32), ("test", 32)):
        image, mask = disc_pair(size, rng)
        Image.fromarray(image).save(tmp_path / "images" / f"{name}.png")
        Image.fromarray(mask).save(tmp_path / "masks" / f"{name}.png")
    splits = {"train": ["small", "large"], "val": ["val"], "test": ["test"]}

    def train(power):
        return SegFolder(
            str(tmp_path),
            "train",
            splits=splits,
            patch_size=16,
            patches_per_image=5,
            patch_area_power=power,
        )

    flat, shared = train(0.0), train(1.0)
    assert len(flat) == len(shared) == 10
    # power 0: sample k is image k mod 2, the order (and so the seeds) of earlier releases
    assert [flat.ids[i] for i in flat.sample_images] == ["small", "large"] * 5
    # 10 patches: one each, then 8 * (1, 4) / 5 = (1.6, 6.4) -> (1, 6), the last to 1.6
    assert [shared.ids[i] for i in shared.sample_images] == ["small"] * 3 + ["large"] * 7
    for k in range(len(shared)):
        sample = shared[k]
        assert sample["id"] == ("small" if k < 3 else "large")
        assert sample["image"].shape[1:] == (16, 16)
    val = SegFolder(str(tmp_path), "val", splits=splits, patches_per_image=5, patch_area_power=1)
    assert len(val) == 1  # evaluation sees each image once
    with pytest.raises(ConfigError, match=r"dataset.patch_area_power=2"):
        train(2)
    with pytest.raises(ConfigError, match=r"dataset.patches_per_image=1 there are none to share"):
        SegFolder(str(tmp_path), "train", splits=splits, patch_area_power=0.5)


def test_a_recipe_pointed_at_another_folder_names_the_options_to_set(tmp_path):
    """dsb2018_instances reads <path>/labels and split.json: a folder of masks/ and no split
    file is told which keys to set."""
    root = make_instance_folder(tmp_path / "cells")
    (root / "labels").rename(root / "masks")
    (root / "split.json").unlink()
    with pytest.raises(DataError) as err:
        SegFolder(str(root), "train", masks_folder="labels", instance_labels=True)
    assert str(err.value) == (
        f"dataset.path={str(root)!r}: no folder {root / 'labels'} (expected <path>/images and "
        "<path>/labels, or name the mask folder: dataset.masks_folder=masks)"
    )
    with pytest.raises(ConfigError) as err:
        SegFolder(str(root), "train", split_file=str(root / "split.json"), instance_labels=True)
    assert str(err.value).endswith("; dataset.split_file=null draws a seeded split instead")
    assert len(SegFolder(str(root), "train", instance_labels=True).ids) > 0
