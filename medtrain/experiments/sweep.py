"""Hyperparameter searches (the library behind `medtrain sweep`): an Optuna search over config values that maximises (or minimises) the
monitored validation metric, prunes poor trials epoch by epoch, resumes from its study file and
records a failing trial without stopping."""

from __future__ import annotations

import json
import logging
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState

from medtrain.engine.callbacks import Epoch
from medtrain.engine.config import CONF, compose_config
from medtrain.engine.training import train
from medtrain.errors import ConfigError
from medtrain.io import atomic_write

log = logging.getLogger(__name__)
STUDY_NAME = "medtrain"
INTERRUPTED = "interrupted"
DEFAULTS: dict[str, Any] = {
    "dir": None,
    "trials": 10,
    "sampler": "tpe",
    "pruner": "median",
    "min_epochs": 1,
    "startup_trials": 3,
}
CHOICES = {"sampler": ("tpe", "random"), "pruner": ("median", "hyperband", "none")}


@dataclass
class Param:
    """One searched value: `key` is a dotted config key or a config group."""

    key: str
    kind: str  # float | log | int | choice
    values: tuple

    @property
    def distribution(self):
        if self.kind == "choice":
            return CategoricalDistribution(self.values)
        if self.kind == "int":
            return IntDistribution(*self.values)
        return FloatDistribution(*self.values, log=self.kind == "log")

    def override(self, value) -> str:
        """The Hydra override that sets this value (a group option for a group)."""
        if isinstance(value, bool) or value is None:
            text = {None: "null", True: "true", False: "false"}[value]
        else:
            text = repr(value) if isinstance(value, (int, float)) else str(value)
        return f"{self.key}={text}"


@dataclass
class Sweep:
    dir: Path
    trials: int
    sampler: str
    pruner: str
    min_epochs: int
    startup_trials: int
    params: list[Param]
    overrides: list[str] = field(default_factory=list)


def _number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{key}: {text!r} is not a number") from None


def _scalar(text: str):
    """A choice value as typed: int, float, true/false/null, else the text itself."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return {"true": True, "false": False, "null": None}.get(text.lower(), text.strip("'\""))


def _items(text: str) -> list[str]:
    """Comma-separated values; commas inside brackets belong to a value (`choice([8,16],[16,32])`)."""
    items, depth, current = [], 0, ""
    for char in text:
        depth += (char in "[{(") - (char in "]})")
        if char == "," and depth == 0:
            items.append(current.strip())
            current = ""
        else:
            current += char
    return [item for item in (*items, current.strip()) if item]


def config_dirs(overrides: list[str]) -> list[Path]:
    """medtrain's config folder and those a `hydra.searchpath=[file://...]` override adds."""
    dirs = [CONF]
    for override in overrides:
        key, _, value = override.partition("=")
        if key.lstrip("+") == "hydra.searchpath":
            for entry in value.strip("[]").split(","):
                if entry.strip().startswith("file://"):
                    dirs.append(Path(entry.strip().removeprefix("file://")))
    return dirs


def parse_spec(key: str, spec: str, dirs: list[Path] | None = None) -> Param:
    """`float(1e-4,1)`, `log(1e-4,1)`, `int(1,8)` or `choice(a,b)` as a `Param`; a config group's
    options are looked up in `dirs` (default: medtrain's config folder)."""
    where = f"sweep.params.{key}={spec}"
    match = re.fullmatch(r"\s*(float|log|int|choice)\((.*)\)\s*", spec)
    if not match:
        raise ConfigError(
            f"{where}: expected float(low,high), log(low,high), int(low,high) or choice(a,b,...)"
        )
    kind, items = match.group(1), _items(match.group(2))
    group_dirs = [d / key.split("@")[0] for d in dirs or [CONF]]
    is_group = any(d.is_dir() for d in group_dirs) and "." not in key.split("@")[0]
    if kind == "choice":
        if not items:
            raise ConfigError(f"{where}: choice needs at least one value")
        if is_group:
            missing = [o for o in items if not any((d / f"{o}.yaml").exists() for d in group_dirs)]
            if missing:
                options = sorted({p.stem for d in group_dirs for p in d.glob("*.yaml")})
                raise ConfigError(
                    f"{where}: no option {missing} in group {key!r}; options: {options}"
                )
            return Param(key, kind, tuple(items))
        return Param(key, kind, tuple(_scalar(s) for s in items))
    if is_group:
        raise ConfigError(f"{where}: {key!r} is a config group: use choice(option,...)")
    if len(items) != 2:
        raise ConfigError(f"{where}: {kind} needs two bounds, low and high")
    low, high = (_number(s, where) for s in items)
    if kind == "int":
        if low != int(low) or high != int(high):
            raise ConfigError(f"{where}: int bounds must be whole numbers")
        low, high = int(low), int(high)
    if not low < high:
        raise ConfigError(f"{where}: low must be below high")
    if kind == "log" and low <= 0:
        raise ConfigError(f"{where}: log bounds must be > 0")
    return Param(key, kind, (low, high))


