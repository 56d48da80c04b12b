"""Ensembles of finished runs (the library behind `medtrain ensemble`): evaluate the runs together,
their outputs combined by their task (`Task.combine`: the mean of probabilities, values or
probability maps), and write the run-folder contract (metrics.json, predictions.csv, ...)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from medtrain.analysis.report import write_report
from medtrain.analysis.statistics import copy_groups
from medtrain.data.loading import make_loader
from medtrain.engine.acceleration import autocast
from medtrain.engine.build import build_datasets, build_task
from medtrain.engine.config import resolve_device
from medtrain.engine.loop import threshold_entries, to_device
from medtrain.errors import ConfigError
from medtrain.inference.average import deployable_average
from medtrain.inference.run import LoadedRun, load_run
from medtrain.io import read_json, save_csv, save_json

log = logging.getLogger(__name__)


@dataclass
class Member:
    """One finished run: its config, network (best checkpoint), task and val/test datasets."""

    run_dir: Path
    cfg: DictConfig
    model: nn.Module
    task: Any
    datasets: dict[str, Any]


def load_member(run_dir: Path, trust: Sequence[str] = ()) -> Member:
    """Rebuild a finished run from `checkpoints/best.pt`: the config it trained with (resolved, with
    what its data inferred), its weights, and the threshold chosen on its validation split.

    Args:
        trust: `_target_` names (or module prefixes ending in `.`) the run may build besides the
            allowed ones (`medtrain.engine.trust`).
    """
    return member_of(load_run(run_dir, key="run_dirs", trust=trust))


def member_of(run: LoadedRun) -> Member:
    """A loaded run with its val/test datasets built."""
    run_dir, cfg = run.run_dir, run.cfg
    path = cfg.dataset.get("path")
    if path is not None and not Path(path).exists():
        raise ConfigError(
            f"run_dirs: {run_dir} read dataset.path={path!r}, which does not exist from "
            f"{Path.cwd()}; run the ensemble from the folder the run was trained in"
        )
    datasets = build_datasets(cfg)
    return Member(run_dir, cfg, run.model, run.task, datasets)


def check_not_an_ensemble(run_dir: Path) -> None:
    """An ensemble is no member of another. A CV's fold ensemble least of all: its folds trained
    on every case outside the test split, the val split an ensemble is validated on and chooses
    its threshold on included, so those would be scored on what the members learned."""
    recorded = read_json(run_dir / "ensemble.json")
    if not isinstance(recorded, dict):
        return
    if recorded.get("kind") == "fold_ensemble":
        raise ConfigError(
            f"run_dirs: {run_dir} is a CV's fold ensemble: its folds trained on the val split "
            "an ensemble validates and chooses its threshold on, so its metrics and threshold "
            "would be optimistic. Ensemble runs trained on the train split, or train the models "
            "as folds of one CV (medtrain cv)"
        )
    raise ConfigError(
        f"run_dirs: {run_dir} is an ensemble, not a run: list its members instead "
        f"({', '.join(map(str, recorded.get('run_dirs') or [])) or 'its ensemble.json'})"
    )


def check_compatible(members: Sequence[Member]) -> None:
    """Refuse runs that do not predict the same thing on the same data: different tasks, classes,
    or val/test images and labels."""
    first = members[0]
    for other in members[1:]:
        pair = f"{first.run_dir} and {other.run_dir}"
        if type(first.task) is not type(other.task):
            raise ConfigError(
                f"run_dirs: {pair} solve different tasks ({first.task.name} against "
                f"{other.task.name}); an ensemble averages runs of one task"
            )
        if first.task.sigmoid_outputs != other.task.sigmoid_outputs:
            raise ConfigError(
                f"run_dirs: {pair} differ in their contact channel (task.instances.method="
                "contacts in one only); an ensemble averages networks of the same outputs"
            )
        if first.task.class_names != other.task.class_names:
            mine, theirs = list(first.task.class_names), list(other.task.class_names)
            if sorted(map(str, mine)) == sorted(map(str, theirs)):
                raise ConfigError(
                    f"run_dirs: {pair} have the same classes in another order ({mine} against "
                    f"{theirs}): an ensemble averages outputs position by position; train the "
                    "runs with one order (dataset.class_names, or the order of "
                    "dataset.target_column's columns)"
                )
            raise ConfigError(f"run_dirs: {pair} have different classes ({mine} against {theirs})")
        for split in ("val", "test"):
            a, b = first.datasets[split], other.datasets[split]
            if list(a.ids) != list(b.ids):
                only = sorted(set(a.ids) ^ set(b.ids))[:3]
                detail = f"e.g. {only} in one only" if only else "the same images in another order"
                raise ConfigError(
                    f"run_dirs: {pair} have different {split} data ({len(a.ids)} against "
                    f"{len(b.ids)} images; {detail}); an ensemble needs the same {split} split"
                )
            labels_a, labels_b = getattr(a, "labels", None), getattr(b, "labels", None)
            if labels_a is not None and not np.array_equal(labels_a, labels_b):
                raise ConfigError(
                    f"run_dirs: {pair} have different {split} labels for the same images"
                )
    # The same ids may still be other data: compare what each member reads (once per case).
    for split in ("val", "test"):
        ids, reference = first.datasets[split].ids, _case_digests(first.datasets[split])
        for other in members[1:]:
            theirs = _case_digests(other.datasets[split])
            differs = [i for i, a, b in zip(ids, reference, theirs, strict=True) if a != b]
            if differs:
                raise ConfigError(
                    f"run_dirs: {first.run_dir} and {other.run_dir} read different {split} data "
                    f"under the same ids (first: {differs[0]}; another dataset.path or "
                    f"dataset.seed?); an ensemble needs the same {split} images"
                )


def _case_digests(dataset) -> list[str]:
    """A digest of each case's image (and mask) as read, so that members are compared with one
    read per case each: the same names in another folder, or synthetic data of another seed, are
    other data."""
    digests = []
    for index in range(len(dataset.ids)):
        arrays = [dataset.read_image(index)]
        if hasattr(dataset, "read_mask"):
            arrays.append(dataset.read_mask(index))
        digest = hashlib.sha256()
        for array in arrays:
            array = np.ascontiguousarray(array)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        digests.append(digest.hexdigest())
    return digests


@torch.no_grad()
def evaluate_members(
    members: Sequence[Member],
    task: Any,
    split: str,
    device: torch.device,
    batch_size: int,
    final: bool,
):
    """Run every member over `split` in lockstep (each with its own preprocessing) and combine
    their outputs batch by batch with `task`; returns the ensemble's collector and mean loss, and
    each member's own collector."""
    loaders = [
        make_loader(m.datasets[split], batch_size=batch_size, shuffle=False, seed=0, num_workers=0)
        for m in members
    ]
    collector, own = task.collector(final), [m.task.collector() for m in members]
    total, batches = 0.0, 0
    precision = str(members[0].cfg.trainer.precision)
    for batches_of_members in zip(*loaders, strict=True):
        batches_of_members = [to_device(b, device) for b in batches_of_members]
        outputs = []
        for member, batch, mine in zip(members, batches_of_members, own, strict=True):
            with autocast(device, precision):
                output = member.task.forward(member.model, batch)
            mine.update(output, batch)
            outputs.append(output)
        batch = batches_of_members[0]
        combined = task.combine(outputs, [m.task for m in members])
        total, batches = total + task.loss(combined, batch).item(), batches + 1
        collector.update(combined, batch)
    return collector, total / max(batches, 1), own


