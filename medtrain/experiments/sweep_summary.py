"""The summary of a sweep folder (a grid, `medtrain -m ...`, or a search, `medtrain sweep`):
`sweep_summary.csv`, `sweep_summary.md` (one row per job, best first) and `sweep_<param>.png` (the
monitored metric against each swept parameter). `medtrain report sweep_dir=<folder>` writes it
again."""

from __future__ import annotations

import csv
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from medtrain.errors import ConfigError, DataError
from medtrain.io import atomic_write, read_json, save_csv
from medtrain.metrics.direction import metric_direction

HEADLINE = ("auc", "acc", "balanced_acc", "f1", "dice", "iou", "hd95_mm")
HEADLINE += ("mae", "rmse", "r2", "pearson", "qwk")
STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


def _read_json(path: Path) -> dict[str, Any] | None:
    """A job file's content, None when missing or unreadable (a summary lists broken jobs too)."""
    try:
        return read_json(path)
    except DataError:
        return None


def _overrides(job_dir: Path) -> list[str]:
    for path in (job_dir / ".hydra" / "overrides.yaml", job_dir / "overrides.yaml"):
        if path.exists():
            return [str(o) for o in OmegaConf.load(path)]
    return []


def same_job(overrides: list[str]) -> frozenset[str]:
    """A job's overrides as a set, without `trainer.resume` (a grid continued with it is the same
    grid)."""
    return frozenset(o for o in overrides if not o.lstrip("+").startswith("trainer.resume="))


def job_dirs(sweep_dir: Path) -> list[Path]:
    """Job folders (`0/`, `1/`, ...): Hydra's with `.hydra/overrides.yaml`, the sweep's with
    `overrides.yaml`; in job-number order. A rerun of a job (`medtrain rerun` writes
    `<job>_rerun_<time>/` beside it, with `rerun.json`) is no job of the sweep."""
    found = [
        d
        for d in Path(sweep_dir).iterdir()
        if d.is_dir()
        and not d.name.startswith(".")  # a run folder's own .hydra/ is no job
        and not (d / "rerun.json").exists()
        and ((d / ".hydra" / "overrides.yaml").exists() or (d / "overrides.yaml").exists())
    ]
    return sorted(found, key=_job_order)


def _job_order(job_dir: Path) -> tuple:
    name = job_dir.name
    return (not name.isdigit(), int(name) if name.isdigit() else 0, name)


def study_trials(sweep_dir: Path, study=None) -> tuple[dict[int, dict[str, Any]], dict[str, str]]:
    """From the study of a `medtrain sweep` search (`study.db`, or the shared storage that
    `study.json` names): {trial number: its status, error, overrides, and what a worker on another
    machine recorded of it} and {param: 'log' or 'categorical'} for params searched on a log scale
    or by choice. Surplus draws of a shared sweep (never run) are left out. `study`: the study
    itself, when the caller holds it open."""

    from medtrain.experiments.studies import SURPLUS, read_study, search_of

    study = study if study is not None else read_study(sweep_dir)  # read_study quiets Optuna
    if study is None:
        return {}, {}
    search = search_of(study) or {}
    base = list(search.get("overrides") or [])
    trials, scales = {}, {}
    for trial in study.get_trials(deepcopy=False):
        if trial.user_attrs.get(SURPLUS):
            continue
        last = (
            trial.intermediate_values[max(trial.intermediate_values)]
            if trial.intermediate_values
            else None
        )
        trials[trial.number] = {
            "status": STATES.get(trial.state.name, trial.state.name.lower()),
            "error": trial.user_attrs.get("error", ""),
            # what the trial folder's overrides.yaml says (a trial killed at once has none)
            "overrides": base + [f"{k}={v}" for k, v in trial.params.items()],
            "value": trial.value if trial.value is not None else last,
            "monitor": search.get("monitor"),  # what `value` is
            "test_metrics": trial.user_attrs.get("test_metrics", {}),
            "folder": trial.user_attrs.get("folder", ""),
        }
        for key, dist in trial.distributions.items():
            if getattr(dist, "log", False) or hasattr(dist, "choices"):
                scales[key] = "log" if getattr(dist, "log", False) else "categorical"
    return trials, scales


def _last_error(job_dir: Path) -> str:
    for name in ("error.txt", "train.log"):
        path = job_dir / name
        if not path.exists():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if name == "error.txt":
            return lines[0] if lines else ""
        errors = [line.split(" - ", 1)[-1] for line in lines if "[ERROR]" in line]
        if errors:
            return errors[-1]
    return ""