def parse_args(argv: list[str]) -> Sweep:
    """Split the command line into sweep settings, searched params and ordinary overrides."""
    settings, params, overrides = dict(DEFAULTS), [], []
    dirs = config_dirs(list(argv))
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-") or not sep:
            hint = (
                " (your config folder: 'hydra.searchpath=[file://FOLDER]')"
                if arg.startswith("-")
                else ""
            )
            raise ConfigError(f"expected key=value, got {arg!r}{hint}")
        if key.startswith("sweep.params."):
            params.append(parse_spec(key.removeprefix("sweep.params."), value, dirs))
        elif key.startswith("sweep."):
            name = key.removeprefix("sweep.")
            if name not in DEFAULTS:
                raise ConfigError(
                    f"unknown key {key!r}; sweep keys: params.<key>, {', '.join(DEFAULTS)}"
                )
            settings[name] = value
        else:
            overrides.append(arg)
    if not params:
        raise ConfigError(
            "nothing to search: add sweep.params.<key>=<spec>, e.g. 'sweep.params.optimizer.lr=log(1e-4,1e-1)'"
        )
    swept = {p.key for p in params}
    fixed = [o for o in overrides if o.partition("=")[0].lstrip("+") in swept]
    if fixed:
        raise ConfigError(f"{fixed} fixes a searched key; drop it or its sweep.params entry")
    for name in ("trials", "min_epochs", "startup_trials"):
        value = str(settings[name])
        if not value.isdigit() or int(value) < (0 if name == "startup_trials" else 1):
            raise ConfigError(
                f"sweep.{name}={value}: must be an integer >= {0 if name == 'startup_trials' else 1}"
            )
        settings[name] = int(value)
    for name, valid in CHOICES.items():
        if settings[name] not in valid:
            raise ConfigError(f"sweep.{name}={settings[name]}: choose one of {', '.join(valid)}")
    directory = settings.pop("dir") or datetime.now().strftime("outputs/sweeps/%Y-%m-%d/%H-%M-%S")
    return Sweep(dir=Path(directory).resolve(), params=params, overrides=overrides, **settings)


def open_study(sweep: Sweep, cfg: DictConfig):
    """Create `<dir>/study.db`, or load it and check that it belongs to the same search."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sweep.dir.mkdir(parents=True, exist_ok=True)
    if sweep.pruner == "median":
        pruner = optuna.pruners.MedianPruner(
            n_startup_trials=sweep.startup_trials, n_warmup_steps=sweep.min_epochs
        )
    elif sweep.pruner == "hyperband":
        pruner = optuna.pruners.HyperbandPruner(
            min_resource=sweep.min_epochs,
            max_resource=max(cfg.trainer.max_epochs, sweep.min_epochs),
        )
    else:
        pruner = optuna.pruners.NopPruner()
    study = optuna.create_study(
        storage=f"sqlite:///{sweep.dir / 'study.db'}",
        pruner=pruner,
        study_name=STUDY_NAME,
        direction="maximize" if cfg.task.monitor_mode == "max" else "minimize",
        load_if_exists=True,
    )
    # Seeded by `seed` plus the trials so far: a resumed sweep draws new values instead of
    # replaying the first run's draws.
    seed = cfg.seed + len(study.get_trials(deepcopy=False))
    sampler = (
        optuna.samplers.TPESampler if sweep.sampler == "tpe" else optuna.samplers.RandomSampler
    )
    study.sampler = sampler(seed=seed)
    search = {
        "overrides": sweep.overrides,
        "params": {p.key: [p.kind, *p.values] for p in sweep.params},
        "monitor": cfg.task.monitor,
    }
    if not study.user_attrs:
        for key, value in search.items():
            study.set_user_attr(key, value)
    else:
        stored = {key: study.user_attrs.get(key) for key in search}
        changed = [k for k in search if _jsonish(search[k]) != _jsonish(stored[k])]
        if changed:
            was = "; ".join(f"{k} {stored[k]}" for k in changed)
            raise ConfigError(
                f"{sweep.dir} holds another search ({was}): resume it with the same arguments "
                "or choose another sweep.dir"
            )
    return study


def _jsonish(value):
    """Stored study attributes come back as JSON: lists for tuples, floats for ints."""
    return json.loads(json.dumps(value))


def finished_trials(study) -> list:
    """Trials that count towards `sweep.trials`: complete, pruned or failed, but not interrupted."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [
        t
        for t in study.get_trials(deepcopy=False, states=done)
        if t.user_attrs.get("error") != INTERRUPTED
    ]


