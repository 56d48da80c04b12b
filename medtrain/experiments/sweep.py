"""Hyperparameter searches (the library behind `medtrain sweep`): an Optuna search over config values
that maximises (or minimises) the monitored validation metric, prunes poor trials epoch by epoch,
resumes from its study file and records a failing trial without stopping.

One worker keeps the study in `<sweep.dir>/study.db`. Several workers, started independently on
one machine or many, share a study through `sweep.storage` (an Optuna journal file, or an SQL
database URL): each draws trials until `sweep.trials` are done or running, and a worker that was
killed leaves a trial that the others (or the same command run again) record as interrupted.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
import traceback
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
from omegaconf import DictConfig, OmegaConf
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import TrialState

from medtrain.engine.callbacks import Epoch
from medtrain.engine.config import CONF, bare_key, compose_config, passed_override_key
from medtrain.engine.config_files import own_config_folders
from medtrain.engine.training import train
from medtrain.errors import ConfigError
from medtrain.experiments.folders import marked_as
from medtrain.experiments.studies import (
    INTERRUPTED,
    SEARCH,
    STUDY_FILE,
    STUDY_NAME,
    SURPLUS,
    masked_url,
    open_storage,
    search_of,
)
from medtrain.io import atomic_write, read_json

log = logging.getLogger(__name__)
HEARTBEAT_S = 60  # a running trial's worker says it is alive this often
STALE_AFTER_S = 600  # a trial of another machine without a heartbeat for this long was killed
DEFAULTS: dict[str, Any] = {
    "dir": None,
    "trials": 10,
    "sampler": "tpe",
    "pruner": "median",
    "min_epochs": 1,
    "startup_trials": 3,
    "storage": None,
    "study": STUDY_NAME,
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
    storage: str | None = None  # a journal file or an SQL URL shared by several workers
    study: str = STUDY_NAME


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
    return [CONF, *own_config_folders(overrides)]


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


def absolute_sqlite(url: str) -> str:
    """An SQLite URL with a relative file (`sqlite:///s7/shared.db`, relative to the folder the
    command runs in) made absolute, as journal paths are: saved in `study.json`, it is read again
    from other folders (`medtrain report`) and by workers started elsewhere."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not an SQLAlchemy URL: the storage reports it when opened
        return url
    path = parsed.database
    if not parsed.drivername.startswith("sqlite") or not path or Path(path).is_absolute():
        return url
    if path.startswith((":memory:", "file:")):  # in memory; an SQLite URI of its own
        return url
    return parsed.set(database=str(Path(path).resolve())).render_as_string(hide_password=False)


def parse_args(argv: list[str]) -> Sweep:
    """Split the command line into sweep settings, searched params and ordinary overrides."""
    settings, params, overrides = dict(DEFAULTS), [], []
    dirs = config_dirs(list(argv))
    for arg in argv:
        key, _, value = arg.partition("=")
        if passed_override_key(arg, "sweep", "sweep") in ("hydra.run.dir", "hydra.sweep.dir"):
            raise ConfigError(
                f"{key}: a search's trials go in sweep.dir/<trial>; name the folder with "
                "sweep.dir=..."
            )
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
    fixed = [o for o in overrides if bare_key(o) in swept]
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
    if settings["storage"] in ("", "null", "None"):
        settings["storage"] = None
    if settings["storage"] is not None and "://" not in settings["storage"]:
        settings["storage"] = str(Path(settings["storage"]).resolve())  # a journal file
    elif settings["storage"] is not None:
        settings["storage"] = absolute_sqlite(settings["storage"])
    if not re.fullmatch(r"[\w.-]+", str(settings["study"])):
        raise ConfigError(f"sweep.study={settings['study']}: letters, digits, '.', '-', '_' only")
    return Sweep(dir=Path(directory).resolve(), params=params, overrides=overrides, **settings)


