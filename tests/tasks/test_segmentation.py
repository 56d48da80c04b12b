"""The segmentation task in the one loop: losses, native-size evaluation, the run folder's files, the
acceptance bar of experiment=synthetic_segmentation, and tiled against whole-image inference."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medtrain.analysis.measurements import measure_mask
from medtrain.data.synthetic_segmentation import SyntheticShapes
from medtrain.engine.build import build, build_model
from medtrain.errors import ConfigError
from medtrain.metrics.segmentation import case_metrics, summarize
from medtrain.tasks import SegmentationTask
from tests.conftest import ON_CPU, compose_cfg, read_metrics, train_in_process

SEG = ["experiment=synthetic_segmentation", "trainer.progress=false"]
TINY_SEG = [
    *SEG,
    "dataset.num_train=64",
    "dataset.num_val=8",
    "dataset.num_test=6",
    "trainer.max_epochs=2",
    "model.base_width=8",
]
SEG_LOSSES = ["dice", "dice_ce", "dice_bce", "dice_focal", "tversky", "seg_focal"]


@pytest.mark.parametrize("name", SEG_LOSSES)
def test_segmentation_losses_fall_as_the_prediction_improves(name):
    loss = build(compose_cfg([*SEG, f"loss={name}"]).loss, "loss")
    target = torch.zeros(2, 1, 16, 16, dtype=torch.long)
    target[:, :, 4:10, 4:12] = 1
    target[1, :, 12:, 12:] = 2
    perfect = torch.nn.functional.one_hot(target[:, 0], 3).permute(0, 3, 1, 2).float() * 20 - 10
    noisy = perfect + torch.randn_like(perfect) * 15
    noisy.requires_grad_(True)
    good, bad = loss(perfect, target), loss(noisy, target)
    assert torch.isfinite(bad) and good < bad
    bad.backward()
    assert torch.isfinite(noisy.grad).all()


def test_deep_supervision_weights_halve_per_level():
    task = SegmentationTask(torch.nn.CrossEntropyLoss(), ["background", "a"])
    task.loss_fn = lambda logits, target: torch.nn.functional.cross_entropy(logits, target[:, 0])
    mask = torch.randint(0, 2, (2, 8, 8))
    outputs = tuple(torch.randn(2, 2, 8, 8) for _ in range(3))
    expected = (
        sum(
            w * torch.nn.functional.cross_entropy(o, mask)
            for w, o in zip((1, 0.5, 0.25), outputs, strict=True)
        )
        / 1.75
    )
    assert torch.allclose(task.loss(outputs, {"mask": mask}), expected)


def test_evaluation_scores_logits_at_each_masks_native_size():
    task = SegmentationTask(torch.nn.Identity(), ["background", "a"])
    model = torch.nn.Conv2d(1, 2, 1).eval()
    batch = {"image": torch.randn(2, 1, 8, 8), "mask": [torch.zeros(16, 12), torch.zeros(8, 8)]}
    out = task.forward(model, batch)
    assert [o.shape for o in out] == [(1, 2, 16, 12), (1, 2, 8, 8)]


def test_small_predicted_objects_are_removed_before_scoring():
    task = SegmentationTask(torch.nn.Identity(), ["background", "a"], min_object_size=4)
    logits = torch.zeros(1, 2, 10, 10)
    logits[0, 1, 1:4, 1:4] = 1  # 9 pixels: kept
    logits[0, 1, 7:9, 7:9] = 1  # 4 pixels: removed (not larger than min_object_size)
    mask = task.predict_masks(logits)[0]
    assert mask.sum() == 9 and mask[7:9, 7:9].sum() == 0


def test_unknown_inference_key_is_named():
    with pytest.raises(ConfigError, match=r"task.inference has unknown keys \['windw'\]"):
        SegmentationTask(torch.nn.Identity(), ["b", "a"], inference={"windw": 8})


@pytest.mark.parametrize(
    "override, key",
    [("task.inference.batch_size=0", "batch_size"), ("task.inference.blend=linear", "blend")],
)
def test_bad_inference_settings_are_refused_before_training(tmp_path, override, key):
    with pytest.raises(ConfigError, match=f"task.inference.{key}"):
        train_in_process(tmp_path, [*TINY_SEG, "dataset.patch_size=32", override])
    assert not (tmp_path / "checkpoints").exists()


def test_classification_loss_or_model_with_segmentation_data_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="classification loss; for task=segmentation"):
        train_in_process(tmp_path / "a", [*TINY_SEG, "loss=cross_entropy"])
    plain = ["dataset=synthetic_segmentation", "task=segmentation", "loss=dice_ce", "model=cnn"]
    with pytest.raises(ConfigError, match="task=segmentation needs a mask per image"):
        train_in_process(tmp_path / "b", [*plain, "dataset.num_train=8"])
    with pytest.raises(ConfigError, match="holds masks for segmentation, but task=classification"):
        train_in_process(tmp_path / "c", [*TINY_SEG, "task=classification", "loss=cross_entropy"])
    with pytest.raises(ConfigError, match="task=segmentation needs masks"):
        train_in_process(tmp_path / "d", ["task=segmentation", "loss=dice_ce", "model=unet"])


@pytest.fixture(scope="module")
def seg_run(tmp_path_factory) -> Path:
    """The shipped synthetic experiment, its cosine schedule cut to 6 of its 8 epochs, trained once
    for the tests below (about 40 s on one core; measured test Dice 0.937, ellipse 0.903,
    rectangle 0.971)."""
    run_dir = tmp_path_factory.mktemp("seg") / "run"
    train_in_process(run_dir, [*SEG, "trainer.max_epochs=6"])
    return run_dir


def test_synthetic_segmentation_experiment_clears_the_dice_bar_in_six_epochs(seg_run):
    metrics = read_metrics(seg_run)
    assert metrics["test/dice"] >= 0.90
    assert metrics["test/dice_ellipse"] >= 0.85 and metrics["test/dice_rectangle"] >= 0.85


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_run_folder_files_agree_with_an_independent_recomputation(seg_run):
    cfg = compose_cfg(SEG)
    test = SyntheticShapes(
        "test", seed=cfg.seed, image_size=64, test_image_size=96, num_test=48, num_classes=3
    )
    names = ["background", "ellipse", "rectangle"]
    predictions = read_csv(seg_run / "predictions.csv")
    assert [r["id"] for r in predictions] == test.ids
    rows, objects = [], 0
    for index, row in enumerate(predictions):
        pred = np.array(Image.open(seg_run / row["mask"]))
        true = test.masks[index]
        rows.append(case_metrics(pred, true, names, (0.5, 0.5)))
        measured = measure_mask(pred, spacing=(0.5, 0.5), class_names=names, image_id=row["id"])
        objects += len(measured)
        assert int(row["count_ellipse"]) == sum(m["class"] == "ellipse" for m in measured)
        area = sum(m["area_px"] for m in measured if m["class"] == "rectangle")
        assert int(row["area_px_rectangle"]) == area and row["unit"] == "mm"
        assert float(row["area_mm2_rectangle"]) == pytest.approx(area * 0.25)
    metrics = read_metrics(seg_run)
    expected = summarize(rows, names)
    for key in ("dice", "dice_ellipse", "iou_rectangle", "hd95_mm", "precision", "recall"):
        assert metrics[f"test/{key}"] == pytest.approx(expected[key], abs=1e-9)
    per_case = read_csv(seg_run / "per_case_metrics.csv")
    assert len(per_case) == 48
    assert float(per_case[3]["dice_ellipse"]) == pytest.approx(rows[3]["dice_ellipse"])
    measurements = read_csv(seg_run / "measurements.csv")
    assert sum(m["source"] == "pred" for m in measurements) == objects
    assert {m["unit"] for m in measurements} == {"mm"}
    first = next(m for m in measurements if m["source"] == "pred")
    assert float(first["area_mm2"]) == pytest.approx(float(first["area_px"]) * 0.25)
    agreement = json.loads((seg_run / "measurement_agreement.json").read_text())
    assert set(agreement["classes"]) == {"ellipse", "rectangle"}
    assert len(agreement["classes"]["ellipse"]["images"]) == 48
    assert metrics["test/count_mae_ellipse"] == pytest.approx(
        agreement["classes"]["ellipse"]["summary"]["count_mean_absolute_error"]
    )
    overlays = sorted(p.name for p in (seg_run / "overlays").glob("*.png"))
    assert "grid.png" in overlays and len(overlays) == 17  # 16 cases + the grid
    splits = json.loads((seg_run / "splits.json").read_text())
    assert splits["test"] == test.ids


def test_tiled_inference_gives_the_whole_image_mask_away_from_tile_borders(seg_run):
    """Test images (96 px) are larger than the 48 px training patches. Tiling them with 48 px
    windows must give the mask of one whole-image pass away from the tiles' edges.

    The trained U-Net sees context beyond one tile, so its logits differ slightly between the two
    (the exact equality of logits for a model whose receptive field fits inside the overlap is
    tested in test_sliding_window.py); the mask may then differ only on object outlines, where two
    classes are nearly tied.
    """
    cfg = compose_cfg(SEG)
    cfg.dataset.in_channels, cfg.dataset.num_classes = 1, 3
    model = build_model(cfg)
    model.load_state_dict(torch.load(seg_run / "checkpoints" / "best.pt")["model"])
    model.eval()
    test = SyntheticShapes(
        "test",
        seed=cfg.seed,
        image_size=64,
        test_image_size=96,
        num_test=12,
        num_classes=3,
        normalize={"mode": "fixed", "mean": [0.4], "std": [0.2]},
    )
    images = torch.stack([test[i]["image"] for i in range(12)])
    names = ["background", "ellipse", "rectangle"]
    tiled = SegmentationTask(torch.nn.Identity(), names, inference={"window": 48, "overlap": 0.5})
    whole = SegmentationTask(torch.nn.Identity(), names, inference={"window": None})
    with torch.no_grad():
        tiled_mask = tiled.infer(model, images).argmax(1)
        whole_mask = whole.infer(model, images).argmax(1)
    # Windows span 0-48, 24-72 and 48-96: pixels within 6 px of a window edge (the image's own edges
    # included) are "near a border".
    near = torch.zeros(96, dtype=torch.bool)
    for edge in (0, 24, 48, 72, 96):
        near[max(edge - 6, 0) : edge + 6] = True
    interior = ~(near[:, None] | near[None, :])
    as_float = whole_mask[:, None].float()
    grown = torch.nn.functional.max_pool2d(as_float, 3, 1, 1)
    shrunk = -torch.nn.functional.max_pool2d(-as_float, 3, 1, 1)
    outline = (grown != shrunk)[:, 0]  # pixels next to another class in the whole-image mask
    differ = tiled_mask != whole_mask
    assert not (differ & interior & ~outline).any()
    assert differ.float().mean() < 1e-3
    assert (whole_mask > 0).any(), "the model must segment something for this test to mean anything"


def test_segmentation_rerun_gives_identical_metrics(tmp_path):
    first = train_in_process(tmp_path / "a", [*TINY_SEG, ON_CPU])
    second = train_in_process(tmp_path / "b", [*TINY_SEG, ON_CPU])
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


@pytest.mark.parametrize(
    "training",
    [
        ["dataset.patch_size=32"],  # 32 px patches; whole images are tiled at evaluation
        ["dataset.patch_size=null", "trainer.batch_size=4"],  # whole images of 3 sizes per batch
    ],
)
def test_seg_folder_run_trains_and_scores_whole_native_images(tmp_path, training):
    from tests.data.test_segmentation import make_folder

    root = make_folder(tmp_path / "data", n=12, size=40)  # images 40, 41 and 42 px square
    run = tmp_path / "run"
    train_in_process(
        run,
        [
            "dataset=seg_folder",
            f"dataset.path={root}",
            "dataset.val_size=2",
            "dataset.test_size=3",
            *training,
            "dataset.spacing=[0.5,0.5]",
            "task=segmentation",
            "loss=dice_ce",
            "augmentation=segmentation",
            "model=unet",
            "model.base_width=8",
            "model.depth=2",
            "trainer.max_epochs=2",
            "trainer.progress=false",
        ],
    )
    splits = json.loads((run / "splits.json").read_text())
    assert [len(splits[s]) for s in ("train", "val", "test")] == [7, 2, 3]
    predictions = read_csv(run / "predictions.csv")
    per_case = {r["id"]: r for r in read_csv(run / "per_case_metrics.csv")}
    assert [r["id"] for r in predictions] == splits["test"]
    names = ["background", "class_1"]
    for row in predictions:
        true = (np.array(Image.open(root / "masks" / f"{row['id']}.png")) > 0).astype(np.uint8)
        pred = (np.array(Image.open(run / row["mask"])) > 0).astype(np.uint8)
        assert pred.shape == true.shape  # scored at native size
        expected = case_metrics(pred, true, names, (0.5, 0.5))
        assert float(per_case[row["id"]]["dice_class_1"]) == pytest.approx(expected["dice_class_1"])
    metrics = read_metrics(run)
    assert 0.0 <= metrics["test/dice"] <= 1.0 and "test/count_mae_class_1" in metrics


def test_basic_unet_trains_through_the_same_loop_and_leftover_keys_are_named(tmp_path):
    with pytest.raises(ConfigError, match=r"does not take model.depth, model.base_width: remove"):
        train_in_process(tmp_path / "a", [*TINY_SEG, "model=basic_unet"])
    basic = [
        "model=basic_unet",
        "~model.depth",
        "~model.base_width",
        "model.features=[8,8,16,16,32,8]",
    ]
    train_in_process(tmp_path / "b", [*TINY_SEG, *basic, "trainer.max_epochs=1"])
    metrics = read_metrics(tmp_path / "b")
    assert 0.0 <= metrics["test/dice"] <= 1.0 and (tmp_path / "b" / "measurements.csv").exists()


def train_and_compare_devices(tmp_path: Path, device: str, precision: str) -> tuple[dict, float]:
    """Train experiment=synthetic_segmentation on `device` with deep supervision and per-class BCE weights (a buffer of the
    loss, which must follow the model to the device), then predict the run's test images with its
    best weights on `device` and on the CPU; returns the metrics and the share of mask pixels
    on which the two devices agree."""
    from medtrain.data.readers import Decoded
    from medtrain.engine.build import build_datasets
    from medtrain.inference.predictor import Predictor

    run = tmp_path / "run"
    metrics = train_in_process(
        run,
        [
            *SEG,
            f"trainer.device={device}",
            f"trainer.precision={precision}",
            "model.deep_supervision=true",
            "loss=dice_bce",
            "loss.pos_weight=[1.0,2.0,2.0]",
        ],
    )
    on_device, on_cpu = Predictor(run, device=device), Predictor(run, device="cpu")
    test = build_datasets(on_cpu.cfg)["test"]
    images = [Decoded(test.read_image(i), None, "npy") for i in range(len(test))]
    names = [str(i) for i in range(len(test))]
    same = [
        (a["mask"] == b["mask"]).mean()
        for a, b in zip(
            on_device.predict(images, names), on_cpu.predict(images, names), strict=True
        )
    ]
    return metrics, float(np.mean(same))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["32", "bf16"])
def test_cuda_segmentation_trains_and_its_weights_give_the_cpu_masks(tmp_path, precision):
    metrics, agreement = train_and_compare_devices(tmp_path, "cuda", precision)
    assert metrics["test/dice"] > 0.85
    # TF32 / bf16 arithmetic on the GPU may flip a pixel on an object border, nothing more.
    assert agreement > 0.99


def test_an_instance_run_is_judged_by_its_instance_metrics_too():
    """Its headline (the training log's test line, the CV tables) adds the instance score,
    panoptic quality and count error to Dice and the rest."""
    from medtrain.engine.build import build_task
    from tests.conftest import compose_cfg

    plain = build_task(compose_cfg(["experiment=synthetic_segmentation"]))
    assert plain.headline == ("dice", "iou", "hd95_mm", "precision", "recall")
    instances = build_task(compose_cfg(["experiment=dsb2018_instances", "dataset.path=cells"]))
    assert instances.headline == (
        *plain.headline,
        "instance_score",
        "pq",
        "count_median_abs_rel_error",
    )
