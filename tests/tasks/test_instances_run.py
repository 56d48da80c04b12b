"""Instances end to end: `experiment=dsb2018_instances` on a small folder of touching discs with
16-bit instance labels, separated by the distance watershed or by learned contacts; the files it
writes agree with a recomputation; the contact channel through loss, views, ensembles and export."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from medtrain.metrics.instances import instance_metrics
from tests.conftest import ON_CPU, SHARED_DATA, compose_cfg, train_in_process
from tests.data.test_segmentation import make_instance_folder


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# The recipe learns the separation (the training masks mark where the discs touch, the U-Net has a
# contact channel); these overrides separate by the distance watershed alone.
WATERSHED = [
    "dataset.contacts=false",
    "model.num_classes=2",
    "task.instances.method=watershed",
    "~task.instances.threshold",
    "task.monitor=val/instance_score",  # the earlier recipe's monitor
]


@pytest.fixture(scope="module", params=["watershed", "contacts"])
def instance_run(tmp_path_factory, request) -> tuple[Path, Path]:
    root = make_instance_folder(tmp_path_factory.mktemp("cells") / "cells", n=16)
    split = {"train": [f"cell{i:02d}" for i in range(12)], "val": ["cell12", "cell13"]}
    split["test"] = ["cell14", "cell15"]
    (root / "split.json").write_text(json.dumps(split))
    run_dir = tmp_path_factory.mktemp("run")
    train_in_process(
        run_dir,
        [
            "experiment=dsb2018_instances",
            f"dataset.path={root}",
            "dataset.patch_size=32",
            "dataset.in_channels=1",
            "model.depth=2",
            "model.base_width=8",
            "trainer.max_epochs=6",
            "trainer.progress=false",
            "trainer.report=false",
            "optimizer.lr=1e-2",
            "trainer.precision=32",  # the recipe's bf16 is fast only on CPUs with bf16 instructions
            ON_CPU,
            *(WATERSHED if request.param == "watershed" else []),
        ],
    )
    return run_dir, root


def test_instance_metrics_are_validated_tested_and_recompute_from_the_files(instance_run):
    run_dir, root = instance_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("instance_score", "pq", "count_median_abs_rel_error"):
        assert f"test/{key}" in metrics and f"val/{key}" in metrics
    history = read_csv(run_dir / "history.csv")
    validated = [row for row in history if row["val/loss"]]  # epochs 5 and 6 (val_every 5)
    assert [row["epoch"] for row in validated] == ["5", "6"]
    for row in validated:  # the monitors of both recipes
        assert float(row["val/instance_score"]) >= 0 and float(row["val/dice"]) >= 0
    rows = read_csv(run_dir / "per_case_metrics.csv")
    predictions = {r["id"]: r for r in read_csv(run_dir / "predictions.csv")}
    assert sorted(predictions) == ["cell14", "cell15"]
    for row in rows:
        written = np.array(Image.open(run_dir / predictions[row["id"]]["instances"]))
        assert written.dtype == np.uint16  # 16-bit label images
        true = np.array(Image.open(root / "labels" / f"{row['id']}.png"))
        recomputed = instance_metrics(true, written)
        for key in ("instance_score", "pq", "count_true", "count_pred"):
            assert float(row[key]) == pytest.approx(recomputed[key]), key
        assert recomputed["count_true"] == 2  # two discs in every image
        assert int(predictions[row["id"]]["count_nucleus"]) == recomputed["count_pred"]
    scores = [float(row["instance_score"]) for row in rows]
    assert metrics["test/instance_score"] == pytest.approx(np.mean(scores))
    # Measured object by object from the instances: one measurement row per predicted label.
    measured = [r for r in read_csv(run_dir / "measurements.csv") if r["source"] == "pred"]
    assert len(measured) == sum(int(p["count_nucleus"]) for p in predictions.values())


@pytest.mark.realdata
@pytest.mark.skipif(not (SHARED_DATA / "dsb2018_stage1").is_dir(), reason="shared data absent")
def test_dsb2018_instances_reads_the_stage1_split_and_labels():
    from medtrain.engine.build import build_datasets

    path = SHARED_DATA / "dsb2018_stage1"
    datasets = build_datasets(compose_cfg(["experiment=dsb2018_instances", f"dataset.path={path}"]))
    assert {s: len(d.ids) for s, d in datasets.items()} == {"train": 537, "val": 60, "test": 67}
    # dataset.patch_area_power=0.5: 2,148 patches, the 13 grey 1024 x 1024 images give 130 (10 each)
    train = datasets["train"]
    assert len(train) == 537 * 4
    large = [i for i in range(537) if train.model_shape(i) == (1024, 1024)]
    assert len(large) == 13 and sum(train.sample_images.count(i) for i in large) == 130
    nuclei = set(p.stem for p in (SHARED_DATA / "dsb2018_nuclei" / "images").glob("*.png"))
    assert set(datasets["test"].ids) == nuclei  # the 67 images of dsb2018_nuclei
    sample = datasets["val"][0]
    stored = np.array(Image.open(path / "labels" / f"{datasets['val'].ids[0]}.png"))
    assert np.array_equal(sample["instances"].numpy(), stored)
    assert np.array_equal(sample["mask"].numpy(), stored > 0)


def test_predict_writes_the_instances_the_evaluation_wrote(instance_run, tmp_path):
    from medtrain.commands.predict import main

    run_dir, root = instance_run
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("cell14", "cell15"):
        (inputs / f"{name}.png").write_bytes((root / "images" / f"{name}.png").read_bytes())
    # An input named as the other's instance labels were once named (masks/<stem>_instances.png)
    # overwrote them; each kind now has its folder.
    (inputs / "cell14_instances.png").write_bytes((root / "images" / "cell15.png").read_bytes())
    out = tmp_path / "pred.csv"
    assert main([f"run_dir={run_dir}", f"inputs={inputs}", f"output={out}"]) == 0
    rows = read_csv(out)
    assert [(r["mask"], r["instances"]) for r in rows] == [
        (f"masks/{n}.png", f"instances/{n}.png") for n in ("cell14", "cell14_instances", "cell15")
    ]
    objects = read_csv(tmp_path / "measurements.csv")
    for row in rows:
        stem = Path(row["file"]).stem.replace("cell14_instances", "cell15")  # the same image
        labels = np.array(Image.open(tmp_path / row["instances"]))
        evaluated = np.array(Image.open(run_dir / "instances" / f"{stem}.png"))
        np.testing.assert_array_equal(labels, evaluated)  # the evaluation's own instances
        count = len(set(np.unique(labels)) - {0})
        assert int(row["count_nucleus"]) == count
        assert len([o for o in objects if o["id"] == row["file"]]) == count


def test_the_served_answer_carries_the_instances(instance_run):
    import base64
    import io

    from medtrain.inference.predictor import Predictor

    run_dir, root = instance_run
    predictor = Predictor(run_dir)
    image = predictor.read(root / "images" / "cell14.png")
    result = predictor.predict([image], ["cell14.png"], None)[0]
    answer = predictor.task.to_json(result)
    json.dumps(answer)  # serializable as the service returns it
    labels = np.array(Image.open(io.BytesIO(base64.b64decode(answer["instances"]))))
    np.testing.assert_array_equal(
        labels, np.array(Image.open(run_dir / "instances" / "cell14.png"))
    )
    assert answer["instance_count"] == len(set(np.unique(labels)) - {0})


def test_instances_are_refused_for_volumes_and_several_classes():
    from medtrain.engine.config import check_task
    from medtrain.errors import ConfigError
    from medtrain.tasks.segmentation import SegmentationTask

    cfg = compose_cfg(["experiment=hippocampus2d", "task.instances={method: watershed}"])
    with pytest.raises(ConfigError, match="dataset=volume_slices is scored per volume"):
        check_task(cfg)
    with pytest.raises(ConfigError, match="2 foreground classes"):
        SegmentationTask(
            loss=None, class_names=["background", "a", "b"], instances={"method": "watershed"}
        )


def contact_task():
    from medtrain.tasks.segmentation import SegmentationTask

    def cross_entropy(logits, target):
        return F.cross_entropy(logits, target[:, 0])

    return SegmentationTask(
        loss=cross_entropy,
        class_names=["background", "nucleus"],
        instances={"method": "contacts", "threshold": 0.5, "sigma": 1.0},
    )


def test_the_contact_channel_adds_its_cross_entropy_and_evaluation_marks_it_alike():
    from medtrain.analysis.instances import contact_pixels

    task = contact_task()
    labels = torch.zeros(2, 8, 8, dtype=torch.int32)
    labels[:, 2:6, 1:4], labels[:, 2:6, 4:7] = 1, 2
    binary = (labels > 0).long()
    marked = torch.where(torch.from_numpy(contact_pixels(labels[0].numpy())), 2, binary)
    assert set(marked.unique().tolist()) == {0, 1, 2}
    logits = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    touching = (marked == 2).float()
    probs = logits[:, 2].sigmoid()
    dice = 1 - (2 * (probs * touching).sum() + 1) / (probs.sum() + touching.sum() + 1)
    bce = F.binary_cross_entropy_with_logits(logits[:, 2], touching)
    want = F.cross_entropy(logits[:, :2], marked.clamp_max(1)) + bce + dice
    assert task.loss(logits, {"mask": marked}).item() == pytest.approx(want.item(), rel=1e-6)
    # Evaluation batches hold the binary mask and the labels: the contacts are marked from them.
    evaluated = task.loss(logits, {"mask": binary, "instances": labels})
    assert evaluated.item() == pytest.approx(want.item(), rel=1e-6)


def test_deep_supervision_trains_the_contact_channel_at_the_finest_output_only():
    task = contact_task()
    marked = torch.zeros(1, 8, 8, dtype=torch.long)
    marked[0, 2:6, 1:7], marked[0, 2:6, 3] = 1, 2
    generator = torch.Generator().manual_seed(2)
    outputs = tuple(torch.randn(1, 3, 8, 8, generator=generator) for _ in range(3))
    want = task.loss(outputs[0], {"mask": marked}) + sum(
        w * F.cross_entropy(o[:, :2], marked.clamp_max(1))
        for w, o in zip((0.5, 0.25), outputs[1:], strict=True)
    )
    got = task.loss(outputs, {"mask": marked})
    assert got.item() == pytest.approx(want.item() / 1.75, rel=1e-6)
    # The coarse outputs' contact channel gets no gradient; their class channels do.
    coarse = outputs[1].clone().requires_grad_(True)
    task.loss((outputs[0], coarse, outputs[2]), {"mask": marked}).backward()
    assert coarse.grad[:, 2].abs().max() == 0 and coarse.grad[:, :2].abs().max() > 0


def test_views_ensembles_masks_and_export_keep_the_contact_channel_apart():
    task = contact_task()
    generator = torch.Generator().manual_seed(1)
    a, b = (
        torch.randn(1, 3, 6, 6, generator=generator),
        torch.randn(1, 3, 6, 6, generator=generator),
    )
    combined = task.combine([a, b], [task, task])
    probs = (a[:, :2].softmax(1) + b[:, :2].softmax(1)) / 2
    torch.testing.assert_close(combined[:, :2].softmax(1), probs)
    torch.testing.assert_close(
        combined[:, 2].sigmoid(), (a[:, 2].sigmoid() + b[:, 2].sigmoid()) / 2, atol=1e-6, rtol=0
    )
    loud = a.clone()
    loud[:, 2] = 50.0  # a confident contact everywhere is no class
    np.testing.assert_array_equal(task.predict_masks(loud), task.predict_masks(a[:, :2]))
    # The fold ensemble's network (`medtrain cv`) averages the channels as `combine` does.
    from medtrain.models.ensemble import ModelAverage

    class Fixed(torch.nn.Module):
        def __init__(self, out):
            super().__init__()
            self.out = out

        def forward(self, image):
            return self.out

    average = ModelAverage([Fixed(a), Fixed(b)], sigmoid_channels=1)
    torch.testing.assert_close(average(torch.zeros(1, 1, 6, 6)), combined, atol=1e-5, rtol=0)
    with pytest.raises(Exception, match="model.sigmoid_channels=1 splits a softmax average"):
        ModelAverage([Fixed(a), Fixed(b)], rule="mean", sigmoid_channels=1)
    exported, _ = task.postprocess(a)
    torch.testing.assert_close(exported[:, :2], a[:, :2].softmax(1))
    torch.testing.assert_close(exported[:, 2], a[:, 2].sigmoid())
    # The export's manifest names the separation it leaves to medtrain.
    from types import SimpleNamespace

    said = task.export_manifest(SimpleNamespace(spacing=None))["segmentation"]["instances"]
    assert {k: said[k] for k in ("method", "threshold", "sigma")} == {
        "method": "contacts",
        "threshold": 0.5,
        "sigma": 1.0,
    }
    assert "examples/run_exported.py does not" in said["note"]
    with pytest.raises(Exception, match=r"outputs 2 channels.*contacts.*model.num_classes=3"):
        task.check_output(torch.zeros(1, 2, 8, 8), "unet")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.contacts=false"], "dataset.contacts=true"),
        (["task.instances.method=watershed"], "only task.instances.method=contacts learns"),
    ],
)
def test_contacts_need_both_the_marked_masks_and_the_method(overrides, message):
    from medtrain.engine.config import check_task
    from medtrain.errors import ConfigError

    cfg = compose_cfg(["experiment=dsb2018_instances", "dataset.path=cells", *overrides])
    with pytest.raises(ConfigError, match=message):
        check_task(cfg)


def test_evaluate_scores_instance_labels_as_the_run_s_test(instance_run, tmp_path, capsys):
    from medtrain.commands.evaluate import main
    from tests.inference.test_evaluate import assert_scores_as_the_run

    run_dir, root = instance_run
    labelled = tmp_path / "labelled.csv"
    labelled.write_text(
        "image,mask\n"
        + "".join(f"{root}/images/{n}.png,{root}/labels/{n}.png\n" for n in ("cell14", "cell15"))
    )
    out = tmp_path / "external"
    keys = ("test/dice", "test/instance_score", "test/pq", "test/count_median_abs_rel_error")
    assert_scores_as_the_run(run_dir, labelled, out, keys)
    # The 16-bit labels were read as objects: two true discs per image, as in the run's test.
    rows = read_csv(out / "per_case_metrics.csv")
    assert [float(r["count_true"]) for r in rows] == [2.0, 2.0]
    for row in read_csv(out / "predictions.csv"):
        stem = Path(row["id"]).stem
        np.testing.assert_array_equal(
            np.array(Image.open(out / row["instances"])),
            np.array(Image.open(run_dir / "instances" / f"{stem}.png")),
        )
    # A binary class mask is refused as such, with advice evaluate can follow (it takes no
    # dataset.* keys: dataset.instance_labels=false was an unknown key there); nothing written.
    binary = np.zeros((48, 48), np.uint8)
    binary[2:8, 2:8] = binary[20:26, 20:26] = binary[38:44, 38:44] = 255
    Image.fromarray(binary).save(tmp_path / "binary.png")
    labelled.write_text(f"image,mask\n{root}/images/cell14.png,binary.png\n")
    assert main([f"run_dir={run_dir}", f"inputs={labelled}", f"output={tmp_path / 'b'}"]) == 1
    assert capsys.readouterr().err == (
        f"error: {labelled}: line 2: {tmp_path / 'binary.png'}: label 255 covers 3 separate "
        "regions: this is a class mask, not instance labels (one number per object, as the "
        "data's instance labels are read); the run was trained on instance labels "
        "(dataset.instance_labels=true) and evaluate scores it on them: give masks of one label "
        "per object, or instance_labels=false to score on class masks (objects: their connected "
        "components)\n"
    )
    assert not (tmp_path / "b").exists()
    # Binary masks of the same test images, as instance_labels=false reads them: the same Dice as
    # the run's test; the instance scores against their connected components (8-connected, the
    # task's connectivity), which merge touching discs, recomputed here from the files written.
    from scipy import ndimage

    binary_rows = []
    for n in ("cell14", "cell15"):
        labels = np.array(Image.open(root / "labels" / f"{n}.png"))
        Image.fromarray(((labels > 0) * 255).astype(np.uint8)).save(tmp_path / f"{n}_bin.png")
        binary_rows.append(f"{root}/images/{n}.png,{n}_bin.png\n")
    labelled.write_text("image,mask\n" + "".join(binary_rows))
    argv = [f"run_dir={run_dir}", f"inputs={labelled}", f"output={tmp_path / 'b'}"]
    assert main([*argv, "instance_labels=false"]) == 0
    mine = json.loads((tmp_path / "b" / "metrics.json").read_text())
    theirs = json.loads((run_dir / "metrics.json").read_text())
    assert mine["test/dice"] == pytest.approx(theirs["test/dice"], abs=1e-6)
    assert mine["true_objects"] == "connected components of the masks"
    scores = []
    for row in read_csv(tmp_path / "b" / "predictions.csv"):
        n = Path(row["id"]).stem
        merged = ndimage.label(
            np.array(Image.open(root / "labels" / f"{n}.png")) > 0, np.ones((3, 3))
        )[0]
        pred = np.array(Image.open(tmp_path / "b" / row["instances"]))
        scores.append(instance_metrics(merged, pred)["instance_score"])
    assert mine["test/instance_score"] == pytest.approx(np.mean(scores), abs=1e-6)
    assert main([*argv, "instance_labels=maybe"]) == 2
    assert "instance_labels='maybe' must be true or false" in capsys.readouterr().err