def check_sweep_dir(sweep: Sweep) -> None:
    """`sweep.dir` must be a folder of its own (not a file, a run's or a CV's folder), and a
    shared study is resumed from the storage it was started with (`study.json`).

    Raises:
        ConfigError: naming the folder and what it holds.
    """
    folder = sweep.dir
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"sweep.dir={folder} is a file; give a folder")
    marked = marked_as(folder, ("folds.json", "multirun.yaml", "metrics.json", "checkpoints"))
    if marked:
        raise ConfigError(
            f"sweep.dir={folder} holds {marked[0]} ({', '.join(marked[1])}): give the sweep a "
            "folder of its own"
        )
    pointer = read_json(folder / STUDY_FILE) if (folder / STUDY_FILE).is_file() else None
    named = (pointer or {}).get("storage")
    given = masked_url(sweep.storage) if sweep.storage else None
    if named and named != given:
        raise ConfigError(
            f"sweep.dir={folder} holds a search stored in {named} ({STUDY_FILE}), not "
            f"{given or 'study.db'}: resume it with sweep.storage={named}, or give another "
            "sweep.dir"
        )


def open_study(sweep: Sweep, cfg: DictConfig):
    """Create the study (in `<dir>/study.db`, or the shared `sweep.storage`), or load it and check
    that it belongs to the same search."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_sweep_dir(sweep)
    own_db = sweep.storage is None and not (sweep.dir / "study.db").exists()
    made = not sweep.dir.exists()  # removed again, while empty, when the search is refused
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
        storage=open_storage(sweep.storage, sweep.dir),
        pruner=pruner,
        study_name=sweep.study,
        direction="maximize" if cfg.task.monitor_mode == "max" else "minimize",
        load_if_exists=True,
    )
    known = {t.number for t in study.get_trials(deepcopy=False)}
    strangers = sorted(int(p.name) for p in sweep.dir.iterdir() if p.is_dir() and p.name.isdigit())
    strangers = [n for n in strangers if n not in known]
    if strangers:  # its trials would be numbered alike: their folders' configs rewritten
        if own_db:
            (sweep.dir / "study.db").unlink(missing_ok=True)  # made just now, empty
        raise ConfigError(
            f"sweep.dir={sweep.dir} holds trial folders {strangers[:5]} that its study ("
            f"{masked_url(sweep.storage) if sweep.storage else 'study.db'}) does not know: "
            "another study's (a deleted study.db, or another sweep.storage); new trials would "
            "be numbered alike and write into them: give another sweep.dir"
        )
    if sweep.storage is None:
        # Seeded by `seed` plus the trials so far: a resumed sweep draws new values instead of
        # replaying the first run's draws.
        seed = cfg.seed + len(study.get_trials(deepcopy=False))
    else:
        # Workers started together must not draw the same values: each seeds its own sampler
        # (a shared sweep is reproducible trial by trial, from each trial's saved config).
        seed = (cfg.seed * 1_000_003 + os.getpid() + hash(socket.gethostname())) % 2**31
    if sweep.sampler == "tpe":
        # constant_liar: a trial still running counts as a poor one, so parallel workers spread
        study.sampler = optuna.samplers.TPESampler(
            seed=seed, constant_liar=sweep.storage is not None
        )
    else:
        study.sampler = optuna.samplers.RandomSampler(seed=seed)
    search = {
        "overrides": sweep.overrides,
        "params": {p.key: [p.kind, *p.values] for p in sweep.params},
        "monitor": cfg.task.monitor,
    }
    stored = search_of(study)
    if stored is None:
        # One attribute, written at once: a worker starting alongside reads all of it or nothing
        # (three attributes written one by one let it read a half-described search). Two workers
        # that both found none compare with the one the study kept.
        study.set_user_attr(SEARCH, search)
        stored = search_of(study) or search
    changed = [k for k in search if _jsonish(search[k]) != _jsonish(stored.get(k))]
    if changed:
        was = "; ".join(f"{k} {stored.get(k)}" for k in changed)
        if made:
            with contextlib.suppress(OSError):
                sweep.dir.rmdir()  # only while empty
        if sweep.storage is not None:  # the study, not the folder, holds it
            raise ConfigError(
                f"the study {sweep.study!r} in {masked_url(sweep.storage)} holds another search "
                f"({was}): resume it with the same arguments, or give another sweep.study"
            )
        raise ConfigError(
            f"{sweep.dir} holds another search ({was}): resume it with the same arguments "
            "or choose another sweep.dir"
        )
    if sweep.storage is not None:  # where the folder's search is stored, once it is this one
        _write_text(
            sweep.dir / STUDY_FILE,
            json.dumps({"storage": masked_url(sweep.storage), "study": sweep.study}) + "\n",
        )
    return study


def _jsonish(value):
    """Stored study attributes come back as JSON: lists for tuples, floats for ints."""
    return json.loads(json.dumps(value))


def counts(trial) -> bool:
    """Whether a trial counts towards `sweep.trials`: neither interrupted nor surplus."""
    return trial.user_attrs.get("error") != INTERRUPTED and not trial.user_attrs.get(SURPLUS)


def finished_trials(study) -> list:
    """Trials that count towards `sweep.trials`: complete, pruned or failed, but not interrupted."""
    done = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=done) if counts(t)]


def _pid_namespace() -> str:
    """This process's PID namespace (its inode on Linux), '' where there is none to read: two
    containers on one host may share its hostname (host networking) and number their processes
    alike, so that `host:pid` alone named two workers as one."""
    try:
        return str(os.stat("/proc/self/ns/pid").st_ino)
    except OSError:
        return ""


def this_worker() -> str:
    """`host:pid`, and `/<PID namespace>` where there is one: which worker runs a trial."""
    space = _pid_namespace()
    return f"{socket.gethostname()}:{os.getpid()}" + (f"/{space}" if space else "")


def _process_here(worker: str) -> int | None:
    """The process id of a worker (`this_worker`'s form, or release 0.3's `host:pid`) when it
    runs on this machine, in this PID namespace: only then does its id name a process here."""
    host, _, rest = worker.rpartition(":")
    pid, _, space = rest.partition("/")
    same = host == socket.gethostname() and (not space or space == _pid_namespace())
    return int(pid) if same and pid.isdigit() else None


def is_stale(trial, shared: bool, now: float | None = None) -> bool:
    """Whether a RUNNING trial's worker is gone. Alone on a study (the default `study.db`, locked),
    every running trial is a killed sweep's. Shared: one whose worker sent no heartbeat for
    `STALE_AFTER_S` (written every `HEARTBEAT_S`; the hosts' clocks must agree within minutes), or,
    on this machine and in this PID namespace, whose process is dead."""
    if not shared:
        return True
    beat = trial.user_attrs.get("heartbeat")
    if beat is None and trial.datetime_start is not None:  # killed before its first heartbeat
        beat = trial.datetime_start.timestamp()
    if beat is None or (now or time.time()) - float(beat) > STALE_AFTER_S:
        return True
    pid = _process_here(str(trial.user_attrs.get("worker", "")))
    if pid is not None:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
    return False


def mark_interrupted(study, sweep_dir: Path, shared: bool = False) -> None:
    """A trial still RUNNING whose worker is gone (see `is_stale`) belongs to a killed sweep:
    record it as failed, 'interrupted' (it does not count; another trial takes its place)."""
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if not is_stale(trial, shared):
            continue
        try:
            study._storage.set_trial_user_attr(trial._trial_id, "error", INTERRUPTED)
            study.tell(trial.number, state=TrialState.FAIL)
        except (ValueError, UpdateFinishedTrialError):  # another worker marked it first
            continue
        _write_text(sweep_dir / str(trial.number) / "error.txt", INTERRUPTED + "\n")
        log.info("trial %d: marked failed (interrupted by a killed sweep)", trial.number)


def claim_trial(study, sweep: Sweep):
    """Draw the next trial, or None when the trials counted before it (done or running, by any
    worker) already make up `sweep.trials`: two workers asking for the last trial at once both
    draw one, and the later one (by trial number) is recorded as surplus and not run."""
    trial = study.ask({p.key: p.distribution for p in sweep.params})
    earlier = [t for t in study.get_trials(deepcopy=False) if t.number < trial.number and counts(t)]
    if len(earlier) >= sweep.trials:
        trial.set_user_attr(SURPLUS, True)
        study.tell(trial, state=TrialState.FAIL)
        return None
    trial.set_user_attr("worker", this_worker())
    trial.set_user_attr("heartbeat", time.time())
    return trial


@contextmanager
def heartbeat(trial, every_s: float = HEARTBEAT_S):
    """While a trial runs, record the time in its `heartbeat` attribute every `every_s` seconds:
    the other workers of a shared sweep tell a live trial from a killed worker's by it."""
    stop = threading.Event()

    def beat() -> None:
        while True:
            try:
                trial.set_user_attr("heartbeat", time.time())
            except Exception as err:  # a storage hiccup must not stop the trial
                log.warning("heartbeat of trial %d not recorded: %s", trial.number, err)
            if stop.wait(every_s):
                return

    thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda handle: handle.write(text))