# What an interrupted grid job's row says: how to go on.
INTERRUPTED = (
    "stopped (Ctrl-C or SIGTERM); the same command with this hydra.sweep.dir and "
    "trainer.resume=auto continues it"
)
# A job that ended without a word (no metrics, no error, no interruption logged).
ENDED_SILENTLY = (
    "ended without a word (killed, e.g. kill -9 or out of memory), or still running; the same "
    "command with this hydra.sweep.dir and trainer.resume=auto continues it"
)
# A job the grid planned (its multirun.yaml) that has no folder.
NOT_STARTED = (
    "the grid stopped before this job (or has not reached it yet); the same command with this "
    "hydra.sweep.dir and trainer.resume=auto runs it"
)


def planned_jobs(sweep_dir: Path) -> list[list[str]]:
    """Each job's overrides, in job order, as a grid (Hydra's basic sweeper) planned them from
    its `multirun.yaml` (`hydra.sweeper.params`, then the command's overrides); [] for another
    sweeper or a file that cannot be read or expanded (a `glob` of config names)."""
    path = sweep_dir / "multirun.yaml"
    if not path.is_file():
        return []
    try:
        hydra = OmegaConf.load(path).hydra
    except Exception:  # a summary must not fail on what it only adds
        return []
    return grid_jobs(hydra)


