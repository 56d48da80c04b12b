"""k-fold cross-validation of any experiment (the library behind `medtrain cv`).

`<cv.dir>/` holds, in the order a CV makes them:

- `folds.json`: the fold of every case of the data's train and val splits (seeded; stratified by
  class for classification and by grade for ordinal regression, `Task.fold_strata`; grouped when
  the dataset names groups, e.g. `dataset.group_column`); the test split is in no fold. A second
  CV in the same folder reuses it.
- `fold_<k>/`: an ordinary run folder (`medtrain train ... cv.fold=k cv.folds_file=...`), trained
  on the other folds, its checkpoint and threshold chosen on fold k, tested on the test split.
  Folds with `metrics.json` are done; a killed fold resumes from its `last.pt`.
- `oof_predictions.csv` (with a `fold` column) and `oof/` (the task's other files): every case
  predicted by the one fold model that did not train on it; the pooled out-of-fold metrics, and
  the decision threshold chosen on them.
- `cv_metrics.csv`, `cv_summary.md`, `cv_metrics.png`: per-fold metrics, mean and sd (ddof 1),
  the pooled out-of-fold metrics and the fold ensemble's test metrics.
- `ensemble/`: the k fold models averaged (`medtrain.models.ensemble.ModelAverage`) with the
  out-of-fold threshold, evaluated on the test split; a run folder that predicts, serves and
  exports like any run.

This module draws the folds and trains them; `cv_results` pools and summarizes them and
`cv_ensemble` makes the fold ensemble.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from medtrain.data.folds import (
    FOLDS_VERSION,
    assign_folds,
    check_folds_file,
    fold_fields,
    fold_units,
    read_folds,
    stratifiable,
)
from medtrain.engine.build import build_datasets, task_class
from medtrain.engine.config import (
    bare_key,
    compose_config,
    override_value,
    passed_override_key,
    resolve_device,
)
from medtrain.engine.trust import check_targets
from medtrain.errors import ConfigError, MedtrainError
from medtrain.experiments import children
from medtrain.experiments.cv_ensemble import fold_ensemble
from medtrain.experiments.cv_results import (
    load_folds,
    out_of_fold,
    scales_apart,
    summary_rows,
    write_summary,
)
from medtrain.io import read_json, save_json

log = logging.getLogger(__name__)

DEFAULTS: dict[str, Any] = {
    "folds": 5,
    "dir": None,
    "seed": None,
    "jobs": 1,
    "ensemble": True,
    "trust": [],
}
# Set per fold by the CV itself, never on its command line.
SET_PER_FOLD = ("cv.fold", "cv.folds_file", "hydra.run.dir", "trainer.resume")


class FoldsFailed(MedtrainError):
    """Some folds ended with an error; the same command trains them again."""


@dataclass
class CrossValidation:
    """A CV's settings (`cv.*` on the command line) and the training overrides of every fold."""

    folds: int
    dir: Path
    seed: int | None
    jobs: int
    ensemble: bool
    overrides: list[str] = field(default_factory=list)
    trust: list[str] = field(default_factory=list)

    def fold_dir(self, fold: int) -> Path:
        return self.dir / f"fold_{fold}"


def parse_args(argv: list[str]) -> CrossValidation:
    """Split the command line into `cv.*` settings and training overrides.

    Raises:
        ConfigError: an unknown `cv.` key, a bad value, or an override the CV sets per fold.
    """
    settings, overrides = dict(DEFAULTS), []
    for arg in argv:
        key, _, value = arg.partition("=")
        if passed_override_key(arg, "cv", "CV") in SET_PER_FOLD:
            raise ConfigError(
                f"{key} is set by the CV for each fold; name the CV folder with cv.dir=..."
            )
        if key.startswith("cv."):
            name = key.removeprefix("cv.")
            if name not in DEFAULTS:
                raise ConfigError(f"unknown key {key!r}; CV keys: {', '.join(DEFAULTS)}")
            settings[name] = value
        else:
            overrides.append(arg)
    for name, low in (("folds", 2), ("jobs", 1)):
        value = str(settings[name])
        if not value.isdigit() or int(value) < low:
            raise ConfigError(f"cv.{name}={value}: must be an integer >= {low}")
        settings[name] = int(value)
    seed = settings["seed"]
    if seed not in (None, "null"):
        if not str(seed).lstrip("-").isdigit():
            raise ConfigError(f"cv.seed={seed}: must be an integer (default: the config's seed)")
        settings["seed"] = int(seed)
    else:
        settings["seed"] = None
    trust = settings["trust"]
    if isinstance(trust, str):  # cv.trust=[my_models.TinyNet,my_pkg.]
        trust = [t.strip() for t in trust.strip("[]").split(",") if t.strip()]
    settings["trust"] = list(trust)
    ensemble = str(settings["ensemble"]).lower()
    if ensemble not in ("true", "false"):
        raise ConfigError(f"cv.ensemble={settings['ensemble']}: true or false")
    settings["ensemble"] = ensemble == "true"
    directory = settings.pop("dir") or datetime.now().strftime("outputs/cv/%Y-%m-%d/%H-%M-%S")
    return CrossValidation(dir=Path(directory).resolve(), overrides=overrides, **settings)


