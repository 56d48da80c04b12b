"""Reruns (the library behind `medtrain rerun`): train a finished run again from its saved config
into a new folder and check that it reproduces: the same metrics (bit for bit on the CPU, within a stated
tolerance on CUDA), naming what differs, what changed in the config and what in the environment."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from medtrain.engine.config import override_value
from medtrain.engine.provenance import collect_provenance, data_fingerprint, fingerprint_change
from medtrain.engine.trust import check_run_folder
from medtrain.errors import ConfigError, DataError, MedtrainError
from medtrain.experiments import children
from medtrain.experiments.folders import marked_as
from medtrain.io import load_checkpoint, read_json, save_json

# Keys that build_datasets fills in from the data (null in .hydra/config.yaml, values in best.pt).
INFERRED = (
    "dataset.in_channels",
    "dataset.num_classes",
    "dataset.multilabel",
    "dataset.class_names",
    "dataset.num_features",
    "dataset.spatial_dims",
    "task.target_mean",
    "task.target_std",
    "task.grade_range",
)
# Provenance entries that say nothing about reproducibility: when and how the run was started.
IGNORED_PROVENANCE = {"created", "command", "cwd", "git.branch", "git.reason", "git.untracked"}
IGNORED_PROVENANCE |= {"data.files", "data.bytes", "environment.packages.torch"}  # said elsewhere
# The sessions that continued the run: said apart (`resumed_changes`), not compared.
IGNORED_PROVENANCE |= {"resumed", "recorded_from_epoch"}
SHOWN_AT_MOST = 5  # differences named in the verdict line; rerun.json and the lines above list all


def pruned_at(run_dir: Path) -> str | None:
    """'pruned at epoch N' when the folder is a search's pruned trial (its train.log says so)."""
    log_file = run_dir / "train.log"
    text = log_file.read_text(errors="replace") if log_file.is_file() else ""
    found = re.search(r"pruned at epoch \d+", text)
    return found.group(0) if found else None


class RerunFailed(MedtrainError):
    """The rerun's training process exited with an error."""


class RerunInterrupted(KeyboardInterrupt):
    """Ctrl-C (or SIGTERM) during a rerun's training: the training was stopped too, in `folder`
    (`finished`: it had just finished, its run complete but not compared)."""

    def __init__(self, folder: Path, finished: bool = False):
        super().__init__(str(folder))
        self.folder, self.finished = folder, finished


def _text(value: Any, width: int = 60) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


def _pair(a: Any, b: Any) -> str:
    """`a -> b`, numbers with 6 significant digits unless that hides their difference."""
    if is_number(a) and is_number(b):
        short = f"{a:.6g} -> {b:.6g}"
        if f"{a:.6g}" != f"{b:.6g}":
            return short
    return f"{_text(a)} -> {_text(b)}"


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def compare_metrics(a: Mapping[str, Any], b: Mapping[str, Any], tol: float) -> list[str]:
    """The metrics of `b` (rerun) that differ from `a` (original) by more than `tol`.

    Numbers are equal when `abs(a - b) <= tol`; nulls (undefined metrics) equal nulls; anything else
    must be equal; a key in one run only is a difference.

    Returns:
        One `key a -> b` (or `key only in the original/rerun`) per difference, in `a`'s key order.
    """
    differences = []
    for key in [*a, *(k for k in b if k not in a)]:
        if key not in b:
            differences.append(f"{key} only in the original ({_text(a[key])})")
            continue
        if key not in a:
            differences.append(f"{key} only in the rerun ({_text(b[key])})")
            continue
        x, y = a[key], b[key]
        if is_number(x) and is_number(y):
            finite = math.isfinite(x) and math.isfinite(y)
            same = abs(x - y) <= tol if finite else (x == y or (math.isnan(x) and math.isnan(y)))
        else:
            same = x == y
        if not same:
            differences.append(f"{key} {_pair(x, y)}")
    return differences