def run_trial(study, sweep: Sweep, monitor: str) -> bool:
    """Draw one trial (see `claim_trial`), train it in `<dir>/<number>/`, and tell the study how it
    ended; False when no trial was left to draw."""
    trial = claim_trial(study, sweep)
    if trial is None:
        return False
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
        if monitor not in epoch.row:  # not validated this epoch (trainer.val_every)
            return
        value = epoch.row[monitor]
        trial.report(float(value), epoch.number)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch.number}: {monitor} {value:.4g}")

    def fail(message: str, details: str = "") -> None:
        _write_text(trial_dir / "error.txt", message + "\n" + (f"\n{details}" if details else ""))
        trial.set_user_attr("error", message)
        study.tell(trial, state=TrialState.FAIL)

    outcome = ""
    try:
        try:
            cfg = compose_config(sweep.overrides + sampled)
            _write_text(trial_dir / ".hydra" / "config.yaml", OmegaConf.to_yaml(cfg))
            with heartbeat(trial) if sweep.storage else nullcontext():
                metrics = train(cfg, trial_dir, callbacks=[prune])
            value = metrics.get(monitor)
            if value is None or not math.isfinite(value):
                raise ValueError(f"{monitor} is {value}")
            # What the summary shows of a trial whose folder is on another machine.
            trial.set_user_attr("folder", f"{socket.gethostname()}:{trial_dir}")
            trial.set_user_attr("test_metrics", _headline(metrics, trial_dir))
            study.tell(trial, value)
            outcome = f"{monitor} {value:.4f}"
        except optuna.TrialPruned as pruned:
            study.tell(trial, state=TrialState.PRUNED)
            outcome = str(pruned)
        except KeyboardInterrupt:
            fail(INTERRUPTED)
            raise
        except Exception as err:  # a failing trial is recorded, and the search goes on
            if _taken_away(study, trial):
                raise
            message = f"{type(err).__name__}: {err}"
            logging.getLogger("medtrain").error("%s", message, extra={"console": False})
            fail(message, traceback.format_exc())
            outcome = f"failed: {message}"
    except Exception:
        if not _taken_away(study, trial):
            raise
        # Another worker saw no heartbeat for STALE_AFTER_S (a storage outage, clocks apart) and
        # recorded this trial as interrupted; a replacement counts in its place.
        outcome = "recorded as interrupted by another worker meanwhile; its result does not count"
        log.warning("trial %d: %s (folder %s)", trial.number, outcome, trial_dir)
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
    return True


