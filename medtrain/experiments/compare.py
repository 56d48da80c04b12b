"""Finished runs side by side: the config values that differ between them, then every metric, as
`comparison.csv` and `comparison.md` (the library behind `medtrain compare`)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medtrain.engine.legacy import current_target
from medtrain.errors import ConfigError
from medtrain.io import atomic_write, file_in_the_way, load_checkpoint, read_json, save_csv


def flat_config(run_dir: Path) -> dict[str, Any]:
    """The run's config as `dotted.key -> value` leaves: the trained config in best.pt (with what
    the data inferred), else `.hydra/config.yaml`; empty when neither exists. `_target_` paths of
    earlier releases are shown as today's, so that runs of two releases differ only where their
    configs do."""
    best = run_dir / "checkpoints" / "best.pt"
    saved = run_dir / ".hydra" / "config.yaml"
    if best.is_file():
        config = load_checkpoint(best).get("config") or {}
    elif saved.is_file():
        config = OmegaConf.to_container(OmegaConf.load(saved), resolve=False)
    else:
        return {}
    leaves: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}.{key}" if prefix else str(key))
        else:
            leaves[prefix] = current_target(node) if prefix.endswith("_target_") else node

    walk(config, "")
    return leaves


def not_a_run(run_dir: Path) -> str:
    """Why `run_dir` is no finished run's folder, for messages: it does not exist, it is a CV's
    folder (its runs are inside), or it has no metrics.json."""
    if not Path(run_dir).is_dir():
        return f"{run_dir} does not exist (or is not a folder)"
    if (Path(run_dir) / "folds.json").is_file():
        return f"{run_dir} is a CV folder: its runs are fold_<k>/ and ensemble/"
    return f"{run_dir} has no metrics.json (is it a finished run?)"


def is_cv_folder(run_dir: Path) -> bool:
    """A finished `medtrain cv` folder (its folds.json and cv.json)."""
    return (run_dir / "folds.json").is_file() and (run_dir / "cv.json").is_file()


def stands_for(run_dir: Path) -> Path:
    """The run folder whose data a compared folder's test metrics are of: a CV's first fold
    (every fold has the CV's test split), else the run itself."""
    return run_dir / "fold_0" if is_cv_folder(run_dir) else run_dir


def read_cv(cv_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics, flat config) of a CV folder: its pooled out-of-fold metrics (`oof/...`) and its
    fold ensemble's test metrics (`test/...`, like a run's), the folds' training time summed; the
    config of its first fold, with `cv.folds` for the fold and folds file it was trained as."""
    summary = read_json(cv_dir / "cv.json") or {}
    metrics = {k: v for k, v in (summary.get("oof") or {}).items() if k != "threshold"}
    metrics |= summary.get("ensemble") or {}
    if summary.get("threshold") is not None:
        metrics["threshold"] = summary["threshold"]
    seconds = summary.get("fold_train_seconds") or []
    if seconds and all(isinstance(s, (int, float)) for s in seconds):
        metrics["train_seconds"] = round(sum(seconds), 2)
    config = {k: v for k, v in flat_config(cv_dir / "fold_0").items() if not k.startswith("cv.")}
    return metrics, config | {"cv.folds": summary.get("folds")}


def read_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(metrics.json plus `train_seconds` from run_info.json, flat config) of one run; a CV
    folder's by `read_cv`."""
    if is_cv_folder(run_dir):
        return read_cv(run_dir)
    metrics = read_json(run_dir / "metrics.json")
    if metrics is None:
        raise ConfigError(f"run_dirs: {not_a_run(run_dir)}")
    info = read_json(run_dir / "run_info.json")
    if info is not None:
        metrics["train_seconds"] = info.get("train_seconds")
    return metrics, flat_config(run_dir)


def compare(run_dirs: Sequence[str | Path], output: str | Path = ".") -> list[dict[str, Any]]:
    """Build the side-by-side table (one row per differing config value, then one per metric; one
    column per run), write it as CSV and Markdown into `output`, and return its rows."""
    return compared(run_dirs, output)[0]