# -- folds ---------------------------------------------------------------------------------------
def draw_folds(cv: CrossValidation, cfg: DictConfig) -> Path:
    """`<cv.dir>/folds.json`: drawn from the data's train and val splits, or the saved one checked
    against them (same cases, folds and seed)."""
    path = cv.dir / "folds.json"
    # Without a test split: out-of-fold alone; without a val split: the folds of train alone.
    datasets = build_datasets(cfg, empty_test=True, empty_val=True)
    train, val, test = datasets["train"], datasets["val"], datasets["test"]
    fold_fields(type(train))  # a class whose cases cannot be regrouped: refused before training
    pool = fold_units(train) + fold_units(val)  # sample ids, or whole volumes of slices
    twice = sorted(i for i, n in Counter(pool).items() if n > 1)
    if twice:
        raise ConfigError(f"dataset: ids {twice[:3]} are in both the train and val splits")
    seed = int(cfg.seed) if cv.seed is None else cv.seed
    if path.exists():
        saved = read_folds(path)
        check_folds_file(saved, path, pool, fold_units(test))
        if (saved["folds"], saved["seed"]) != (cv.folds, seed):
            raise ConfigError(
                f"{path} holds {saved['folds']} folds drawn with seed {saved['seed']}, not "
                f"cv.folds={cv.folds} with seed {seed}: use a new cv.dir, or the same settings"
            )
        return path
    labels = [getattr(data, "labels", None) for data in (train, val)]  # masks: no labels
    classes = (
        None
        if labels[0] is None or labels[1] is None
        else task_class(cfg).fold_strata(cfg, np.concatenate(labels))
    )
    stratified = classes is not None and stratifiable(classes, cv.folds)
    if classes is not None and not stratified:
        log.info(
            "cv: folds drawn unstratified: a class (or grade) has fewer cases than cv.folds=%d",
            cv.folds,
        )
    grouped = train.groups is not None and val.groups is not None
    groups = list(train.groups) + list(val.groups) if grouped else None
    if grouped and test.groups is not None:
        shared = sorted(set(groups) & set(test.groups))
        if shared:
            log.warning(
                "cv: %d groups have cases in the test split and in the folds (e.g. %s): the "
                "data's own split mixes them; the test metrics are then optimistic",
                len(shared),
                shared[:3],
            )
    assignment = assign_folds(pool, cv.folds, seed, classes, groups)
    save_json(
        path,
        {
            "version": FOLDS_VERSION,
            "folds": cv.folds,
            "seed": seed,
            "stratified": stratified,
            "grouped": grouped,
            "ids": pool,
            "fold": assignment.tolist(),
            **({"group": groups} if grouped else {}),
            "test": fold_units(test),
        },
    )
    return path


