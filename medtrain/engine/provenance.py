"""What a run needs to be reproduced and checked: the environment, the git state, a fingerprint of the
data, the seeds and the determinism settings, written to `<run>/provenance.json`."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

import medtrain
from medtrain.io import atomic_write, hash_file, read_json, save_json

PACKAGES = (
    "torch",
    "torchvision",
    "numpy",
    "hydra-core",
    "omegaconf",
    "albumentations",
    "scikit-learn",
    "scikit-image",
    "monai",
    "scipy",
    "pillow",
    "opencv-python-headless",
)
GIT_TIMEOUT_S = 10


def environment() -> dict[str, Any]:
    """Python, platform, torch with its CUDA and cuDNN builds, the GPUs seen, and package versions."""
    cuda = torch.cuda.is_available()
    packages = {}
    for name in PACKAGES:
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            continue
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cuda_available": cuda,
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if cuda
        else [],
        "medtrain": medtrain.__version__,
        "packages": packages,
    }


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        errors="replace",  # a diff of a Latin-1 file must not stop the run
        timeout=GIT_TIMEOUT_S,
        check=True,
    )
    return result.stdout


def git_state(repo: Path) -> dict[str, Any]:
    """The commit, branch and uncommitted changes of the checkout at `repo`.

    Returns:
        `commit`, `branch`, `dirty` (tracked changes, staged or not, or untracked files), `diff`
        (`git diff HEAD`), `diff_sha256` (None without a diff), `untracked` (names only) and
        `reason`: why `commit` is None when `repo` is not the top of a git checkout or git cannot
        be run.
    """
    state: dict[str, Any] = {
        "commit": None,
        "branch": None,
        "dirty": None,
        "diff": "",
        "diff_sha256": None,
        "untracked": [],
        "reason": None,
    }
    repo = Path(repo).resolve()
    try:
        top = _git(repo, "rev-parse", "--show-toplevel").strip()
        # An installed (non-editable) medtrain lives in site-packages, which may sit inside some
        # other checkout (a .venv in a project): that checkout's commit says nothing about medtrain.
        if Path(top).resolve() != repo:
            state["reason"] = f"{repo} is not the top of a git checkout (it is inside {top})"
            return state
        state["commit"] = _git(repo, "rev-parse", "HEAD").strip()
        branch = _git(repo, "rev-parse", "--abbrev-ref", "HEAD").strip()
        state["branch"] = None if branch == "HEAD" else branch  # detached HEAD has no branch
        state["diff"] = _git(repo, "diff", "HEAD")
        untracked = _git(repo, "ls-files", "--others", "--exclude-standard").splitlines()
    except FileNotFoundError:
        state["reason"] = "git is not installed"
        return state
    except subprocess.TimeoutExpired:
        state["reason"] = f"git did not answer within {GIT_TIMEOUT_S} s"
        return state
    except subprocess.CalledProcessError as err:
        message = (err.stderr or "").strip().splitlines()
        state["commit"] = None
        state["reason"] = f"not a git checkout, or no commit yet ({message[0] if message else err})"
        return state
    state["untracked"] = untracked
    state["dirty"] = bool(state["diff"]) or bool(untracked)
    if state["diff"]:
        state["diff_sha256"] = hashlib.sha256(state["diff"].encode()).hexdigest()
    return state


def _visible_files(folder: Path) -> list[Path]:
    """Every file below `folder`, hidden files and folders left out, sorted by relative path."""
    files = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(root) / n for n in names if not n.startswith(".")]
    return sorted(files, key=lambda f: f.relative_to(folder).as_posix())


# Files of a data folder that no dataset reads: notes, licences and the desktop's thumbnails. A
# README added beside the images does not make other data (a rerun or a CV's later folds would
# be refused). Plain .txt files count, except by these names: a custom dataset may read labels
# from them.
DOCUMENT_SUFFIXES = (".md", ".markdown", ".rst", ".pdf", ".html", ".htm", ".log", ".doc", ".docx")
DOCUMENT_STEMS = ("readme", "license", "licence", "changelog", "notice", "citation", "authors")
DESKTOP_FILES = ("thumbs.db", "desktop.ini")
# Version of the folder rule: records without it hashed every visible file (documents included)
# and are compared by that rule, so that an old run's folder is not reported as changed.
FOLDER_RULE = 2


def is_document(file: Path) -> bool:
    """Whether a file of a data folder is a note or desktop file, not data (`DOCUMENT_SUFFIXES`)."""
    name = file.name.lower()
    stem = name.split(".", 1)[0]
    return name.endswith(DOCUMENT_SUFFIXES) or stem in DOCUMENT_STEMS or name in DESKTOP_FILES


def _listed_images(manifest: Path, columns: list[str]) -> list[Path]:
    """The existing files that a CSV manifest's `columns` (image, mask) name, relative to the CSV,
    in row order (a listed folder, such as a DICOM series, by its files); none for other files."""
    if manifest.suffix.lower() != ".csv":
        return []
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error):
        return []  # the dataset reports an unreadable manifest, with its line
    files = []
    for row in rows:
        for column in columns:
            value = (row.get(column) or "").strip()
            path = manifest.parent / value
            if value and path.is_file():
                files.append(path)
            elif value and path.is_dir():
                files += _visible_files(path)
    return files


def data_fingerprint(cfg: DictConfig, like: dict[str, Any] | None = None) -> dict[str, Any]:
    """A SHA-256 of the data a run reads.

    A file (`dataset.path`) is hashed byte for byte, a CSV manifest with the images and masks it
    lists; a folder by its files' relative paths and bytes (hidden files and documents left out:
    `is_document`); built-in generated data (`dataset.path` null) by the resolved dataset
    settings, which determine every generated sample.

    Args:
        like: a recorded fingerprint to compare with: a folder is hashed by its rule (records
            from before `FOLDER_RULE` hashed documents too).

    Returns:
        `kind` (file, folder, generated or missing), `path`, `sha256`, `files`, `bytes`; for a
        folder `rule` and the documents left out (`documents`, relative paths).
    """
    if "dataset" not in cfg or OmegaConf.is_missing(cfg.dataset, "path"):
        return {"kind": "missing", "path": None, "sha256": None, "files": 0, "bytes": 0}
    raw = cfg.dataset.get("path")
    digest = hashlib.sha256()
    if raw is None:
        try:
            settings = OmegaConf.to_container(cfg.dataset, resolve=True)
        except Exception:  # an interpolation that cannot resolve: fingerprint the text instead
            settings = OmegaConf.to_container(cfg.dataset, resolve=False)
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
        return {
            "kind": "generated",
            "path": None,
            "sha256": digest.hexdigest(),
            "files": 0,
            "bytes": 0,
        }
    path = Path(str(raw))
    if path.is_file():
        size = hash_file(path, digest)
        columns = [cfg.dataset.get("image_column", "image"), cfg.dataset.get("mask_column", "mask")]
        listed = _listed_images(path, [c for c in columns if c])
        for file in listed:  # a manifest: the images it lists are the data too
            size += hash_file(file, digest)
        return {
            "kind": "file",
            "path": str(path),
            "sha256": digest.hexdigest(),
            "files": 1 + len(listed),
            "bytes": size,
        }
    if path.is_dir():
        files = _visible_files(path)
        rule = FOLDER_RULE if like is None else like.get("rule", 1)
        noted = {f: rule >= 2 and is_document(f) for f in files}
        documents = [f for f in files if noted[f]]
        files = [f for f in files if not noted[f]]
        size = 0
        for file in files:
            name = file.relative_to(path).as_posix().encode()
            # The name's length and a separator keep (name, bytes) pairs from running into each other.
            digest.update(len(name).to_bytes(8, "little") + name + b"\0")
            size += hash_file(file, digest)
        return {
            "kind": "folder",
            "path": str(path),
            "sha256": digest.hexdigest(),
            "files": len(files),
            "bytes": size,
            "rule": rule,
            "documents": [f.relative_to(path).as_posix() for f in documents],
        }
    return {"kind": "missing", "path": str(path), "sha256": None, "files": 0, "bytes": 0}


def files_fingerprint(data: Any) -> dict[str, Any] | None:
    """A recorded data fingerprint (`provenance.json`'s `data`) when it is of files, a file or a
    folder, with its digest; None otherwise: none recorded, or generated data, whose digest is of
    its settings (compared through the config; a key a later release adds to them changes it)."""
    if not isinstance(data, dict) or not data.get("sha256"):
        return None
    return data if data.get("kind") in ("file", "folder") else None


def fingerprint_change(before: dict[str, Any], now: dict[str, Any]) -> str | None:
    """What changed between a recorded data fingerprint (`data_fingerprint`) and today's, as
    `<path> (data fingerprint a -> b; files, bytes)`; None when they agree, or when either is not
    of a file or folder of the same kind (generated data, a path now missing: reported where the
    data are read)."""
    if before.get("kind") not in ("file", "folder") or not before.get("sha256"):
        return None
    if now["kind"] != before["kind"] or now["sha256"] == before["sha256"]:
        return None
    return (
        f"{now['path']} (data fingerprint {before['sha256'][:12]} -> {now['sha256'][:12]}; "
        f"{before.get('files')} -> {now['files']} files, {before.get('bytes')} -> "
        f"{now['bytes']} bytes)"
    )


def determinism() -> dict[str, Any]:
    """The settings that decide whether kernels repeat bit for bit (set by configure_determinism)."""
    # MONAI sets CUBLAS_WORKSPACE_CONFIG (if unset) when imported, and every run of earlier
    # releases imported it; medtrain now imports MONAI only when a run uses it, and sets the same
    # default itself, so that every run records (and runs with) the value runs always had.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

    return {
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "deterministic_warn_only": torch.is_deterministic_algorithms_warn_only_enabled(),
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        # CPU kernels split their sums by thread: another count rounds differently
        "cpu_threads": torch.get_num_threads(),
    }


def collect_provenance(
    cfg: DictConfig, device: torch.device | str, data: bool = True
) -> dict[str, Any]:
    """Everything `write_provenance` records, with the git diff kept under `git.diff`; `data`:
    with the data's fingerprint (a resumed session's record has none: the resume checked it)."""
    seeds = {"seed": cfg.get("seed")}
    if "dataset" in cfg and "seed" in cfg.dataset:
        try:
            seeds["dataset.seed"] = cfg.dataset.seed
        except Exception:  # an unresolvable interpolation
            seeds["dataset.seed"] = None
    trainer = cfg.get("trainer") or {}
    provenance = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": list(sys.argv),
        "cwd": str(Path.cwd()),
        "device": str(device),
        "seeds": seeds,
        "determinism": {"trainer.deterministic": trainer.get("deterministic"), **determinism()},
        "environment": environment(),
        "git": git_state(Path(medtrain.__file__).resolve().parents[1]),
    }
    if data:
        provenance["data"] = data_fingerprint(cfg)
    return provenance


def write_provenance(
    run_dir: Path,
    cfg: DictConfig,
    device: torch.device | str,
    world: dict | None = None,
    resumed: dict | None = None,
) -> dict[str, Any]:
    """Write `provenance.json` into `run_dir` (and, when the checkout is dirty, `git_diff.patch`: the
    untracked files' names as comments, then `git diff HEAD`).

    Call it after the determinism settings are applied and before `build_datasets`, which fills in
    inferred dataset keys (the fingerprint of generated data is taken over the settings as given).

    `world` (`medtrain.engine.distributed.describe`): the processes of a distributed run, recorded
    as `distributed` (what `medtrain rerun` launches again); a single process records nothing.

    `resumed` (`medtrain.engine.resume.check_before_resuming`): this session continues a run, whose
    record is kept and gets this session appended (`record_resumed_session`).

    Returns:
        What `provenance.json` holds.
    """
    if resumed is not None:
        return record_resumed_session(run_dir, cfg, device, world, resumed)
    provenance = _new_record(Path(run_dir), cfg, device, world)
    save_json(Path(run_dir) / "provenance.json", provenance)
    return provenance


def _new_record(run_dir: Path, cfg: DictConfig, device, world: dict | None) -> dict[str, Any]:
    """A run's provenance from its start, its diff written to `git_diff.patch`."""
    provenance = collect_provenance(cfg, device)
    if world and world.get("world_size", 1) > 1:
        provenance["distributed"] = world
    diff = provenance["git"].pop("diff")
    if provenance["git"]["dirty"]:
        _write_diff(run_dir / "git_diff.patch", provenance["git"], diff)
    return provenance


def _write_diff(path: Path, git: dict[str, Any], diff: str) -> None:
    # `git apply` skips the lines before the first diff, so the untracked names can go there.
    untracked = "".join(f"# untracked: {name}\n" for name in git["untracked"])
    atomic_write(path, lambda f: f.write(untracked + diff))


# What a resumed session is compared by with its run's record: what its epochs computed with.
SESSION_SECTIONS = ("device", "environment", "git", "determinism")
# How the checkout is named and what it holds besides its diff: no change to what is computed.
SESSION_IGNORED = ("git.branch", "git.reason", "git.untracked")


def _leaves(node: Any, prefix: str) -> dict[str, Any]:
    """Dotted key -> value of every leaf of nested dicts (`environment.packages.numpy`)."""
    if not isinstance(node, dict) or not node:
        return {prefix: node}
    leaves: dict[str, Any] = {}
    for key, value in node.items():
        leaves |= _leaves(value, f"{prefix}.{key}")
    return leaves


def session_differences(run: dict[str, Any], session: dict[str, Any]) -> dict[str, list]:
    """What a resumed session computed with differently from its run's record (`SESSION_SECTIONS`;
    a section the record lacks is not compared).

    Returns:
        {dotted key: [the run's value, the session's]}.
    """
    differences = {}
    for section in SESSION_SECTIONS:
        if section not in run or section not in session:
            continue
        before, now = _leaves(run[section], section), _leaves(session[section], section)
        for key in [*before, *(k for k in now if k not in before)]:
            if key.startswith(SESSION_IGNORED) or before.get(key) == now.get(key):
                continue
            differences[key] = [before.get(key), now.get(key)]
    return differences


def record_resumed_session(
    run_dir: Path,
    cfg: DictConfig,
    device: torch.device | str,
    world: dict | None,
    resumed: dict[str, Any],
) -> dict[str, Any]:
    """Keep the provenance of the run a resumed session continues (its start: when, the command,
    the data, the environment, the processes) and append the session under `resumed`: when, its
    command, the checkpoint and epoch it continued from, its processes, the `MAY_CHANGE` config
    values it changed and what it computed with differently (`session_differences`). A dirty
    checkout whose diff is not the run's is written to `git_diff_resumed_<n>.patch`.

    Continuing into another folder brings the run's record (and its diffs) along, as its
    checkpoints are. A run without a record (of a release before provenance, or a checkpoint kept
    apart from its run folder) gets this session's, as a new run's, with `recorded_from_epoch`.

    Returns:
        What `provenance.json` holds.
    """
    run_dir = Path(run_dir)
    source = Path(resumed["run"]) if resumed.get("run") else None
    record = read_json(source / "provenance.json") if source else None
    processes = int((world or {}).get("world_size", 1))
    session: dict[str, Any] = {
        "checkpoint": resumed["checkpoint"],
        "after_epoch": resumed["after_epoch"],
        "processes": processes,
    }
    if processes > 1:
        session["distributed"] = world
    session["config_changes"] = resumed["config_changes"]
    if resumed.get("data_changed"):  # trainer.resume_on_changed_data: its epochs' data differ
        session["data_changed"] = resumed["data_changed"]
    if record is None:
        provenance = _new_record(run_dir, cfg, device, world)
        provenance["recorded_from_epoch"] = resumed["after_epoch"]
        provenance["resumed"] = [
            {k: provenance[k] for k in ("created", "command", "cwd", "device")} | session
        ]
        save_json(run_dir / "provenance.json", provenance)
        return provenance
    if source.resolve() != run_dir.resolve():  # the run's diffs come along with its record
        for patch in sorted(source.glob("git_diff*.patch")):
            content = patch.read_bytes()
            atomic_write(run_dir / patch.name, lambda f, c=content: f.write(c), mode="wb")
    now = collect_provenance(cfg, device, data=False)
    diff = now["git"].pop("diff")
    sessions = list(record.get("resumed") or [])
    session = {k: now[k] for k in ("created", "command", "cwd", "device")} | session
    session["environment_changes"] = session_differences(record, now)
    other_diff = now["git"]["diff_sha256"] != (record.get("git") or {}).get("diff_sha256")
    if now["git"]["dirty"] and other_diff:
        name = f"git_diff_resumed_{len(sessions) + 1}.patch"
        _write_diff(run_dir / name, now["git"], diff)
        session["git_diff"] = name
    provenance = record | {"resumed": [*sessions, session]}
    save_json(run_dir / "provenance.json", provenance)
    return provenance