def compared(
    run_dirs: Sequence[str | Path], output: str | Path = "."
) -> tuple[list[dict[str, Any]], list[str]]:
    """`compare`'s rows, and why the runs' test metrics are not like for like (`not_comparable`;
    written below the Markdown table too)."""
    if len(run_dirs) < 2:
        raise ConfigError(f"run_dirs={list(run_dirs)}: give at least 2 runs to compare")
    check_output(Path(output))
    runs = [Path(d) for d in run_dirs]
    names = column_names(runs)
    read = [read_run(run) for run in runs]
    rows: list[dict[str, Any]] = []
    config_keys = sorted({k for _, config in read for k in config})
    for key in config_keys:
        values = [config.get(key) for _, config in read]
        if any(v != values[0] for v in values[1:]):
            rows.append({"key": f"config: {key}", **dict(zip(names, values, strict=True))})
    metric_keys = list(dict.fromkeys(k for metrics, _ in read for k in metrics))
    for key in metric_keys:
        rows.append({"key": key, **{n: m.get(key) for n, (m, _) in zip(names, read, strict=True)}})
    output = Path(output)
    save_csv(output / "comparison.csv", rows, ["key", *names])
    cautions = not_comparable([stands_for(r) for r in runs], [c for _, c in read], names)
    text = markdown(rows, names) + "".join(f"\n> {line}\n" for line in cautions)
    atomic_write(output / "comparison.md", lambda f: f.write(text))
    return rows, cautions


def check_output(output: Path) -> None:
    """`output=` must be a folder (or a path to one not made yet) whose comparison.csv and
    comparison.md, where they exist, are an earlier comparison's: recognised by their first lines
    (the CSV's column `key` first, the Markdown table's empty corner cell and rule), so that a
    file of the user's with that name is not replaced. Checked before anything is read or written.

    Raises:
        ConfigError: naming the file and what it holds.
    """
    place = file_in_the_way(output, folder=True)
    if place is not None:
        raise ConfigError(
            f"output={output}: {place} is a file; give a folder (comparison.csv and "
            "comparison.md are written into it)"
        )
    for name, ours in (
        ("comparison.csv", _is_comparison_csv),
        ("comparison.md", _is_comparison_md),
    ):
        path = output / name
        if path.exists() and not (path.is_file() and ours(path)):
            first = (_first_lines(path, 1) or [""])[0] if path.is_file() else ""
            what = f"its first line: {first[:60]!r}" if first else "no text"
            raise ConfigError(
                f"output={output}: {path} exists and is not an earlier comparison's ({what}): "
                "give output= another folder; nothing was written"
            )