def check_same_overrides(cv: CrossValidation) -> bool:
    """`<cv.dir>/overrides.json`: the training overrides of the CV's first command; a command
    that continues the CV must give the same (its finished folds were trained with them).

    Returns:
        Whether this command's overrides replace the recorded ones (other ones, taken while no
        fold has trained; `save_overrides` writes them once the other checks passed).

    Raises:
        ConfigError: other overrides than the first command's.
    """
    from medtrain.engine.resume import MAY_CHANGE

    # What may change between an interrupted run and its continuation, less the length of training:
    # a fold that finished under the first command's length is not trained again under another, so
    # the folds (and their ensemble) would have learned for different lengths.
    runs_only = {f"trainer.{key}" for key in MAY_CHANGE} - {
        "trainer.max_epochs",
        "trainer.early_stopping_patience",
    }

    def what_it_learns(overrides: list[str]) -> list[str]:  # in any order; not the device, ...
        return sorted(o for o in overrides if bare_key(o) not in runs_only)

    path = cv.dir / "overrides.json"
    saved = read_json(path) if path.is_file() else None
    if saved is None:
        return False  # written once the folds are drawn (`draw_folds`): a refused start, none
    if what_it_learns(list(saved["overrides"])) != what_it_learns(cv.overrides):
        if not any_fold_trained(cv):  # every fold failed before it trained (a config value)
            log.info(
                "cv: no fold of %s has trained yet: the CV goes on with this command's overrides "
                "(before: %s)",
                cv.dir,
                saved["overrides"],
            )
            return True
        added = [o for o in what_it_learns(cv.overrides) if o not in saved["overrides"]]
        dropped = [o for o in what_it_learns(saved["overrides"]) if o not in cv.overrides]
        raise ConfigError(
            f"{cv.dir} holds a CV trained with other overrides (added now: {added}, dropped: "
            f"{dropped}): continue it with {saved['overrides']}, or use a new cv.dir"
        )
    return False


def any_fold_trained(cv: CrossValidation) -> bool:
    """Whether a fold of the CV has trained: finished (`metrics.json`) or saved a checkpoint."""
    return any(cv.dir.glob("fold_*/metrics.json")) or any(cv.dir.glob("fold_*/checkpoints/*.pt"))


def save_overrides(cv: CrossValidation, replace: bool = False) -> None:
    """`<cv.dir>/overrides.json`, once (or again, `replace`d: see `check_same_overrides`): what
    `check_same_overrides` holds a later command to."""
    if replace or not (cv.dir / "overrides.json").is_file():
        save_json(cv.dir / "overrides.json", {"overrides": cv.overrides})


def check_same_data(cv: CrossValidation, cfg: DictConfig) -> None:
    """The data must be what the CV's folds trained on so far (each fold's `provenance.json`
    records its data fingerprint): folds of the old labels or images would be pooled and
    ensembled with folds of the new ones, and the out-of-fold predictions scored against the new
    labels.

    Raises:
        ConfigError: naming the first fold that trained on other data and what changed.
    """
    from medtrain.engine.provenance import data_fingerprint, fingerprint_change

    now = {}  # hashed once per folder rule the folds recorded (`data_fingerprint`'s `like`)
    for fold in range(cv.folds):
        before = ((read_json(cv.fold_dir(fold) / "provenance.json") or {}).get("data")) or {}
        if before.get("kind") not in ("file", "folder") or not before.get("sha256"):
            continue
        rule = before.get("rule", 1)
        now[rule] = now.get(rule) or data_fingerprint(cfg, like=before)
        changed = fingerprint_change(before, now[rule])
        if changed:
            raise ConfigError(
                f"the data changed since fold {fold} of {cv.dir} trained: {changed}. Its folds "
                "would be pooled and ensembled with folds of other labels or images: restore "
                "the data, or run the CV again in a new cv.dir"
            )


# -- training ------------------------------------------------------------------------------------
def fold_command(cv: CrossValidation, fold: int, folds_file: Path) -> list[str]:
    """The `medtrain train` command of one fold (resuming from its `last.pt` when it has one)."""
    folder = cv.fold_dir(fold)
    command = [sys.executable, "-m", "medtrain", "train", *cv.overrides]
    command += [
        f"cv.fold={fold}",
        f"cv.folds_file={override_value(str(folds_file))}",
        f"hydra.run.dir={override_value(str(folder))}",
    ]
    if (folder / "checkpoints" / "last.pt").is_file():
        command.append("trainer.resume=true")
    return command


def report_wanted(fold: Path) -> bool:
    """Whether a fold's saved config asks for its report (`trainer.report`)."""
    config = fold / ".hydra" / "config.yaml"
    if not config.is_file():
        return False
    return bool(OmegaConf.select(OmegaConf.load(config), "trainer.report", default=True))


