"""`medtrain [train] [overrides]`: compose the config with Hydra, train and test, write the run
folder. Hydra's own flags work as with any Hydra app: `-m` (a grid of jobs), `--cfg job` (print the
config), `--config-dir` (add your own config folder), `--help` (the groups and the current config).

Under torchrun (`torchrun --nproc_per_node=N -m medtrain ...`) every process runs this; the ranks
other than 0 compose the same config, but their Hydra writes nothing into the run folder (no
`.hydra/`, no log file: they log warnings and errors to stderr with their rank), and they train
into rank 0's folder (`medtrain.engine.distributed`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from hydra._internal.utils import _run_hydra, get_args_parser
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medtrain.commands.grids import (
    OtherGridsJob,
    check_grid_folder,
    check_planned_jobs,
    check_same_job,
    hydra_files,
    runs_of_grid,
)
from medtrain.commands.interrupts import sigterm_as_interrupt
from medtrain.errors import ConfigError, MedtrainError

log = logging.getLogger("medtrain")

# A rerun composes a saved .hydra/config.yaml, which lacks conf/train.yaml's `hydra:` settings: keep
# the run-folder contract (train.log, outputs/multirun, the sweep summary) unless the command
# line sets them itself.
SAVED_CONFIG_DEFAULTS = (
    ("hydra.job.name", "train"),
    # Hydra's own default moves into the run folder, where a relative dataset.path is not found
    ("hydra.job.chdir", "false"),
    ("hydra.sweep.dir", "outputs/multirun/${now:%Y-%m-%d}/${now:%H-%M-%S}"),
    (
        "+hydra.callbacks.sweep_summary._target_",
        "medtrain.experiments.hydra_callbacks.SweepSummary",
    ),
    ("+hydra.callbacks.folder_guard._target_", "medtrain.commands.train.FolderGuard"),
)


@dataclass
class TrainJobs:
    """Hydra's task function for one command line: trains each job and remembers which ran and
    which failed (a grid goes on past a job with a config or data error, and the command's exit
    status still says so)."""

    started: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    # The run folder's .hydra/ files before Hydra rewrote them: put back when the run is refused
    # (a resume that does not match, a new run where a run is), so that the folder still
    # describes the run it holds.
    saved_hydra: dict[Path, bytes] = field(default_factory=dict)
    # With them, the run's train.log and its length: a refused run's lines are cut off again.
    log_before: tuple[Path, int] | None = None
    # Called before a hard exit: removes a rank's scratch folder.
    cleanup: Callable[[], None] = lambda: None
    # What the folder `hydra.run.dir` named held before this command (its names; None: it did not
    # exist). Such a folder is never removed when the run is refused (a new time-stamped one is),
    # only what the refused run added there.
    held_before: frozenset[str] | None = None
    # The folders above it that this command's Hydra makes (deepest first): a refused run's
    # removal takes them along while they are empty (`hydra.run.dir=<data>/runs/r1` left runs/).
    made_above: tuple[Path, ...] = ()
    # A grid's job folders that held a run before this command (`hydra.sweep.dir` named an
    # earlier grid's folder), with their `.hydra/` files before Hydra rewrote them, and the
    # folder's `multirun.yaml`: put back when a job is refused there.
    grid_runs: dict[Path, dict[Path, bytes]] = field(default_factory=dict)
    grid_logs: dict[Path, int] = field(default_factory=dict)  # their train.log's lengths
    grid_file: tuple[Path, bytes] | None = None
    grid_dir: str = ""  # `hydra.sweep.dir` (resolved), for messages
    # The job folders this command's earlier jobs ran in: their job number and `.hydra/` files.
    # A `hydra.sweep.subdir` without every swept key gives two jobs one folder.
    ran_in: dict[Path, tuple[int, dict[Path, bytes]]] = field(default_factory=dict)
    # Whether the command ended with every job run to its end on every rank (no job stopped the
    # process): under torchrun, the ranks then leave together (`_end_distributed_process`).
    in_step: bool = False
    # Whether `FolderGuard` recorded what the run folder held: a refused run removes nothing
    # without that record (a folder of one's own might be taken for one this command made).
    guarded: bool = False
    # The command's task function while it runs: `FolderGuard` records what its folders held.
    current: ClassVar[TrainJobs | None] = None

    def __call__(self, cfg: DictConfig) -> float | None:
        self.started.append(len(self.started) + 1)
        hydra = HydraConfig.get()
        job = Path(hydra.runtime.output_dir).resolve()
        try:
            return self.run_job(cfg, hydra, job)
        finally:
            if hydra.mode == RunMode.MULTIRUN:
                self.keep_own_folder(job, int(hydra.job.num))

    def run_job(self, cfg: DictConfig, hydra: DictConfig, job: Path) -> float | None:
        """One job of the command (see `__call__`): trained, or refused with its folder put back."""
        # Loaded with the first job: `--help` and `--cfg job` answer without torch.
        from medtrain.engine import distributed
        from medtrain.engine.training import train

        auto = cfg.trainer.get("resume") == "auto"  # `train` sets it to what it found
        metrics_before = file_stamp(job / "metrics.json")  # another one is this job's
        try:
            try:
                if hydra.mode == RunMode.MULTIRUN:  # each job puts back its own files only
                    self.saved_hydra = self.grid_runs.get(job, {})
                    length = self.grid_logs.get(job)
                    self.log_before = None if length is None else (job / "train.log", length)
                    self.check_own_folder(job, hydra)
                    if job in self.grid_runs:
                        overrides = task_overrides(hydra)
                        check_same_job(job, self.grid_dir, self.grid_runs, cfg, overrides)
                metrics = train(cfg, Path(hydra.runtime.output_dir))
            except KeyboardInterrupt:
                if distributed.is_main():
                    say_interrupted(hydra, auto, metrics_before)
                sys.exit(130)
            except Exception as err:
                if distributed.is_distributed() and distributed.is_communication_error(err):
                    raise distributed.peer_failed(err) from err
                if distributed.is_distributed() and not isinstance(err, MedtrainError):
                    # this rank alone (an out-of-memory GPU, a bug): the others cannot go on
                    log.exception("rank %d failed", distributed.rank())
                    sys.exit(1)
                if hydra.mode == RunMode.MULTIRUN and not isinstance(err, MedtrainError):
                    # Hydra reports it after the grid, not in the job's train.log, where the
                    # summary reads why a job failed (else it reads as killed without a word).
                    log.exception("job %s failed: %s: %s", hydra.job.num, type(err).__name__, err)
                raise
        except MedtrainError as err:
            if not distributed.from_main(err):  # rank 0's own error: rank 0 has logged it
                log.error("%s", err)
            self.restore_hydra_files()
            if hydra.mode == RunMode.MULTIRUN and job in self.grid_runs:
                self.put_back_grid_job(job)
            if (
                hydra.mode != RunMode.MULTIRUN
                and distributed.is_main()  # the others write to scratch folders
                and (not distributed.is_distributed() or distributed.raised_everywhere(err))
            ):
                self.tidy_refused_run(Path(hydra.runtime.output_dir), hydra, err)
            if isinstance(err, OtherGridsJob):
                sys.exit(2)  # every later job may be another grid's too: the grid stops
            if isinstance(err, distributed.PeerFailed):
                # The process group is broken: leaving it normally can abort in torch's
                # destructors ("terminate called without an active exception"); end here.
                self.cleanup()
                logging.shutdown()
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(1)
            if distributed.is_distributed() and not distributed.raised_everywhere(err):
                # Raised by this rank alone: the ranks are out of step, so no later job of a
                # multirun can run; every process stops.
                sys.exit(2)
            if hydra.mode == RunMode.MULTIRUN:
                self.failed.append(hydra.job.num)
                return None  # recorded as failed (no metrics.json); the grid goes on
            self.in_step = True  # refused on every rank: rank 0 may still be tidying its folder
            sys.exit(2)
        # The monitored validation value (never a test value), for sweepers that optimise it.
        return metrics.get(cfg.task.monitor)

    def check_own_folder(self, job: Path, hydra: DictConfig) -> None:
        """A grid's job must not run in a folder an earlier job of the same command ran in (a
        `hydra.sweep.subdir` that leaves out a swept key: `lr${optimizer.lr}` for a grid of
        seeds): it would replace that job's run (`keep_own_folder` records the jobs).

        Raises:
            OtherGridsJob: naming both jobs and the folder; the grid stops.
        """
        if job not in self.ran_in:
            return
        number, files = self.ran_in[job]
        self.saved_hydra = files  # the earlier job's, put back over this job's
        raise OtherGridsJob(
            f"hydra.sweep.subdir gives job {hydra.job.num} the folder {job}, which job {number} "
            "of this grid was given: it would write over that job's run. Name the job folders by "
            "every swept key (the default, hydra.sweep.subdir=${hydra.job.num}, numbers them)"
        )

    def keep_own_folder(self, job: Path, number: int) -> None:
        """After a grid's job (the first in its folder): its `.hydra/` files as it left them, to
        put back if a later job of the command is refused there (`check_own_folder`)."""
        if job not in self.ran_in:
            self.ran_in[job] = (number, hydra_files(job))

    def tidy_refused_run(self, run_dir: Path, hydra: DictConfig, err: MedtrainError) -> None:
        """Leave the run folder of a refused run as it was before the command: what the refused
        run added to a folder that existed is removed, and a folder it made goes (with the
        folders above it made for it). A config error found once the data were read (a model
        that cannot be built) takes the data check's files along; a data error keeps them: they
        list it. Without `FolderGuard`'s record of the folder nothing is removed."""
        from medtrain.engine.resume import EARLY_FILES  # written once the data are read

        if not self.guarded:
            return
        written = REFUSED_RUN_FILES | (set(EARLY_FILES) if isinstance(err, ConfigError) else set())
        if self.held_before is not None:
            undo_refused_run(run_dir, self.held_before, written)
        elif discard_refused_run(run_dir, task_overrides(hydra), written):
            for folder in self.made_above:  # deepest first; only while left empty
                with contextlib.suppress(OSError):
                    folder.rmdir()

    def restore_hydra_files(self) -> None:
        for path, content in self.saved_hydra.items():
            restore_file(path, content)
        if self.saved_hydra and self.log_before is not None:
            log_file, length = self.log_before
            with contextlib.suppress(OSError), open(log_file, "r+b") as handle:
                handle.truncate(length)  # its handler appends: later lines go after the run's

    def put_back_grid_job(self, job: Path) -> None:
        """A refused job whose folder held a run before the command: its `.hydra/` as it was
        (what Hydra added there removed; `restore_hydra_files` put back the rest) and the sweep
        folder's `multirun.yaml`, which Hydra rewrote for this grid."""
        saved = self.grid_runs[job]
        for path in (job / ".hydra").glob("*.yaml"):
            if path not in saved:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            (job / ".hydra").rmdir()  # only when left empty: the run had none
        if self.grid_file is not None:
            restore_file(*self.grid_file)


