"""Hydra callbacks: after each job of a multirun and at its end, `sweep_summary.csv` / `.md` (and at
the end the plots) in the sweep folder. Enabled in conf/train.yaml under `hydra.callbacks`."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from medtrain.engine.ranks import launched_rank
from medtrain.experiments.sweep_summary import write_sweep_summary

log = logging.getLogger("medtrain")


class SweepSummary(Callback):
    """Writes the sweep summary of a multirun; a failure is logged, never raised, so that a summary
    problem cannot stop or fail the sweep."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        # The table after every job: a multirun stopped midway still leaves a summary of what ran.
        if config.hydra.mode == RunMode.MULTIRUN:
            self.write(Path(config.hydra.sweep.dir), plots=False)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = self.write(Path(config.hydra.sweep.dir), plots=True)
        if path is not None:
            log.info("sweep summary: %s", path.with_suffix(".md"))

    @staticmethod
    def write(sweep_dir: Path, plots: bool) -> Path | None:
        """The summary of the multirun in `sweep_dir`; None when there is none or it failed
        (logged, never raised)."""
        if launched_rank() > 0:  # under torchrun only rank 0 writes the sweep folder
            return None
        try:
            return write_sweep_summary(sweep_dir, plots=plots)
        except Exception as err:  # a summary must never break the multirun
            log.warning("no sweep summary for %s: %s", sweep_dir, err)
            return None