def grid_jobs(hydra: DictConfig) -> list[list[str]]:
    """Each job's overrides, in job order, that a grid's `hydra` config node plans (Hydra's
    basic sweeper: `hydra.sweeper.params`, then the command's overrides); [] for another sweeper
    or a plan that cannot be expanded here."""
    try:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.override_parser.overrides_parser import OverridesParser

        if not str(hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
            return []
        params = [f"{k}={v}" for k, v in (hydra.sweeper.get("params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides([*params, *hydra.overrides.task])
        batches = BasicSweeper.split_arguments(parsed, None)
    except Exception:  # a summary must not fail on what it only adds
        return []
    return [list(map(str, job)) for batch in batches for job in batch]


# How the log line of an interrupted run starts (`medtrain.commands.train.say_interrupted`).
INTERRUPTED_LOG = "interrupted; the same command"


def _interrupted(job_dir: Path) -> bool:
    """Whether the job's last log line says it was interrupted."""
    path = job_dir / "train.log"
    lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
    return bool(lines) and INTERRUPTED_LOG in lines[-1]


def _history(job_dir: Path) -> list[dict[str, str]]:
    path = job_dir / "history.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _float(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_job(job_dir: Path, monitor: str, trial: dict[str, Any] | None) -> dict[str, Any]:
    """One summary row: overrides, status, monitored metric, test headline metrics, time, error.
    A search's trial whose folder is not here (a worker on another machine) is described by what
    the study recorded of it."""
    metrics = _read_json(job_dir / "metrics.json")
    history = _history(job_dir)
    if trial is not None and not job_dir.is_dir():
        remote = dict(trial.get("test_metrics") or {})
        row = {"job": job_dir.name, "status": trial["status"], "error": trial["error"]}
        same = trial.get("monitor") in (None, monitor)  # else the study did not record it
        row[monitor] = _float(trial.get("value")) if same else None
        row |= {f"test/{k}": remote[k] for k in HEADLINE if k in remote}
        row["train_seconds"] = remote.get("train_seconds")
        row["folder"] = trial.get("folder", "")
        return row
    if trial is not None:
        status, error = trial["status"], trial["error"]
    elif not job_dir.is_dir():  # planned by the grid, not started
        status, error = "not started", NOT_STARTED
    elif metrics is not None:  # a Hydra job: finished when it wrote metrics.json
        status, error = "complete", ""
    elif _interrupted(job_dir):
        status, error = "interrupted", INTERRUPTED
    else:
        status, error = "failed", _last_error(job_dir)
        if not error:
            status, error = "interrupted", ENDED_SILENTLY
    if status == "failed" and not error:
        error = _last_error(job_dir)
    row: dict[str, Any] = {"job": job_dir.name, "status": status, "error": error}
    if metrics is not None:
        row[monitor] = _float(metrics.get(monitor))
        row |= {f"test/{k}": metrics[f"test/{k}"] for k in HEADLINE if f"test/{k}" in metrics}
    elif history:  # pruned, failed or unfinished: the last validated epoch
        values = [_float(r.get(monitor)) for r in history]
        row[monitor] = next((v for v in reversed(values) if v is not None), None)
    info = _read_json(job_dir / "run_info.json")
    if info is not None:
        row["train_seconds"] = info.get("train_seconds")
    elif history:  # stopped before the end: the epochs it trained
        row["train_seconds"] = round(sum(_float(r.get("time_s")) or 0.0 for r in history), 2)
    return row


def _recorded(job_dir: Path) -> list[str]:
    """The metrics a job recorded: its metrics.json's keys and history.csv's columns."""
    history = _history(job_dir)
    return [*(_read_json(job_dir / "metrics.json") or {}), *(history[0] if history else {})]


def _job_config(job_dir: Path):
    path = job_dir / ".hydra" / "config.yaml"
    return OmegaConf.load(path) if path.exists() else None


def _split(override: str) -> tuple[str, str | None]:
    """`key=value` as (key, value); a deletion without a value (`~key`) as (`~key`, None)."""
    key, sep, value = override.partition("=")
    return key.lstrip("+"), value if sep else None


def _joined(key: str, value: str | None) -> str:
    return key if value is None else f"{key}={value}"


def write_sweep_summary(
    sweep_dir: Path, monitor: str | None = None, plots: bool = True, study=None
) -> Path:
    """Write `sweep_summary.csv`, `sweep_summary.md` and (with `plots`) `sweep_<param>.png` into
    `sweep_dir`; return the CSV's path.

    Args:
        monitor: the metric to rank by; default the jobs' `task.monitor`.
        study: a search's study, when the caller holds it (else read from the folder).

    Raises:
        FileNotFoundError: `sweep_dir` holds no job folder.
    """
    sweep_dir = Path(sweep_dir)
    if (sweep_dir / ".hydra" / "config.yaml").is_file() and (sweep_dir / "metrics.json").is_file():
        raise ConfigError(
            f"{sweep_dir} is a run folder, not a sweep's: medtrain report run_dir=..."
        )
    found = job_dirs(sweep_dir) if sweep_dir.is_dir() else []
    trials, scales = study_trials(sweep_dir, study)
    # A grid's jobs that never started: those its multirun.yaml plans that no folder ran (job
    # folders named otherwise than by number, `hydra.sweep.subdir`, are matched by overrides).
    planned = {} if trials or not found else dict(enumerate(planned_jobs(sweep_dir)))
    ran = {same_job(_overrides(job)) for job in found}
    planned = {n: job for n, job in planned.items() if same_job(job) not in ran}
    numbered = {sweep_dir / str(n) for n in (*trials, *planned)}
    jobs = sorted(set(found) | numbered, key=_job_order)
    if not jobs:
        raise FileNotFoundError(
            f"{sweep_dir}: no job folders (with .hydra/overrides.yaml or overrides.yaml)"
        )
    numbers = {job.name: int(job.name) if job.name.isdigit() else None for job in jobs}
    configs = [c for c in map(_job_config, jobs) if c is not None]
    tasks = Counter((c.task.monitor, c.task.monitor_mode) for c in configs if "task" in c)
    asked = monitor is not None
    monitor = monitor or (tasks.most_common(1)[0][0][0] if tasks else "val/loss")
    mode = next(
        (m for (k, m), _ in tasks.most_common() if k == monitor),
        # val/rmse ranked upwards put the worst job first
        metric_direction(monitor) or ("min" if "loss" in monitor else "max"),
    )

    overrides = {
        job.name: dict(
            map(
                _split,
                _overrides(job)
                or trials.get(numbers[job.name], {}).get("overrides", [])
                or planned.get(numbers[job.name], []),
            )
        )
        for job in jobs
    }
    keys = list(dict.fromkeys(k for o in overrides.values() for k in o))
    # What differs between jobs, and what a search searched (a choice every trial drew alike too)
    swept = [k for k in keys if len({o.get(k) for o in overrides.values()}) > 1 or k in scales]
    common = [_joined(k, overrides[jobs[0].name][k]) for k in keys if k not in swept and swept]
    rows = []
    for job in jobs:
        trial = trials.get(numbers[job.name])
        row = read_job(job, monitor, trial)
        shown = swept or keys
        row["overrides"] = " ".join(
            _joined(k, overrides[job.name][k]) for k in shown if k in overrides[job.name]
        )
        row["params"] = {k: overrides[job.name].get(k) for k in swept}
        rows.append(row)
    if asked and all(r.get(monitor) is None for r in rows):
        known = sorted({k for job in jobs for k in _recorded(job) if k.startswith("val/")})
        if known:  # the jobs recorded metrics, not this one: a misspelt or other task's metric
            raise ConfigError(f"monitor={monitor}: no job recorded it; they recorded {known}")
    sign = 1 if mode == "min" else -1
    rows.sort(
        key=lambda r: (
            r.get(monitor) is None,
            r["status"] != "complete",
            sign * (r.get(monitor) or 0.0),
        )
    )

    metric_columns = [c for c in (f"test/{k}" for k in HEADLINE) if any(c in r for r in rows)]
    metric_columns = [c for c in metric_columns if c != monitor]  # ranked by a test metric: once
    fields = ["job", "overrides", "status", monitor, *metric_columns, "train_seconds", "error"]
    if any(r.get("folder") for r in rows):  # a shared search's trials run on other machines
        fields.append("folder")
    csv_path = save_csv(sweep_dir / "sweep_summary.csv", rows, fields)
    markdown = _markdown(sweep_dir, rows, fields, monitor, mode, common)
    atomic_write(sweep_dir / "sweep_summary.md", lambda handle: handle.write(markdown))
    if plots:
        for key in swept:
            plot_param(sweep_dir, rows, key, monitor, scales.get(key, ""))
    return csv_path


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    text = str(value)
    # Long sampled floats (0.0012345678912345) are shortened for reading; the CSV keeps them exact.
    text = re.sub(r"(?<==)(-?\d+\.\d{5,}(?:e-?\d+)?)", lambda m: f"{float(m.group(1)):.4g}", text)
    return " ".join(text.split()).replace("|", "\\|")  # one table row per job


def _markdown(sweep_dir: Path, rows, fields, monitor: str, mode: str, common: list[str]) -> str:
    counts = Counter(r["status"] for r in rows)
    lines = [
        f"# Sweep summary: {sweep_dir}",
        "",
        f"{len(rows)} job{'s' if len(rows) != 1 else ''}: "
        + ", ".join(f"{n} {s}" for s, n in counts.items())
        + f"; ranked by {monitor} ({mode}).",
    ]
    if common:
        lines.append(f"Every job: `{' '.join(common)}`.")
    lines += ["", "| " + " | ".join(fields) + " |", "|" + "---|" * len(fields)]
    lines += ["| " + " | ".join(_cell(r.get(f)) for f in fields) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_param(sweep_dir: Path, rows, key: str, monitor: str, scale: str = "") -> Path | None:
    """`sweep_<key>.png`: the monitored metric against one swept parameter, for complete and pruned
    jobs. Categorical (labelled points) for choices and text values; a log x axis for `scale='log'`
    or positive values spanning more than two decades."""
    points = [
        (r["params"].get(key), r[monitor], r["status"]) for r in rows if r.get(monitor) is not None
    ]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")  # files only; no display is needed or wanted
    import matplotlib.pyplot as plt

    from medtrain.analysis.plots import save_figure

    numbers = [_float(x) for x, _, _ in points]
    figure, ax = plt.subplots(figsize=(5.0, 3.8))
    if scale != "categorical" and None not in numbers:
        xs = numbers
        if scale == "log" or (min(xs) > 0 and max(xs) / min(xs) > 100):
            ax.set_xscale("log")
    else:
        labels = sorted(
            {str(x) for x, _, _ in points}, key=lambda t: (_float(t) is None, _float(t) or 0.0, t)
        )
        xs = [labels.index(str(x)) for x, _, _ in points]
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
    for status, marker in (("complete", "o"), ("pruned", "x"), ("failed", "v"), ("running", "s")):
        chosen = [(x, y) for x, (_, y, s) in zip(xs, points, strict=True) if s == status]
        if chosen:
            ax.scatter(
                *zip(*chosen, strict=True),
                marker=marker,
                label=f"{status} ({len(chosen)})",
                alpha=0.8,
            )
    ax.set_xlabel(key)
    ax.set_ylabel(
        monitor + ("  (pruned: last epoch)" if any(s == "pruned" for *_, s in points) else "")
    )
    missing = len(rows) - len(points)
    ax.set_title(
        f"{monitor} against {key}"
        + (f"\n({missing} jobs without a value not shown)" if missing else "")
    )
    ax.legend(fontsize=8)
    path = sweep_dir / f"sweep_{re.sub(r'[^A-Za-z0-9._-]', '_', key)}.png"
    save_figure(path, figure)
    return path