def run_folds(cv: CrossValidation, folds_file: Path) -> list[int]:
    """Train the folds without `metrics.json`, `cv.jobs` at a time (each its own process, its
    console in `fold_<k>/console.log`); returns the folds that failed."""
    pending = [k for k in range(cv.folds) if not (cv.fold_dir(k) / "metrics.json").is_file()]
    done = cv.folds - len(pending)
    if done:
        log.info("cv: %d of %d folds already trained in %s", done, cv.folds, cv.dir)
    for k in sorted(set(range(cv.folds)) - set(pending)):
        fold = cv.fold_dir(k)
        if not (fold / "report.html").is_file() and report_wanted(fold):
            # Stopped while it wrote its report, after metrics.json: written now.
            from medtrain.analysis.report import write_report

            try:
                written = write_report(fold, checked=False)
            except Exception as err:  # the fold's results stand; its report can be written later
                log.warning(
                    "cv: fold %d has no report (%s): medtrain report run_dir=%s", k, err, fold
                )
            else:
                log.info("cv: fold %d's report, left unwritten: %s", k, written)
    env = dict(os.environ)
    if cv.jobs > 1 and "OMP_NUM_THREADS" not in env:  # the cores shared between the jobs
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // cv.jobs))
    running: dict[int, tuple[subprocess.Popen, float, Any]] = {}
    failed: list[int] = []
    try:
        while pending or running:
            while pending and len(running) < cv.jobs:
                fold = pending.pop(0)
                folder = cv.fold_dir(fold)
                folder.mkdir(parents=True, exist_ok=True)
                command = fold_command(cv, fold, folds_file)
                resumed = " (resumed)" if command[-1] == "trainer.resume=true" else ""
                log.info("cv: fold %d of %d started%s", fold, cv.folds, resumed)
                console = (folder / "console.log").open("a")
                process = children.start(command, stdout=console, stderr=subprocess.STDOUT, env=env)
                running[fold] = (process, time.perf_counter(), console)
            time.sleep(0.2)
            for fold, (process, start, console) in list(running.items()):
                if process.poll() is None:
                    continue
                console.close()
                del running[fold]
                seconds = time.perf_counter() - start
                if process.returncode == 0 and (cv.fold_dir(fold) / "metrics.json").is_file():
                    log.info("cv: fold %d done in %.0f s", fold, seconds)
                else:
                    failed.append(fold)
                    cause = last_error(cv.fold_dir(fold) / "console.log")
                    log.error(
                        "cv: fold %d failed (exit %s)%s; see %s",
                        fold,
                        process.returncode,
                        f": {cause}" if cause else "",
                        cv.fold_dir(fold) / "console.log",
                    )
    finally:  # interrupted: stop the folds in flight (they resume from last.pt next time)
        for process, _, console in running.values():
            children.stop(process)
            console.close()
    return sorted(failed)


def last_error(console: Path) -> str | None:
    """The last error a fold's console shows (medtrain's `ERROR` log line, or a command-line
    `error:`), without its time stamp: why the fold failed, said where the CV is watched."""
    try:
        lines = console.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if "][ERROR] - " in line:
            return line.split("][ERROR] - ", 1)[1].strip()
        if line.startswith("error: "):
            return line[len("error: ") :].strip()
    return None


def fold_warnings(cv: CrossValidation) -> list[str]:
    """The folds' data-check warnings (each fold's `data_report.json`), each once with the folds
    that gave it: duplicates across the splits, a class missing from a fold's validation cases."""
    folds_of: dict[str, list[int]] = {}
    for fold in range(cv.folds):
        report = read_json(cv.fold_dir(fold) / "data_report.json") or {}
        for warning in report.get("warnings") or []:
            folds_of.setdefault(str(warning), []).append(fold)
    return [
        f"Data check of {'every fold' if len(folds) == cv.folds else f'folds {folds}'}: {text}"
        for text, folds in folds_of.items()
    ]


# The folds' data-check warnings said on the console (all of them in cv_summary.md).
MAX_SAID = 10