def run_ensemble(
    run_dirs: Sequence[str | Path],
    out_dir: Path,
    device: str = "auto",
    batch_size: int | None = None,
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Evaluate the runs' best checkpoints together on val (to choose a threshold, when the first
    run's task chooses one) and test; write the run folder and return the metrics.

    Args:
        trust: `_target_` names (or module prefixes ending in `.`) the runs may build besides the
            allowed ones (`medtrain.engine.trust`).
    """
    if len(run_dirs) < 2:
        raise ConfigError(f"run_dirs={list(run_dirs)}: an ensemble needs at least 2 runs")
    if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
        raise ConfigError(f"batch_size={batch_size!r} must be an integer >= 1")
    resolved = [Path(run).resolve() for run in run_dirs]
    twice = [
        str(run) for run, path in zip(run_dirs, resolved, strict=True) if resolved.count(path) > 1
    ]
    if twice:
        raise ConfigError(f"run_dirs lists {twice[0]} twice: each member is one run")
    for run in run_dirs:
        check_not_an_ensemble(Path(run))
        if Path(out_dir).resolve().is_relative_to(Path(run).resolve()):
            raise ConfigError(
                f"hydra.run.dir={out_dir} is inside the member run {run}: writing there would "
                "replace that run's files; choose another folder"
            )
    if Path(out_dir).exists() and not Path(out_dir).is_dir():
        raise ConfigError(f"hydra.run.dir={out_dir} is a file; name a new folder")
    if Path(out_dir).exists() and any(Path(out_dir).iterdir()):
        raise ConfigError(
            f"hydra.run.dir={out_dir} exists and is not empty: the ensemble would mix its files "
            "with what is there; name a new folder"
        )
    dev = resolve_device(device, "device")
    # Every run's config is checked (and its network built) before any member reads data.
    runs = [load_run(Path(d), key="run_dirs", trust=trust) for d in run_dirs]
    members = [member_of(run) for run in runs]
    check_compatible(members)
    # The ensemble's own task: fitting its threshold must not change the first member's.
    task = build_task(members[0].cfg)
    task.threshold = members[0].task.threshold
    for member in members:
        member.model.to(dev)
        member.task.loss_fn.to(dev)
    batch_size = batch_size or int(members[0].cfg.trainer.eval_batch_size)
    start = time.perf_counter()
    task.loss_fn.to(dev)
    val, val_loss, _ = evaluate_members(members, task, "val", dev, batch_size, final=False)
    # A rule (youden, ...) is applied to the ensemble's own validation outputs, as for one run.
    threshold = task.fit_threshold(val)
    test, test_loss, own = evaluate_members(members, task, "test", dev, batch_size, final=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    saved = test.save(out_dir) or {}
    metrics = {
        **test.metrics("test"),
        **{f"test/{k}": v for k, v in saved.items()},
        "test/loss": test_loss,
        **val.metrics("val"),
        "val/loss": val_loss,
        "members": len(members),
    }
    metrics |= threshold_entries(threshold, task.class_names)
    rows = []
    for member, collector in zip(members, own, strict=True):
        rows.append({"run_dir": str(member.run_dir), **collector.metrics("test")})
    rows.append({"run_dir": "ensemble", **test.metrics("test")})
    fields = list(dict.fromkeys(k for row in rows for k in row))
    save_csv(out_dir / "members.csv", rows, fields)
    copy_groups(members[0].run_dir, out_dir)  # the members' test cases are the same
    metrics |= task.intervals(out_dir, metrics)  # from the files just written
    save_json(out_dir / "metrics.json", metrics)
    # One network of the members (with the threshold `fit_threshold` set), to predict, serve and
    # export, when they can be one.
    not_one = deployable_average(runs, task, out_dir)
    save_json(
        out_dir / "ensemble.json",
        {
            "run_dirs": [str(m.run_dir) for m in members],
            "task": task.name,
            # The task's config path: the report rebuilds the task from it.
            "task_target": type(task).__module__ + "." + type(task).__qualname__,
            "combine": task.combine_rule,
            "seconds": round(time.perf_counter() - start, 2),
            "device": str(dev),
            "network": "checkpoints/best.pt" if not_one is None else None,
            **({"no_network": not_one} if not_one else {}),
        },
    )
    write_report(out_dir, trust=trust)
    return metrics