def _taken_away(study, trial) -> bool:
    """Whether another worker has finished (marked interrupted) this worker's running trial."""
    try:
        return study._storage.get_trial(trial._trial_id).state.is_finished()
    except Exception:  # the storage cannot say: not taken away as far as we know
        return False


def _headline(metrics: dict[str, Any], trial_dir: Path) -> dict[str, float]:
    """The test headline metrics and training time that a summary shows of the trial."""
    from medtrain.experiments.sweep_summary import HEADLINE

    values = {k: metrics.get(f"test/{k}") for k in HEADLINE}
    info = json.loads((trial_dir / "run_info.json").read_text())
    values["train_seconds"] = info.get("train_seconds")
    return {k: v for k, v in values.items() if isinstance(v, (int, float))}


def check_whole_numbers(sweep: Sweep) -> None:
    """A `float(...)` or `log(...)` search of a key that takes whole numbers only (a batch size,
    a network's width) fails every trial, each counted towards `sweep.trials`: refused before the
    first, by the run's config checks (`validate`) and by the annotation of the parameter the
    value goes to (`model.hidden` is `SimpleCNN(hidden: int)`), on a fractional draw."""
    from medtrain.engine.build import locate, wrong_types
    from medtrain.engine.config import validate

    for param in sweep.params:
        if param.kind not in ("float", "log"):
            continue
        low, high = param.values
        draw = low + 0.37 * (high - low)  # a fraction between the bounds
        where = f"sweep.params.{param.key}={param.kind}({low:g},{high:g})"
        others = [p.override(p.values[0]) for p in sweep.params if p is not param]
        cfg = compose_config([*sweep.overrides, *others, param.override(draw)])
        said = ""
        try:
            validate(cfg)
        except ConfigError as err:
            whole = ("integer", "whole number")
            if f"{param.key}=" in str(err) and any(w in str(err) for w in whole):
                said = str(err)
        parent, _, name = param.key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else None
        if not said and isinstance(node, DictConfig) and "_target_" in node:
            target = locate(str(node._target_))  # None if not importable: the trial names it
            said = "; ".join(wrong_types(target, {name: draw}, parent)) if target else ""
        if said:
            raise ConfigError(
                f"{where} draws fractions, which {param.key} does not take ({said}): search it "
                f"with int({math.ceil(low)},{math.floor(high)}); no trial was run"
            )