# -- the whole CV --------------------------------------------------------------------------------
def run_cv(cv: CrossValidation) -> dict[str, Any]:
    """Draw (or reuse) the folds, train the unfinished ones, pool their out-of-fold predictions,
    ensemble them on the test split, and write the summaries; returns what `cv.json` holds.

    Raises:
        ConfigError: bad settings or overrides (before any fold trains).
        FoldsFailed: some folds ended with an error (the others are kept).
    """
    cfg = compose_config(cv.overrides)  # a typo stops the CV before anything is written
    # The folds are loaded back as run folders: classes they may not build stop the CV now.
    check_targets(OmegaConf.to_container(cfg), "the CV's config", cv.trust, option="cv.trust")
    if cv.dir.exists() and not cv.dir.is_dir():
        raise ConfigError(f"cv.dir={cv.dir} is a file; give a folder")
    held = [name for name in ("metrics.json", "checkpoints") if (cv.dir / name).exists()]
    if held:  # a run's folder: the CV would write its files among the run's
        raise ConfigError(
            f"cv.dir={cv.dir} holds a run ({', '.join(held)}): give the CV a folder of its own"
        )
    searched = [n for n in ("study.db", "study.json", "sweep_summary.md") if (cv.dir / n).exists()]
    if searched:  # a sweep's folder: its trials and summary would be mixed with the folds
        raise ConfigError(
            f"cv.dir={cv.dir} holds a sweep ({', '.join(searched)}): give the CV a folder of its "
            "own"
        )
    made = [p for p in (cv.dir, *cv.dir.parents) if not p.exists()]  # the deepest first
    cv.dir.mkdir(parents=True, exist_ok=True)
    try:
        replace = check_same_overrides(cv)  # first: a dropped override is named, not its effect
        check_same_data(cv, cfg)
        folds_file = draw_folds(cv, cfg)
        save_overrides(cv, replace)
    except (MedtrainError, KeyboardInterrupt):  # stopped before anything was written: no folder
        for folder in made:
            with contextlib.suppress(OSError):  # not empty: kept
                folder.rmdir()
        raise
    start = time.perf_counter()
    failed = run_folds(cv, folds_file)
    if failed:
        again = (
            "trains them again and keeps the finished ones"
            if any_fold_trained(cv)
            else "and the cause fixed trains them (no fold has trained, so the overrides may change)"
        )
        raise FoldsFailed(
            f"folds {failed} failed (see {cv.dir}/fold_<k>/console.log); the same command with "
            f"cv.dir={cv.dir} {again}"
        )
    train_seconds = time.perf_counter() - start
    dev = resolve_device(str(cfg.trainer.device), "trainer.device")  # pooling and the ensemble
    runs = load_folds(cv)
    task, oof, threshold = out_of_fold(cv, runs, dev)
    tested = bool(read_folds(folds_file)["test"])
    if cv.ensemble and not tested:
        log.info("cv: the data has no test split: the fold ensemble is made, not tested")
    ensemble = fold_ensemble(cv, runs, task, threshold, oof, dev, tested) if cv.ensemble else None
    rows, columns = summary_rows(cv, task, oof, ensemble if tested else None)
    notes = []
    if threshold is not None:
        rule = getattr(task, "threshold_rule", None)
        notes.append(
            f"Decision threshold chosen on the pooled out-of-fold predictions ({rule}): {threshold}."
            if isinstance(rule, str)
            else f"Decision threshold, fixed by task.threshold: {threshold}."
        )
    notes += scales_apart(rows[: cv.folds], oof)
    if not tested:
        notes.append(
            "The data has no test split: the folds are judged by their held-out folds and the "
            "pooled out-of-fold predictions alone; the fold ensemble (ensemble/) averages them "
            "for deployment, untested."
        )
    checked = fold_warnings(cv)
    for line in checked[:MAX_SAID]:
        log.warning("cv: %s", line)
    if len(checked) > MAX_SAID:
        log.warning("cv: and %d more data-check warnings in cv_summary.md", len(checked) - MAX_SAID)
    notes += checked
    write_summary(cv, rows, columns, notes)
    fold_seconds = [
        (read_json(cv.fold_dir(k) / "run_info.json") or {}).get("train_seconds")
        for k in range(cv.folds)
    ]
    summary = {
        "folds": cv.folds,
        "seed": read_folds(folds_file)["seed"],
        "overrides": cv.overrides,
        "fold_train_seconds": fold_seconds,
        "seconds_this_session": round(time.perf_counter() - start, 1),
        "folds_seconds_this_session": round(train_seconds, 1),
        "threshold": threshold,
        "oof": oof,
        "ensemble": None
        if ensemble is None
        else {k: v for k, v in ensemble.items() if k.startswith("test/")},
    }
    save_json(cv.dir / "cv.json", summary)
    return summary
