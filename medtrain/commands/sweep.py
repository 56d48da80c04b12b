"""`medtrain sweep 'sweep.params.KEY=SPEC' ... [overrides]`: an Optuna search over config values,
printed one line per trial, resumable with the same command."""

from __future__ import annotations

import logging
import sys

from medtrain.errors import ConfigError

USAGE = """\
usage: medtrain sweep 'sweep.params.KEY=SPEC' ... [sweep.KEY=VALUE ...] [override ...]

  sweep.params.KEY=SPEC  a searched value; SPEC is float(low,high), log(low,high) (log-uniform),
                         int(low,high) or choice(a,b,...); KEY a config key (optimizer.lr) or a
                         group (model=choice(cnn,resnet18)); quote it: the shell reads brackets
  sweep.dir=DIR          the sweep folder: study.db, one folder per trial, the summary
                         (default outputs/sweeps/<date>/<time>); the same command resumes it
  sweep.trials=10        finished trials wanted (complete, pruned or failed), resumed ones included
  sweep.sampler=tpe      tpe (seeded by `seed`) | random
  sweep.pruner=median    median | hyperband | none
  sweep.min_epochs=1     epochs a trial trains before it can be pruned
  sweep.startup_trials=3 complete trials before the median pruner prunes anything
  sweep.storage=PATH|URL a study shared by several workers, each started with the same command
                         (on one machine or many): an Optuna journal file (one machine or a
                         shared file system) or an SQL URL (postgresql://user@host/db, ...);
                         they draw trials until sweep.trials are done (default: <dir>/study.db,
                         one worker)
  sweep.study=medtrain   the study's name in the storage (one database can hold several)
  override               any `medtrain train` override, applied to every trial
"""


SWEEP_LOG = "medtrain.experiments.sweep"  # the logger of the per-trial lines


class _ConsoleFilter(logging.Filter):
    """The console shows one line per trial; each trial's full log goes to its train.log."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "console", True):
            return False
        return record.name == SWEEP_LOG or record.levelno >= logging.WARNING


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help", "help") for a in argv):
        print(USAGE)
        return 0
    from optuna.trial import TrialState

    from medtrain.commands.interrupts import sigterm_as_interrupt
    from medtrain.experiments.studies import search_of
    from medtrain.experiments.sweep import counts, log, parse_args, run_sweep
    from medtrain.experiments.sweep import this_worker as worker
    from medtrain.experiments.sweep_summary import write_sweep_summary

    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
    console.addFilter(_ConsoleFilter())
    root = logging.getLogger()
    previous_level = root.level
    root.addHandler(console)
    root.setLevel(logging.INFO)
    sweep = None
    try:
        with sigterm_as_interrupt():  # a time limit, a preemption, `docker stop`: as Ctrl-C
            sweep = parse_args(argv)
            study = run_sweep(sweep)
    except ConfigError as err:
        # The sweep keys' list helps with the command line, not with the config of every trial.
        hint = (
            "\n(medtrain sweep --help lists the sweep keys)"
            if sweep is None or "sweep." in str(err)
            else ""
        )
        print(f"error: {err}{hint}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        log.warning("interrupted; the same command resumes the sweep")
        if sweep is not None:
            _summarize_interrupted(sweep.dir)
        return 130
    finally:
        root.removeHandler(console)
        root.setLevel(previous_level)

    try:
        # Another worker may finish a trial while this one writes: write again until the study
        # stood still meanwhile, so that the last worker to stop leaves the complete summary.
        for _ in range(5):
            before = [(t.number, t.state) for t in study.get_trials(deepcopy=False)]
            summary = write_sweep_summary(
                sweep.dir, (search_of(study) or {}).get("monitor"), study=study
            )
            if before == [(t.number, t.state) for t in study.get_trials(deepcopy=False)]:
                break
        print(f"summary: {summary}")
    except Exception as err:  # the study holds every result; the summary can be written again
        print(
            f"warning: no summary ({err}); medtrain report sweep_dir={sweep.dir}",
            file=sys.stderr,
        )
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    mine = [  # the trials this worker ran (not one drawn as surplus, nor one interrupted)
        t
        for t in study.get_trials(deepcopy=False)
        if t.user_attrs.get("worker") == worker() and counts(t)
    ]
    pruned = [t for t in mine if t.state == TrialState.PRUNED]
    if not complete and sweep.storage is not None and running and pruned == mine:
        # A worker that joined as the last trials were taken ran none; one whose trials were
        # all pruned (by the startup trials' reports so far) did its share. Neither failed.
        ran = f"this worker's {len(pruned)} trial(s) were pruned" if pruned else "no trial left"
        print(
            f"{ran}{'' if pruned else ' for this worker'}: {len(running)} trial(s) still run on "
            "other workers; "
            f"the last to finish writes the summary (or: medtrain report sweep_dir={sweep.dir})"
        )
        return 0
    if not complete:
        print("error: no trial completed; see error.txt in the trial folders", file=sys.stderr)
        return 1
    best = study.best_trial
    print(
        f"best: trial {best.number}  {best.params}  {(search_of(study) or {}).get('monitor')} {best.value:.4f}"
    )
    return 0


def _summarize_interrupted(sweep_dir) -> None:
    """The summary of the trials an interrupted search has finished (the interrupted one listed
    as failed, "interrupted"), as a finished search writes it; nothing when none has started."""
    from medtrain.experiments.sweep_summary import write_sweep_summary

    try:
        print(f"summary so far: {write_sweep_summary(sweep_dir, plots=False)}")
    except FileNotFoundError:
        pass
    except Exception as err:  # the study holds every result; the summary can be written again
        print(
            f"warning: no summary ({err}); medtrain report sweep_dir={sweep_dir}", file=sys.stderr
        )