def _first_lines(path: Path, count: int) -> list[str] | None:
    """The first `count` lines of a text file (fewer when it is shorter); None when it is not
    UTF-8 text."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return [line.rstrip("\r\n") for line, _ in zip(handle, range(count), strict=False)]
    except (OSError, UnicodeDecodeError):
        return None


def _is_comparison_csv(path: Path) -> bool:
    """Whether `path` holds what `compared` writes as comparison.csv: a header of `key`, then the
    column of each run."""
    lines = _first_lines(path, 1)
    if not lines:
        return False
    try:
        header = next(csv.reader(lines))
    except csv.Error:
        return False
    return len(header) >= 3 and header[0] == "key"


def _is_comparison_md(path: Path) -> bool:
    """Whether `path` holds what `markdown` writes: `| | <run> | <run> |`, then `|---|---|---|`."""
    lines = _first_lines(path, 2)
    if not lines or len(lines) < 2:
        return False
    head, rule = lines
    return head.startswith("| | ") and rule.startswith("|---|---|---|") and set(rule) == {"|", "-"}


def not_comparable(runs: list[Path], configs: list[dict[str, Any]], names: list[str]) -> list[str]:
    """Why the runs' test metrics are not like for like, one line each (also in comparison.md):
    other tasks, other classes (a binary task's positive class among them), other test cases."""
    said = []
    for key, what in (
        ("task._target_", "tasks"),
        (
            "dataset.class_names",
            "classes (a binary task's sensitivity, AUC and threshold are of its positive class, "
            "the second name; the per-class or per-label metrics follow each run's names)",
        ),
    ):
        values = [config.get(key) for config in configs]
        if any(v != values[0] for v in values[1:]):
            shown = ", ".join(f"{n}: {v}" for n, v in zip(names, values, strict=True))
            said.append(f"The runs have other {what}: {shown}.")
    # Like for like: splits.json when every run has one (its ids may be slices of volumes, which
    # predictions.csv names by volume), else every run's predictions.csv.
    every = all((run / "splits.json").is_file() for run in runs)
    tests = [test_cases(run, splits=every) for run in runs]
    if all(t is not None for t in tests) and any(sorted(t) != sorted(tests[0]) for t in tests[1:]):
        sizes = ", ".join(f"{n}: {len(t)}" for n, t in zip(names, tests, strict=True))
        said.append(
            f"The runs were tested on other cases ({sizes} test cases; splits.json): their test "
            "metrics differ by data as well as by model."
        )
    else:  # the same ids (`test_images[3]` of any MedMNIST file) may name other images
        data = [data_read(run) for run in runs]
        comparable = all(d is not None for d in data) and len({d.get("rule") for d in data}) == 1
        if comparable and len({d["sha256"] for d in data}) > 1:
            shown = ", ".join(f"{n}: {data_said(d)}" for n, d in zip(names, data, strict=True))
            said.append(
                f"The runs read other data ({shown}; provenance.json): their test metrics "
                "differ by data as well as by model, whatever their test cases are called."
            )
    return said


def data_read(run: Path) -> dict[str, Any] | None:
    """The fingerprint of the files a run read (its `provenance.json`'s `data`, of a file or a
    folder; digests are compared only under the same `rule`); None when the run records none (an
    ensemble, a run from before provenance) or read generated data, whose digest is of its
    settings (a key added to them in a later release changes it)."""
    from medtrain.engine.provenance import files_fingerprint

    return files_fingerprint((read_json(run / "provenance.json") or {}).get("data"))


def data_said(data: dict[str, Any]) -> str:
    where = data.get("path") or data.get("kind", "data")
    return f"{where} (sha256 {str(data['sha256'])[:12]})"


def test_cases(run: Path, splits: bool = True) -> list[str] | None:
    """The ids of a run's test cases: its `splits.json`'s (with `splits`), else (an ensemble, a
    CV's fold ensemble, which keep no splits.json) the `id` column of its `predictions.csv`."""
    split = (read_json(run / "splits.json") or {}).get("test") if splits else None
    if split is not None:
        return [str(i) for i in split]
    path = run / "predictions.csv"
    if not path.is_file():
        return None
    with path.open(newline="") as handle:
        ids = [row.get("id") for row in csv.DictReader(handle)]
    return None if not ids or None in ids else ids


def column_names(runs: list[Path]) -> list[str]:
    """The runs' folder names (a sweep's job `0` with its sweep's: `14-02-11/0`, not a bare
    number that reads as an index), or, when two runs share a name, every run's full path."""
    names = [f"{run.parent.name}/{run.name}" if run.name.isdigit() else run.name for run in runs]
    return names if len(set(names)) == len(names) else [str(run) for run in runs]


def _cell(value: Any) -> str:
    """A metric to 4 decimals; a smaller number (a learning rate, 1.4e-4) to 4 significant
    digits, so that values that differ do not read the same."""
    if isinstance(value, float):
        return f"{value:.4f}" if value == 0 or abs(value) >= 0.01 else f"{value:.4g}"
    return "" if value is None else str(value)


def _config_cell(value: Any) -> str:
    """A config value as the YAML and the command line write it: `0.001`, `true`, `null`."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def markdown(rows: list[dict[str, Any]], names: list[str]) -> str:
    """The table as Markdown: a header of run names, one line per row (config values as given,
    metrics rounded)."""
    lines = ["| | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for row in rows:
        cell = _config_cell if row["key"].startswith("config: ") else _cell
        lines.append(f"| {row['key']} | " + " | ".join(cell(row[n]) for n in names) + " |")
    return "\n".join(lines) + "\n"