def task_overrides(hydra: DictConfig) -> list[str]:
    """The job's overrides as given (`.hydra/overrides.yaml` keeps them so): a `${...}` in one is
    text here, not an interpolation to resolve (`optimizer.lr=${nope}` raised while its refusal
    was being tidied up)."""
    return [str(o) for o in OmegaConf.to_container(hydra.overrides.task, resolve=False)]


def restore_file(path: Path, content: bytes) -> None:
    from medtrain.io import atomic_write

    atomic_write(path, lambda handle: handle.write(content), mode="wb")


class FolderGuard(Callback):
    """Hydra callback (conf/train.yaml, `hydra.callbacks`): before Hydra writes a run's or a
    grid's folder, records what it holds for the command's jobs, so that a refused run leaves it
    as it was (`on_run_start`), and checks a grid's folder (`check_grid_folder`), recording the
    runs it holds and its `multirun.yaml` (`on_multirun_start`). The folders are read from the
    composed config, so one set in a config file or through an interpolation is guarded as one
    given on the command line. Rank 0 alone: the other ranks' folders are their scratch folder."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        from medtrain.engine.ranks import launched_rank

        jobs = TrainJobs.current
        if jobs is None or launched_rank() > 0:
            return
        HydraConfig.instance().set_config(config)  # as the job will: `${hydra:...}` resolves
        try:
            folder = Path(str(config.hydra.run.dir))
            resume = (config.get("trainer") or {}).get("resume")
        except Exception:  # an interpolation that points nowhere: Hydra's run reports it
            return
        jobs.saved_hydra = hydra_files_before(folder, resume)
        log_file = folder / "train.log"
        jobs.log_before = (log_file, log_file.stat().st_size) if log_file.is_file() else None
        jobs.held_before = held_by(folder)
        jobs.made_above = missing_parents(folder)
        jobs.guarded = True

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from medtrain.engine.ranks import launched_rank

        jobs = TrainJobs.current
        if jobs is None or launched_rank() > 0:
            return
        HydraConfig.instance().set_config(config)  # `${hydra:...}` in the folder resolves
        grid = str(config.hydra.sweep.dir)
        try:
            check_grid_folder(Path(grid))
        except ConfigError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from err  # not caught by Hydra: no traceback, no job started
        jobs.grid_runs, jobs.grid_dir = runs_of_grid(Path(grid)), grid
        jobs.grid_logs = {
            job: (job / "train.log").stat().st_size
            for job in jobs.grid_runs
            if (job / "train.log").is_file()
        }
        try:  # every job whose folder holds another grid's run: refused before any job trains
            check_planned_jobs(config, Path(grid), jobs.grid_runs)
        except OtherGridsJob as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from err
        described = Path(grid) / "multirun.yaml"  # Hydra rewrites it before the first job
        if described.is_file():
            jobs.grid_file = (described, described.read_bytes())


# What Hydra, the log and the run's first record (its provenance, written before the data are
# read) leave in a run folder before training writes anything.
REFUSED_RUN_FILES = frozenset({".hydra", "train.log", "provenance.json", "git_diff.patch"})
HYDRA_FILES = frozenset({"config.yaml", "hydra.yaml", "overrides.yaml"})


def discard_refused_run(
    run_dir: Path, overrides: Sequence[str], written: frozenset[str] = REFUSED_RUN_FILES
) -> bool:
    """Remove the folder this command made for a run refused before it wrote anything (a config
    or data error): it holds only Hydra's copy of the refused config and the log of the error,
    which the console has shown, and every typo would leave one more folder among the runs.

    Only a folder that holds nothing else and whose `.hydra/overrides.yaml` is this command's
    goes (`written`: what a refused run may have written, `REFUSED_RUN_FILES` and, for a config
    error found after the data were read, `resume.EARLY_FILES`); the caller never passes a folder that
    existed before the command (`hydra.run.dir` named an existing one). The date folder of the
    default `outputs/<date>/<time>` goes too when it is left empty; no other folder above. Returns
    whether the folder was removed."""
    import shutil

    import yaml

    hydra_dir = run_dir / ".hydra"
    try:
        names = {p.name for p in run_dir.iterdir()}
        saved = {p.name for p in hydra_dir.iterdir()}
        same = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) == list(overrides)
    except (OSError, yaml.YAMLError):
        return False
    if not (names <= written and saved <= HYDRA_FILES and same):
        return False
    close_log_in(run_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    if DATE_FOLDER.fullmatch(run_dir.parent.name):  # the default outputs/<date>/<time>
        with contextlib.suppress(OSError):
            run_dir.parent.rmdir()  # only when empty: the day's other runs keep it
    return not run_dir.exists()


def close_log_in(run_dir: Path) -> None:
    """Close the log file's handler in `run_dir` before its removal: a later record would open
    the file again."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if (
            isinstance(handler, logging.FileHandler)
            and Path(handler.baseFilename).parent == run_dir
        ):
            root.removeHandler(handler)
            handler.close()


