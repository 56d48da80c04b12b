"""A grid's folder (`hydra.sweep.dir`) checked before its jobs write there: a folder of its own or
an earlier grid's, and no job folder holding a run of other overrides (another grid's), so that
no grid replaces another's runs. Used by `medtrain.commands.train`'s `FolderGuard` and its jobs."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from medtrain.errors import ConfigError


class OtherGridsJob(ConfigError):
    """A grid's job folder holds a run of other overrides: another grid's (`check_same_job`)."""


def check_planned_jobs(config: DictConfig, grid: Path, runs: dict[Path, dict[Path, bytes]]) -> None:
    """`check_same_job` for every job the grid plans, before the first one starts: a grid whose
    later job folder holds another grid's run would otherwise train its first jobs (those alike
    in both grids) again before it is stopped. Job folders named by `hydra.sweep.subdir` are
    checked as each job starts instead.

    Raises:
        OtherGridsJob: the first such job's.
    """
    from medtrain.experiments.sweep_summary import grid_jobs

    subdir = OmegaConf.to_container(config.hydra.sweep, resolve=False).get("subdir")
    if not runs or subdir != "${hydra.job.num}":
        return
    for number, overrides in enumerate(grid_jobs(config.hydra)):
        folder = grid.resolve() / str(number)
        if folder in runs:
            check_same_job(folder, str(grid), runs, config, overrides)


def check_grid_folder(folder: Path) -> None:
    """A grid's `hydra.sweep.dir` must be a folder of its own or an earlier grid's: a grid in a
    run's, a CV's or a search's folder would mix its jobs and summary with theirs (and number its
    jobs as a search numbers its trials).

    Raises:
        ConfigError: naming the folder and what it holds.
    """
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"hydra.sweep.dir={folder} is a file; give the grid a folder")
    from medtrain.experiments.folders import MARKERS, marked_as

    marked = marked_as(folder, [name for name in MARKERS if name != "multirun.yaml"])
    if marked:
        raise ConfigError(
            f"hydra.sweep.dir={folder} holds {marked[0]} ({', '.join(marked[1])}): give the grid "
            "a folder of its own"
        )


def runs_of_grid(folder: Path) -> dict[Path, dict[Path, bytes]]:
    """The job folders in an earlier grid's sweep folder that hold a run, with their `.hydra/`
    files as they are before Hydra rewrites them (empty when there is no such folder)."""
    from medtrain.engine.resume import HELD

    if not folder.is_dir():
        return {}
    runs = {}
    for job in folder.resolve().iterdir():
        if job.is_dir() and any((job / name).is_file() for name in HELD):
            runs[job] = hydra_files(job)
    return runs


def hydra_files(run_dir: Path) -> dict[Path, bytes]:
    """A run folder's `.hydra/*.yaml` files and their bytes."""
    return {p: p.read_bytes() for p in (run_dir / ".hydra").glob("*.yaml")}


def check_same_job(
    job: Path, grid: str, runs: dict[Path, dict[Path, bytes]], cfg: DictConfig, overrides: list
) -> None:
    """A grid's job may start a new run in a job folder that held one before the command (`runs`:
    each such folder's `.hydra/` files then; `grid`: `hydra.sweep.dir` as given) only when that run
    had the same overrides: the same grid run again trains its jobs again (a continued job, with
    `trainer.resume`, is checked against its checkpoint instead). Another grid given the same
    `hydra.sweep.dir` numbers its jobs alike and would replace the first grid's runs.

    Raises:
        OtherGridsJob: naming the job folder and the overrides that differ.
    """
    import yaml

    from medtrain.experiments.sweep_summary import same_job

    resume = cfg.trainer.get("resume")
    if resume is True or (resume == "auto" and (job / "checkpoints" / "last.pt").is_file()):
        return

    def kept(folder: Path) -> list[str] | None:  # how its run ran, not which job it was
        text = runs[folder].get(folder / ".hydra" / "overrides.yaml")
        values = yaml.safe_load(text) if text is not None else None
        return sorted_overrides(values) if isinstance(values, list) else None

    def sorted_overrides(values) -> list[str]:
        return sorted(same_job(list(map(str, values))))

    before, mine = kept(job), sorted_overrides(overrides)
    if before == mine:
        return
    if before is not None:  # the overrides that differ, each side's
        was = " ".join(v for v in before if v not in overrides) or "nothing else"
        now = " ".join(v for v in mine if v not in before) or "nothing else"
        said = f"there: {was}; this job: {now}"
    else:
        said = "its overrides are not recorded"
    # The same grid with its swept keys in another order numbers its jobs otherwise.
    same = next((f.name for f in runs if f != job and kept(f) == mine), None)
    order = (
        f" Job folder {same} holds a run of this job's overrides: the same grid with its swept "
        "keys or values in another order numbers its jobs otherwise; give them in the first "
        "grid's order"
        if same is not None
        else ""
    )
    raise OtherGridsJob(
        f"hydra.sweep.dir={grid}: job folder {job.name} holds another grid's run ({said}), "
        "which this grid would replace. Give the grid another hydra.sweep.dir (the same grid "
        f"run again trains its jobs again; with trainer.resume=auto it continues them).{order}"
    )