def check_every_trial(sweep: Sweep) -> None:
    """The config checks of a run (`validate`) on two trials' configs, one of each param's first
    value and one of its last, before the first trial: an error both raise alike and that names
    no searched key (a missing `dataset.path`, a value out of range) would fail every trial the
    same way, each counted towards `sweep.trials`. Anything else is left to the trials."""
    from medtrain.engine.config import validate

    check_whole_numbers(sweep)
    said = []
    for pick in (0, -1):
        cfg = compose_config(sweep.overrides + [p.override(p.values[pick]) for p in sweep.params])
        try:
            validate(cfg)
        except ConfigError as err:
            said.append(str(err))
        else:
            return
    if said[0] == said[1] and not any(p.key in said[0] for p in sweep.params):
        raise ConfigError(f"{said[0]} (every trial would fail the same way; no trial was run)")


def run_sweep(sweep: Sweep) -> Any:
    """Run (or resume, or join) the search until `sweep.trials` trials have finished or are running
    in other workers; return the study."""
    # The base config and one trial's config must compose: a typo stops the sweep before it starts.
    cfg = compose_config(sweep.overrides)
    check_every_trial(sweep)
    study = open_study(sweep, cfg)
    shared = sweep.storage is not None
    lock = None if shared else _lock(sweep.dir)
    try:
        mark_interrupted(study, sweep.dir, shared)
        done = len(finished_trials(study))
        log.info(
            "sweep %s: %d of %d trials finished; %s %s (%s); resume with the same command and sweep.dir=%s%s",
            sweep.dir,
            done,
            sweep.trials,
            study.direction.name.lower(),
            cfg.task.monitor,
            ", ".join(f"{p.key}={p.kind}{p.values}" for p in sweep.params),
            sweep.dir,
            f"; shared through {masked_url(sweep.storage)} as worker {this_worker()}"
            if shared
            else "",
        )
        while len([t for t in study.get_trials(deepcopy=False) if counts(t)]) < sweep.trials:
            if not run_trial(study, sweep, cfg.task.monitor):
                break
            if shared:
                mark_interrupted(study, sweep.dir, shared)
    finally:
        if lock is not None:
            lock.close()
    return study


def _lock(sweep_dir: Path):
    """Hold `<dir>/.lock` while running on the default `study.db`: two processes on it would mark
    each other's running trials as interrupted (several workers share `sweep.storage` instead)."""
    handle = open(sweep_dir / ".lock", "w")  # noqa: SIM115  (closed by run_sweep)
    try:
        import fcntl

        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except ImportError:  # no fcntl (Windows): run unlocked
        pass
    except OSError:
        handle.close()
        raise ConfigError(
            f"another process is running the sweep in {sweep_dir}; to run several workers on one "
            "search, give each the same sweep.storage=<journal file or SQL URL>"
        ) from None
    return handle