def undo_refused_run(
    run_dir: Path, held_before: frozenset[str], written: frozenset[str] = REFUSED_RUN_FILES
) -> None:
    """In a folder that existed before the command (`hydra.run.dir`), remove what a refused run
    added there before it trained (`written`: Hydra's `.hydra/`, the log, the provenance, and for a
    config error found once the data were read, their split and report), so that the folder is as
    it was: a data folder given as the run folder kept a `train.log` among the data."""
    import shutil

    try:
        added = {p.name for p in run_dir.iterdir()} - held_before
    except OSError:
        return
    if not added or not added <= written:
        return  # the run wrote more (a data error's report): kept, as a new folder is
    close_log_in(run_dir)
    for name in added:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


# The date folder of conf/train.yaml's hydra.run.dir (outputs/<date>/<time>): the only folder
# above a refused run's that its removal may take along (when left empty).
DATE_FOLDER = re.compile(r"\d{4}-\d{2}-\d{2}")


def file_stamp(path: Path) -> tuple[int, int] | None:
    """(inode, modification time in ns) of a file, None without it: an atomic rewrite changes it."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def say_interrupted(hydra, auto: bool, metrics_before: tuple[int, int] | None = None) -> None:
    """How to go on after Ctrl-C (or SIGTERM): the same command (continuing with `trainer.resume`); a grid's
    jobs in the same sweep folder, which the summary then lists with this job as interrupted
    (Hydra ends no job when one is interrupted: the summary finds `INTERRUPTED_LOG` in its log).
    A run stopped after it wrote a metrics.json (not the one of `metrics_before`, there when the
    job began), while it wrote its last files, has finished: `medtrain report` writes its report."""
    from medtrain.experiments.sweep_summary import INTERRUPTED_LOG

    out = Path(hydra.runtime.output_dir)
    stamp = file_stamp(out / "metrics.json")
    if stamp is not None and stamp != metrics_before:
        log.warning(
            "stopped after the run finished (metrics.json is written), while it wrote its last "
            "files: medtrain report run_dir=%s writes its report",
            out,
        )
        if hydra.mode != RunMode.MULTIRUN:
            return
    if hydra.mode != RunMode.MULTIRUN:
        if not (out / "checkpoints" / "last.pt").is_file():
            log.warning(
                "%s%s starts it again: no epoch had finished, so nothing was saved to continue "
                "from",
                INTERRUPTED_LOG,
                "" if auto else " (without trainer.resume)",
            )
            return
        log.warning(
            "%s%s continues from the last finished epoch",
            INTERRUPTED_LOG,
            "" if auto else " with trainer.resume=true",
        )
        return
    # A grid's folder is time-stamped unless named: name it to go on there.
    log.warning(
        "%s with hydra.sweep.dir=%s and trainer.resume=auto continues the grid (finished jobs are "
        "tested again, this one continues from its last finished epoch)",
        INTERRUPTED_LOG,
        hydra.sweep.dir,
    )
    from medtrain.experiments.hydra_callbacks import SweepSummary

    SweepSummary.write(Path(hydra.sweep.dir), plots=False)


def hydra_files_before(run_dir: Path, resume: object) -> dict[Path, bytes]:
    """The `.hydra/*.yaml` of a run folder before Hydra rewrites them, when the command resumes
    (`resume`: `trainer.resume`) or the folder holds a run: a refused resume, or a new run
    refused there, puts them back (empty otherwise)."""
    from medtrain.engine.resume import HELD

    # `auto` resumes only where a run is (its last.pt), which the test below covers.
    resumes = resume not in (None, False, "auto") and str(resume).lower() not in ("false", "null")
    if not resumes and not any((run_dir / name).is_file() for name in HELD):
        return {}  # no run there to describe: a failure keeps this command's own files
    return hydra_files(run_dir)


def held_by(folder: Path) -> frozenset[str] | None:
    """The names in a run folder before Hydra writes there; None when it does not exist yet."""
    if not folder.exists():
        return None
    try:
        return frozenset(p.name for p in folder.iterdir())
    except OSError:  # a file, or unreadable: nothing of it is removed
        return frozenset()


def missing_parents(folder: Path) -> tuple[Path, ...]:
    """The folders above a run folder that do not exist yet, deepest first."""
    return tuple(p for p in folder.absolute().parents if not p.exists())


def main(argv: Sequence[str]) -> int:
    """Train as `argv` (Hydra's command line) says; returns the exit status: 0 done, 1 a job
    failed, 2 a config or data error (or a command line Hydra refused)."""
    parser = get_args_parser()
    args = parser.parse_args(list(argv))
    if args.config_name is not None:
        given = [a.lstrip("+") for a in args.overrides]
        args.overrides += [
            f"{key}={value}"
            for key, value in SAVED_CONFIG_DEFAULTS
            if not any(a.startswith(f"{key.lstrip('+')}=") for a in given)
        ]
    from medtrain.engine.config_files import check_yaml_syntax, own_config_folders
    from medtrain.engine.ranks import launched_rank

    try:  # before Hydra reads them: its report of a YAML error is a traceback
        check_yaml_syntax(own_config_folders(args.overrides, args.config_dir))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rank = launched_rank()
    scratch = None
    if rank > 0:
        # Hydra runs in every process; only rank 0's writes the run folder. The others get a
        # scratch folder (removed at the end), no .hydra/ and no log file.
        scratch = tempfile.TemporaryDirectory(prefix=f"medtrain-rank{rank}-")
        mine = ("hydra.run.dir", "hydra.sweep.dir", "hydra.output_subdir")
        args.overrides = [a for a in args.overrides if a.lstrip("+").split("=")[0] not in mine]
        args.overrides += [
            f"hydra.run.dir={scratch.name}",
            f"hydra.sweep.dir={scratch.name}",
            "hydra.output_subdir=null",
            "hydra/job_logging=none",
            "hydra/hydra_logging=none",
        ]
        from medtrain.engine.distributed import configure_rank_logging

        configure_rank_logging(rank)
    jobs = TrainJobs()  # what the run folder holds: `FolderGuard`, once the config is composed
    if scratch is not None:
        jobs.cleanup = scratch.cleanup
    TrainJobs.current = jobs
    try:
        if os.environ.get("WORLD_SIZE", "1") == "1":
            with sigterm_as_interrupt():  # a time limit, a preemption, `docker stop`: as Ctrl-C
                status = _run(args, parser, jobs)
        else:  # under torchrun, whose agent signals its workers when one of them fails
            status = _run(args, parser, jobs)
    finally:
        TrainJobs.current = None
        if scratch is not None:
            scratch.cleanup()
    _end_distributed_process(status, together=jobs.in_step)
    return status


def _end_distributed_process(status: int, together: bool = False) -> None:
    """Under torchrun, end the process here with `status`: torch's process-group destructors can
    abort ("terminate called without an active exception") when a peer has already left, which
    would turn a finished run's exit status into SIGABRT. Nothing is left to clean up.

    `together`: the ranks ended the command in step (every job ran on all of them), and leave
    together: torchrun ends the others as soon as one exits with an error, and rank 0 may still
    be writing (a grid's summary and plots after a failed job). A rank that stopped alone (an
    error of its own, a refusal of rank 0's) does not wait: its peers may be inside a collective
    until the group's timeout."""
    if "torch" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if together:
            with contextlib.suppress(Exception):  # a peer that has gone: nothing to wait for
                dist.barrier()
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)


def _run(args, parser, jobs: TrainJobs) -> int:
    path = args.config_path
    if path and "://" not in path and not Path(path).is_absolute():
        # Hydra resolves a relative --config-path against medtrain's package, not the current
        # folder the user means ("Primary config module ... not found").
        args.config_path = str(Path(path).resolve())
    try:
        # Hydra's public decorator reads sys.argv; its runner takes the parsed arguments instead.
        _run_hydra(
            args=args,
            args_parser=parser,
            task_function=jobs,
            config_path="pkg://medtrain.conf",  # conf/, installed as a package (pyproject.toml)
            config_name="train",
        )
    except SystemExit as exit_:
        # Hydra exits 1 both when it refuses the command line (a misspelt option or key, bad
        # grammar) and after an error inside a job: only the first, before any job started, is
        # a config error (status 2, as the others), with the valid keys when a key is unknown.
        if exit_.code == 1 and not jobs.started:
            from medtrain.engine.config import unknown_key_hint

            overrides = list(args.overrides)
            if args.config_dir:
                overrides.append(f"hydra.searchpath=[file://{Path(args.config_dir).resolve()}]")
            hint = unknown_key_hint(overrides, args.config_name is not None)
            if hint:
                print(hint, file=sys.stderr)
            return 2
        return exit_.code if isinstance(exit_.code, int) else 1
    jobs.in_step = True  # every job ended on every rank (a job's error raised on all of them)
    if jobs.failed:
        from medtrain.engine.ranks import launched_rank

        if launched_rank() > 0:  # rank 0 says it
            return 1
        print(
            f"medtrain: {len(jobs.failed)} job(s) failed (job "
            f"{', '.join(map(str, jobs.failed))}); see sweep_summary.md in the sweep folder",
            file=sys.stderr,
        )
        return 1
    return 0