def _leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted key -> value of every leaf of nested dicts and lists (`a.b.0.c`)."""
    if isinstance(node, Mapping) and node:
        items = node.items()
    elif isinstance(node, list) and node:
        items = enumerate(node)
    else:
        return {prefix: node}
    leaves = {}
    for key, value in items:
        leaves |= _leaves(value, f"{prefix}.{key}" if prefix else str(key))
    return leaves


def _prefixes(key: str) -> list[str]:
    parts = key.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


# Settings of how a run shows its progress, not of what it computes: a change is reported but is
# no mismatch.
NO_EFFECT_KEYS = frozenset(
    {"trainer.progress", "trainer.tensorboard", "trainer.report", "task.num_overlays"}
)


def config_changes(run_dir: Path) -> list[str]:
    """What `.hydra/config.yaml` (the config a rerun uses) says differently from the config the run
    trained with (stored, resolved, in `checkpoints/best.pt`).

    A key that is null in the YAML and has a value in the checkpoint was inferred from the data
    (channels, classes, target statistics) and is not a change.

    Returns:
        One `key old -> new` per change (old: the run's value); empty when the run has no best.pt.

    Raises:
        DataError: the YAML or the checkpoint cannot be read.
    """
    run_dir = Path(run_dir)
    yaml_path = run_dir / ".hydra" / "config.yaml"
    best = run_dir / "checkpoints" / "best.pt"
    if not best.is_file():
        return []
    try:
        trained = load_checkpoint(best)["config"]
    except Exception as err:  # not a medtrain checkpoint, or unreadable
        raise DataError(f"cannot read the config stored in {best} ({err})") from err
    try:
        saved = OmegaConf.to_container(OmegaConf.load(yaml_path), resolve=True)
    except Exception as err:  # bad YAML, or an interpolation that points nowhere
        raise DataError(f"cannot read {yaml_path}: {str(err).splitlines()[0]}") from err
    # How the run started, not what it learned: a checkpoint saved before a resume says false, and
    # `auto` is recorded as what it found; a rerun trains from scratch anyway (a note says so).
    new, old = (
        {k: v for k, v in _leaves(c).items() if k != "trainer.resume"} for c in (saved, trained)
    )
    nulls = {key for key, value in new.items() if value is None}
    changes = []
    for key, value in new.items():
        if value is None:
            continue  # inferred from the data when the run started (or null in both)
        if key not in old:
            if not any(p in nulls for p in _prefixes(key)[:-1]):
                changes.append(f"{key} (not in the run) -> {_text(value)}")
        elif old[key] != value or isinstance(old[key], bool) != isinstance(value, bool):
            changes.append(f"{key} {_pair(old[key], value)}")
    for key, value in old.items():
        if key in new or any(p in nulls or p in INFERRED for p in _prefixes(key)):
            continue
        changes.append(f"{key} {_text(value)} -> (not in the config)")
    return changes


# What a resumed session may change that changes nothing computed (its device is compared as
# the device it resolved to, in its `environment_changes`).
NO_EFFECT_ON_RESUME = NO_EFFECT_KEYS | {
    "trainer.num_workers",
    "trainer.device",
    "trainer.distributed.timeout_s",
    "trainer.distributed.find_unused_parameters",
    "dataset.cache_mb",
    "cv.folds_file",
    "trainer.resume_on_changed_data",  # what it allowed is said by the session's data_changed
    "task.label_separator",  # how predictions are written
    "task.no_label",
}
# Provenance entries a session may differ in without computing differently (a requeued job's
# node may run another kernel).
NO_EFFECT_ON_RESUME_ENVIRONMENT = ("environment.platform",)


def _sessions(provenance: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """The resumed sessions `provenance.json` records (`resumed`; none for a run of a release
    before them, or one never resumed)."""
    sessions = (provenance or {}).get("resumed") or []
    return [s for s in sessions if isinstance(s, dict)] if isinstance(sessions, list) else []


def _pairs(changes: Any) -> dict[str, list]:
    """A session's {key: [before, after]}, entries of another shape left out."""
    if not isinstance(changes, Mapping):
        return {}
    return {k: v for k, v in changes.items() if isinstance(v, list) and len(v) == 2}


def resumed_changes(provenance: Mapping[str, Any] | None) -> list[str]:
    """How the run's resumed sessions (`provenance.json`'s `resumed`) differed from its start:
    config values (`trainer.max_epochs 3 -> 4`), the number of processes, the device and the
    environment. A rerun from scratch trains the run in one go, with the last values: it is not
    expected to reproduce such a run bit for bit.

    Returns:
        One `after epoch N: ...` per session that differed; empty for a run that never resumed or
        was continued as it started (an interrupted run: it reproduces).
    """
    started = processes(provenance)
    described = []
    for session in _sessions(provenance):
        items = [
            f"{key} {_pair(*values)}"
            for key, values in _pairs(session.get("config_changes")).items()
            if key not in NO_EFFECT_ON_RESUME
        ]
        count = session.get("processes", 1)
        if count != started:
            items.append(f"{count} process(es) where the run started with {started}")
        items += [
            f"{_label(key)} {_pair(_short(key, a), _short(key, b))}"
            for key, (a, b) in _pairs(session.get("environment_changes")).items()
            if key not in NO_EFFECT_ON_RESUME_ENVIRONMENT
            and not any(p in IGNORED_PROVENANCE for p in _prefixes(key))
        ]
        if session.get("data_changed"):  # trainer.resume_on_changed_data
            items.append(f"other data ({session['data_changed']})")
        if items:
            described.append(f"after epoch {session.get('after_epoch')}: {', '.join(items)}")
    return described


def resumed_values(provenance: Mapping[str, Any] | None) -> dict[str, Any]:
    """The config values the run's resumed sessions set, the last session's where several did."""
    values = {}
    for session in _sessions(provenance):
        values |= {key: pair[1] for key, pair in _pairs(session.get("config_changes")).items()}
    return values


def _short(key: str, value: Any) -> Any:
    """Hashes cut to 12 characters: enough to tell them apart in a message."""
    if isinstance(value, str) and key.endswith(("sha256", "commit")) and len(value) > 12:
        return value[:12]
    return value


def _label(key: str) -> str:
    for prefix in ("environment.packages.", "environment."):
        if key.startswith(prefix):
            return key[len(prefix) :]
    return {
        "git.diff_sha256": "uncommitted changes (git diff sha256)",
        "git.dirty": "git dirty",
        "git.commit": "git commit",
        "data.sha256": "data fingerprint",
    }.get(key, key)


def environment_changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    """What differs between two runs' provenance (`a` original, `b` rerun): package versions, Python,
    CUDA, GPUs, git commit and uncommitted changes, data fingerprint, device, seeds, determinism.

    Sections missing from either side are not compared.

    Returns:
        One `name old -> new` per difference.
    """
    changes = []
    for section in a:
        if section not in b or section in IGNORED_PROVENANCE:
            continue
        old = _leaves(a[section], section)
        new = _leaves(b[section], section)
        for key in [*old, *(k for k in new if k not in old)]:
            if any(p in IGNORED_PROVENANCE for p in _prefixes(key)):
                continue
            x, y = old.get(key, "(absent)"), new.get(key, "(absent)")
            if x != y:
                changes.append(f"{_label(key)} {_pair(_short(key, x), _short(key, y))}")
    return changes


def metric_tolerance(devices: Iterable[str | None], atol: float, cuda_atol: float) -> float:
    """`cuda_atol` when either run trained on CUDA (its kernels may round differently from run to
    run), else `atol`."""
    return cuda_atol if any(str(d).startswith("cuda") for d in devices if d) else atol


def _device(run_dir: Path, provenance: Mapping[str, Any] | None) -> str | None:
    """The device a run trained on: from provenance.json, else from run_info.json."""
    if provenance and provenance.get("device"):
        return str(provenance["device"])
    info = read_json(run_dir / "run_info.json") or {}
    return info.get("device")


def _check_run(run_dir: Path, trust: Sequence[str] = ()) -> tuple[Path, DictConfig, dict[str, Any]]:
    """The run's saved config (path and content) and metrics, or an error naming the bad file or
    what its configs may not build (`medtrain.engine.trust`: checked here, before the rerun's
    process composes and trains `.hydra/config.yaml`, and before anything resolves it)."""
    if not run_dir.is_dir():
        raise ConfigError(f"run_dir: {run_dir} is not a folder")
    if (run_dir / "ensemble.json").is_file():
        raise ConfigError(
            f"run_dir: {run_dir} is an ensemble of other runs, not a training run: rerun its "
            "members (a CV's folds: run `medtrain cv` again with a new cv.dir)"
        )
    config = run_dir / ".hydra" / "config.yaml"
    if not config.is_file():
        jobs = sorted(
            (p.name for p in run_dir.iterdir() if (p / ".hydra" / "config.yaml").is_file()),
            key=lambda name: (not name.isdigit(), int(name) if name.isdigit() else 0, name),
        )
        marked = marked_as(run_dir, ("multirun.yaml", "folds.json", "study.db", "study.json"))
        if jobs:  # a grid's, a search's or a CV's folder: its runs are the folders below it
            raise ConfigError(
                f"run_dir: {run_dir} holds {marked[0] if marked else 'runs'}, not a run: rerun "
                f"one of its runs, run_dir={run_dir / jobs[0]} (its runs: {', '.join(jobs[:8])}"
                f"{', ...' if len(jobs) > 8 else ''})"
            )
        raise ConfigError(f"{config} not found: run_dir must be a run folder of medtrain train")
    try:
        saved = OmegaConf.load(config)
    except Exception as err:  # YAML reports syntax errors with several exception types
        raise DataError(f"cannot read {config}: {str(err).splitlines()[0]}") from err
    check_run_folder(run_dir, trust)  # .hydra/config.yaml and the config in checkpoints/best.pt
    metrics = read_json(run_dir / "metrics.json")
    if metrics is None:
        pruned = pruned_at(run_dir)
        if pruned:
            raise ConfigError(
                f"{run_dir} is a search's trial {pruned} (medtrain sweep): it has no final "
                "metrics to reproduce; rerun a complete trial"
            )
        raise ConfigError(f"{run_dir / 'metrics.json'} not found: did the run finish?")
    return config, saved, metrics


def processes(provenance: Mapping[str, Any] | None) -> int:
    """How many processes trained a run (provenance.json's `distributed`; 1 without it)."""
    return int(((provenance or {}).get("distributed") or {}).get("world_size", 1))


def launch_command(world: int, device: str) -> list[str]:
    """How the rerun's training starts: `python -m medtrain`, or, for a run trained by `world`
    processes, torchrun with as many processes on this machine: the same global batches and, for
    the same number of processes, the same exchanges, so the same result.

    Raises:
        ConfigError: the rerun trains on CUDA and this machine has fewer GPUs than processes.
    """
    if world <= 1:
        return [sys.executable, "-m", "medtrain"]
    if device.startswith("cuda"):
        import torch

        if torch.cuda.device_count() < world:
            raise ConfigError(
                f"the run trained with {world} processes on CUDA, and this machine has "
                f"{torch.cuda.device_count()} GPU(s): rerun it where {world} GPUs are (on "
                "several nodes: torchrun --nnodes=... -m medtrain --config-path RUN/.hydra "
                "--config-name config hydra.run.dir=OUT, then medtrain compare RUN OUT), or "
                "with device=cpu"
            )
    return [sys.executable, "-m", "torch.distributed.run", "--standalone"] + [
        f"--nproc_per_node={world}",
        "-m",
        "medtrain",
    ]


def check_same_data(saved: Any, provenance: dict[str, Any] | None) -> None:
    """Before anything is trained: the files the run read must be those it recorded (its data
    fingerprint); training on changed data would end in a MISMATCH after the whole run.

    Raises:
        ConfigError: the data (a file, a manifest and its images, a folder) changed since the run.
    """
    before = (provenance or {}).get("data") or {}
    if before.get("kind") not in ("file", "folder") or not before.get("sha256"):
        return
    now = data_fingerprint(saved, like=before)
    if now["kind"] == "missing":  # before the rerun's process starts and fails on it
        raw, started = str(saved.dataset.path), (provenance or {}).get("cwd")
        there = started and not Path(raw).is_absolute() and (Path(started) / raw).exists()
        advice = (
            f"it is relative, and the run started in {started}, where it is: run the rerun from "
            "there"
            if there
            else f"the run read {before.get('path')}; restore the data there"
        )
        where = "does not exist" if Path(raw).is_absolute() else f"is not found from {Path.cwd()}"
        raise ConfigError(f"dataset.path={raw} {where}: {advice}")
    changed = fingerprint_change(before, now)
    if changed:
        raise ConfigError(
            f"the data changed since the run: {changed}: a rerun would train on other data and "
            "cannot reproduce the run. Restore the data, or train a new run on them"
        )


def rerun(
    run_dir: str | Path,
    output: str | Path | None = None,
    atol: float = 0.0,
    cuda_atol: float = 1e-4,
    device: str | None = None,
    trust: Sequence[str] = (),
) -> dict[str, Any]:
    """Train `run_dir` again from its `.hydra/config.yaml` into `output` and compare the two runs.

    Args:
        trust: `_target_` names (or module prefixes ending in `.`) the run's configs may build
            besides the allowed ones (`medtrain.engine.trust`).

    Returns:
        What `rerun.json` (in `output`) holds: `verdict` (REPRODUCED or MISMATCH), `line` (the verdict
        line), `lines` (the report), `tolerance`, the differences, both folders.

    Raises:
        ConfigError: a missing run folder, config or metrics file, a config naming what a run
            folder may not build, or an unusable `output`.
        RerunFailed: the rerun's training exited with an error (the message ends with its output).
    """
    run_dir = Path(run_dir).resolve()
    config, saved, original_metrics = _check_run(run_dir, trust)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(output).resolve() if output else run_dir.parent / f"{run_dir.name}_rerun_{stamp}"
    if out == run_dir or run_dir in out.parents:
        raise ConfigError(f"output: {out} is inside the run being checked ({run_dir})")
    if out.exists() and any(out.iterdir()):
        raise ConfigError(f"output: {out} exists and is not empty; name a new folder")
    provenance = read_json(run_dir / "provenance.json")
    # A value a resumed session set (trainer.max_epochs=4 for a longer run) is in the saved
    # config and not in a best.pt saved before: said as the resume's (`resumed_changes`), not
    # as an edit.
    by_resume = resumed_values(provenance)
    changes = [
        change
        for change in config_changes(run_dir)
        if not (
            (key := change.split(" ", 1)[0]) in by_resume
            and OmegaConf.select(saved, key, default=None) == by_resume[key]
        )
    ]
    changed = [c for c in changes if c.split(" ", 1)[0] not in NO_EFFECT_KEYS]
    lines = [f"config changed since the run: {change}" for change in changed]
    lines += [
        f"config changed since the run (no effect on results): {change}"
        for change in changes
        if change not in changed
    ]
    if not (run_dir / "checkpoints" / "best.pt").is_file():
        lines.append("note: no checkpoints/best.pt, so the saved config was not checked")

    overrides = [f"hydra.run.dir={override_value(str(out))}"]
    if device:
        overrides.append(f"trainer.device={override_value(device)}")
    resumed = OmegaConf.select(saved, "trainer.resume", default=False)
    if resumed:
        overrides.append("trainer.resume=false")  # a rerun trains from scratch into a new folder
        how = "said trainer.resume=auto" if resumed == "auto" else "was resumed"
        lines.append(f"note: the run {how}; the rerun trains from scratch (trainer.resume=false)")
    resumed_otherwise = resumed_changes(provenance)
    if resumed_otherwise:
        lines.append(
            "note: the run was resumed with other values than it started with "
            f"({'; '.join(resumed_otherwise)}): the rerun trains it from scratch in one go, so it "
            "is not expected to reproduce the run bit for bit"
        )
    if (provenance or {}).get("recorded_from_epoch") is not None:
        lines.append(
            "note: the run's provenance.json was first written when it was resumed after epoch "
            f"{provenance['recorded_from_epoch']}: the environment compared is that session's"
        )
    check_same_data(saved, provenance)
    world = processes(provenance)
    trained_on = _device(run_dir, provenance) or "cpu"
    command = [*launch_command(world, device or trained_on), "--config-path", str(config.parent)]
    command += ["--config-name", "config", *overrides]
    if world > 1:
        lines.append(f"note: the run trained with {world} processes; the rerun too (torchrun)")
    env = dict(os.environ)
    threads = ((provenance or {}).get("determinism") or {}).get("cpu_threads")
    on_cpu = (device or trained_on).startswith("cpu")  # CUDA kernels do not split by CPU thread
    if threads and on_cpu:  # the run's CPU thread count (one of the cores under `cv.jobs=2` ...)
        env["OMP_NUM_THREADS"] = str(threads)
        if threads != torch.get_num_threads():
            lines.append(f"note: the run computed with {threads} CPU thread(s); the rerun too")
    print(f"rerunning {run_dir} into {out} ...", flush=True)
    # Relative dataset paths resolve from the current folder, as they did for the original run.
    # One stream, stdout and stderr interleaved: Hydra logs errors to stdout, Python to stderr.
    process = children.start(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        env=env,
    )
    try:
        output, _ = process.communicate()
    except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (`medtrain rerun` takes it so): the training too
        children.stop(process)
        finished = process.returncode == 0 and (out / "metrics.json").is_file()
        raise RerunInterrupted(out, finished) from None
    if process.returncode != 0:
        tail = output.strip().splitlines()[-20:]
        context = f" (config changed since the run: {', '.join(changed)})" if changed else ""
        raise RerunFailed(
            f"the rerun exited with status {process.returncode}{context}; the last lines of its "
            "output:\n" + "\n".join(tail)
        )
    rerun_metrics = read_json(out / "metrics.json")
    if rerun_metrics is None:
        raise RerunFailed(f"the rerun finished without writing {out / 'metrics.json'}")

    rerun_provenance = read_json(out / "provenance.json")
    if provenance is not None and rerun_provenance is None:
        # A rerun by a medtrain that does not write provenance yet: this process runs the same
        # interpreter, packages, checkout and data, so it can describe the rerun's environment
        # (determinism flags are the training process's own and are left out).
        rerun_provenance = collect_provenance(saved, _device(out, None) or "unknown")
        rerun_provenance["git"].pop("diff", None)
        rerun_provenance.pop("determinism")
    devices = {"original": _device(run_dir, provenance), "rerun": _device(out, rerun_provenance)}
    on_cuda = any(str(d).startswith("cuda") for d in devices.values() if d)
    tolerance = metric_tolerance(devices.values(), atol, cuda_atol)
    differences = compare_metrics(original_metrics, rerun_metrics, tolerance)
    environment = environment_changes(provenance, rerun_provenance) if provenance else []
    if provenance is None:
        lines.append("note: the run has no provenance.json; its environment was not compared")
    elif provenance.get("cwd") not in (None, str(Path.cwd())):
        lines.append(
            f"note: the run started in {provenance['cwd']}, the rerun in {Path.cwd()} (relative "
            "dataset paths resolve from there)"
        )

    lines += [f"metric differs: {d}" for d in differences]
    lines += [f"environment changed: {change}" for change in environment]
    where = "CUDA" if on_cuda else "CPU"
    compared = len(set(original_metrics) | set(rerun_metrics))
    lines.append(
        f"compared {compared} metrics of {run_dir} (device {devices['original']}) and {out} "
        f"(device {devices['rerun']}) with tolerance {tolerance:g} ({where})"
    )
    reproduced = not differences and not changed
    if reproduced:
        equal = "identical" if tolerance == 0 else "equal within"
        line = f"verdict: REPRODUCED ({compared} metrics {equal}, tolerance {tolerance:g})"
    else:
        parts = []
        for name, items in (
            ("", differences),
            ("config changed: ", changed),
            ("environment changed: ", environment),
        ):
            if items:
                more = len(items) - SHOWN_AT_MOST
                shown = ", ".join(items[:SHOWN_AT_MOST]) + (
                    f", ... ({more} more)" if more > 0 else ""
                )
                parts.append(name + shown)
        line = "verdict: MISMATCH: " + "; ".join(parts)
        if resumed_otherwise:
            line += (
                f"; the run was resumed with other values ({'; '.join(resumed_otherwise)}): a "
                "rerun from scratch trains it in one go and is not expected to reproduce it bit "
                "for bit"
            )
    result = {
        "verdict": "REPRODUCED" if reproduced else "MISMATCH",
        "line": line,
        "lines": lines,
        "original": str(run_dir),
        "rerun": str(out),
        "tolerance": tolerance,
        "devices": devices,
        "metrics_compared": compared,
        "metric_differences": differences,
        "config_changes": changed,
        "environment_changes": environment,
        "resumed_changes": resumed_otherwise,
        "command": command,
    }
    save_json(out / "rerun.json", result)
    return result