def mark_interrupted(study, sweep_dir: Path) -> None:
    """A trial still RUNNING belongs to a killed process: record it as failed, 'interrupted'."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(trial._trial_id, "error", INTERRUPTED)
        study.tell(trial.number, state=TrialState.FAIL)
        _write_text(sweep_dir / str(trial.number) / "error.txt", INTERRUPTED + "\n")
        log.info("trial %d: marked failed (interrupted by a killed sweep)", trial.number)


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def run_trial(study, sweep: Sweep, monitor: str) -> None:
    """Sample one trial, train it in `<dir>/<number>/`, and tell the study how it ended."""
    trial = study.ask({p.key: p.distribution for p in sweep.params})
    sampled = [p.override(trial.params[p.key]) for p in sweep.params]
    trial_dir = sweep.dir / str(trial.number)
    _write_text(
        trial_dir / "overrides.yaml", OmegaConf.to_yaml(OmegaConf.create(sweep.overrides + sampled))
    )
    trial_log = logging.FileHandler(trial_dir / "train.log")
    trial_log.setFormatter(
        logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")
    )
    logging.getLogger().addHandler(trial_log)
    start = time.perf_counter()

    def prune(epoch: Epoch) -> None:  # an epoch callback: report, and stop a poor trial
        value = epoch.row[monitor]
        trial.report(float(value), epoch.number)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch.number}: {monitor} {value:.4g}")

    def fail(message: str, details: str = "") -> None:
        trial.set_user_attr("error", message)
        _write_text(trial_dir / "error.txt", message + "\n" + (f"\n{details}" if details else ""))
        study.tell(trial, state=TrialState.FAIL)

    outcome = ""
    try:
        cfg = compose_config(sweep.overrides + sampled)
        _write_text(trial_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
        value = train(cfg, trial_dir, callbacks=[prune]).get(monitor)
        if value is None or not math.isfinite(value):
            raise ValueError(f"{monitor} is {value}")
        study.tell(trial, value)
        outcome = f"{monitor} {value:.4f}"
    except optuna.TrialPruned as pruned:
        study.tell(trial, state=TrialState.PRUNED)
        outcome = str(pruned)
    except KeyboardInterrupt:
        fail(INTERRUPTED)
        raise
    except Exception as err:  # a failing trial is recorded, and the search goes on
        message = f"{type(err).__name__}: {err}"
        logging.getLogger("medtrain").error("%s", message, extra={"console": False})
        fail(message, traceback.format_exc())
        outcome = f"failed: {message}"
    finally:
        if outcome:  # one line per trial, on the console and in the trial's train.log
            log.info(
                "trial %d  %s  %s  (%.1fs)",
                trial.number,
                " ".join(sampled),
                outcome,
                time.perf_counter() - start,
            )
        logging.getLogger().removeHandler(trial_log)
        trial_log.close()


def run_sweep(sweep: Sweep) -> Any:
    """Run (or resume) the search until `sweep.trials` trials have finished; return the study."""
    # The base config and one trial's config must compose: a typo stops the sweep before it starts.
    cfg = compose_config(sweep.overrides)
    compose_config(sweep.overrides + [p.override(p.values[0]) for p in sweep.params])
    study = open_study(sweep, cfg)
    lock = _lock(sweep.dir)
    try:
        mark_interrupted(study, sweep.dir)
        done = len(finished_trials(study))
        log.info(
            "sweep %s: %d of %d trials finished; %s %s (%s); resume with the same command and sweep.dir=%s",
            sweep.dir,
            done,
            sweep.trials,
            study.direction.name.lower(),
            cfg.task.monitor,
            ", ".join(f"{p.key}={p.kind}{p.values}" for p in sweep.params),
            sweep.dir,
        )
        for _ in range(sweep.trials - done):
            run_trial(study, sweep, cfg.task.monitor)
    finally:
        lock.close()
    return study


def _lock(sweep_dir: Path):
    """Hold `<dir>/.lock` while running: two processes on one study would mark each other's
    running trials as interrupted."""
    handle = open(sweep_dir / ".lock", "w")  # noqa: SIM115  (closed by run_sweep)
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no fcntl (Windows): run unlocked
        pass
    except OSError:
        handle.close()
        raise ConfigError(f"another process is running the sweep in {sweep_dir}") from None
    return handle
