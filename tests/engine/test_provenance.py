"""Provenance of a run: environment, git state, data fingerprint (checked against hashlib), seeds and
determinism settings in provenance.json."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import torch

import medtrain
from medtrain.engine.provenance import data_fingerprint, environment, git_state, write_provenance
from tests.conftest import ROOT, TINY, compose_cfg


def test_environment_names_python_torch_and_package_versions():
    env = environment()
    assert env["torch"] == torch.__version__
    assert env["cuda"] == torch.version.cuda
    assert env["cuda_available"] == torch.cuda.is_available()
    assert len(env["gpus"]) == (torch.cuda.device_count() if env["cuda_available"] else 0)
    assert env["medtrain"] == medtrain.__version__
    assert env["packages"]["numpy"] == np.__version__
    assert env["packages"]["hydra-core"] == version("hydra-core")
    assert env["python"].count(".") == 2


def test_git_state_outside_a_checkout_names_the_reason(tmp_path):
    state = git_state(tmp_path)
    assert state["commit"] is None and state["reason"]


def test_git_state_without_git_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no git executable on the path
    state = git_state(tmp_path)
    assert state["commit"] is None and state["reason"] == "git is not installed"


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_of_a_checkout_clean_and_dirty(tmp_path):
    def git(*args):
        identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
        return subprocess.run(
            ["git", *identity, "-C", str(tmp_path), *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    git("init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git("add", "a.py")
    git("commit", "-q", "-m", "first")
    clean = git_state(tmp_path)
    assert clean["commit"] == git("rev-parse", "HEAD") and clean["reason"] is None
    assert clean["dirty"] is False and clean["diff"] == "" and clean["diff_sha256"] is None

    (tmp_path / "a.py").write_text("x = 2\n")
    (tmp_path / "new.py").write_text("")
    dirty = git_state(tmp_path)
    assert dirty["dirty"] is True and "+x = 2" in dirty["diff"]
    assert dirty["untracked"] == ["new.py"]
    assert dirty["diff_sha256"] == hashlib.sha256(dirty["diff"].encode()).hexdigest()
    # A folder inside a checkout is not the checkout (an installed medtrain inside some project).
    (tmp_path / "sub").mkdir()
    assert git_state(tmp_path / "sub")["commit"] is None


def fingerprint(path):
    return data_fingerprint(compose_cfg([f"dataset.path={path}"]))


def test_fingerprint_of_a_file_is_its_sha256_and_changes_with_one_byte(tmp_path):
    data = np.random.default_rng(0).integers(0, 256, 3 * 2**20 + 5, dtype=np.uint8).tobytes()
    path = tmp_path / "data.npz"
    path.write_bytes(data)  # several 1 MiB chunks and a remainder
    first = fingerprint(path)
    assert first["kind"] == "file" and first["files"] == 1 and first["bytes"] == len(data)
    assert first["sha256"] == hashlib.sha256(data).hexdigest()
    changed = bytearray(data)
    changed[2**20 + 7] ^= 1
    path.write_bytes(bytes(changed))
    assert fingerprint(path)["sha256"] != first["sha256"]


def test_fingerprint_of_a_manifest_covers_the_images_it_lists(tmp_path):
    from omegaconf import OmegaConf

    (tmp_path / "img").mkdir()
    for name in ("a.png", "b.png"):
        (tmp_path / "img" / name).write_bytes(name.encode() * 10)
    csv_path = tmp_path / "cases.csv"
    csv_path.write_text("image,target\nimg/a.png,0\nimg/b.png,1\n")
    cfg = OmegaConf.create({"dataset": {"path": str(csv_path), "image_column": "image"}})
    first = data_fingerprint(cfg)
    assert first["files"] == 3 and first["bytes"] == csv_path.stat().st_size + 100
    (tmp_path / "img" / "b.png").write_bytes(b"changed")  # the CSV is unchanged
    assert data_fingerprint(cfg)["sha256"] != first["sha256"]


def write_tree(root, files):
    for name, content in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(content)


def test_fingerprint_of_a_folder_covers_names_and_bytes_not_hidden_files(tmp_path):
    files = {"images/a.png": b"aaa", "images/b.png": b"bb", "masks/a.png": b"m"}
    write_tree(tmp_path / "one", files)
    write_tree(tmp_path / "two", files | {".DS_Store": b"x", ".cache/z": b"y"})
    one, two = fingerprint(tmp_path / "one"), fingerprint(tmp_path / "two")
    assert one["kind"] == "folder" and one["files"] == 3 and one["bytes"] == 6
    assert one["sha256"] == two["sha256"]
    write_tree(tmp_path / "renamed", {**files, "images/c.png": files["images/b.png"]})
    (tmp_path / "renamed" / "images" / "b.png").unlink()
    assert fingerprint(tmp_path / "renamed")["sha256"] != one["sha256"]
    write_tree(tmp_path / "two", {"masks/a.png": b"n"})
    assert fingerprint(tmp_path / "two")["sha256"] != one["sha256"]
    # A folder is not the same data as a file holding the same bytes.
    (tmp_path / "flat").write_bytes(b"aaabbm")
    assert fingerprint(tmp_path / "flat")["sha256"] != one["sha256"]


def test_documents_beside_folder_data_do_not_change_its_fingerprint(tmp_path):
    """A README, a licence, a PDF of the protocol or a desktop thumbnail file is not data: adding
    one does not refuse a rerun or a CV's later folds. A plain .txt file counts (a dataset may
    read labels from it); a record of the earlier rule (every visible file) is compared by it."""
    from medtrain.engine.provenance import fingerprint_change

    files = {"images/a.png": b"aaa", "masks/a.png": b"m"}
    write_tree(tmp_path / "data", files)
    cfg = compose_cfg([f"dataset.path={tmp_path / 'data'}"])
    before = data_fingerprint(cfg)
    assert before["rule"] == 2 and before["documents"] == [] and before["files"] == 2
    notes = {
        "README.md": b"# cases",
        "LICENSE": b"CC0",
        "images/Thumbs.db": b"t",
        "protocol.pdf": b"%PDF",
        "readme.txt": b"r",
    }
    write_tree(tmp_path / "data", notes)
    now = data_fingerprint(cfg)
    assert now["sha256"] == before["sha256"] and now["files"] == 2
    assert now["documents"] == sorted(notes)
    assert fingerprint_change(before, data_fingerprint(cfg, like=before)) is None
    write_tree(tmp_path / "data", {"labels.txt": b"a 1"})  # may be read: it is data
    assert fingerprint_change(before, data_fingerprint(cfg, like=before)) is not None
    # A run recorded before the rule hashed every visible file: compared by that rule, its folder
    # with the same files is unchanged, and a document added since is a change by that rule.
    (tmp_path / "data" / "labels.txt").unlink()
    old = {
        k: v for k, v in data_fingerprint(cfg, like={}).items() if k not in ("rule", "documents")
    }
    assert old["files"] == 7 and old["sha256"] != before["sha256"]
    assert fingerprint_change(old, data_fingerprint(cfg, like=old)) is None
    write_tree(tmp_path / "data", {"NOTES.md": b"n"})
    assert fingerprint_change(old, data_fingerprint(cfg, like=old)) is not None
    assert fingerprint_change(before, data_fingerprint(cfg, like=before)) is None


def test_fingerprint_of_generated_data_is_that_of_its_settings(tmp_path):
    base = data_fingerprint(compose_cfg(TINY))
    assert base["kind"] == "generated" and base["path"] is None
    assert data_fingerprint(compose_cfg(TINY))["sha256"] == base["sha256"]
    assert data_fingerprint(compose_cfg([*TINY, "seed=1"]))["sha256"] != base["sha256"]
    assert (
        data_fingerprint(compose_cfg([*TINY, "dataset.contrast=0.4"]))["sha256"] != base["sha256"]
    )
    # Training settings do not change the data.
    assert data_fingerprint(compose_cfg([*TINY, "optimizer.lr=0.1"]))["sha256"] == base["sha256"]
    assert fingerprint(tmp_path / "absent")["kind"] == "missing"


def test_write_provenance_records_seeds_determinism_device_and_command(tmp_path):
    cfg = compose_cfg([*TINY, "seed=7"])
    written = write_provenance(tmp_path, cfg, torch.device("cpu"))
    stored = json.loads((tmp_path / "provenance.json").read_text())
    assert stored == written
    assert stored["seeds"] == {"seed": 7, "dataset.seed": 7}
    assert stored["device"] == "cpu" and isinstance(stored["command"], list)
    assert stored["determinism"]["trainer.deterministic"] is False
    assert stored["determinism"]["deterministic_algorithms"] == (
        torch.are_deterministic_algorithms_enabled()
    )
    assert stored["data"]["kind"] == "generated"
    assert stored["environment"]["torch"] == torch.__version__
    git = stored["git"]
    assert "diff" not in git  # the diff goes to git_diff.patch, not into the JSON
    assert (tmp_path / "git_diff.patch").is_file() == bool(git["dirty"])


def test_cublas_setting_is_recorded_as_the_run_uses_it():
    """MONAI sets CUBLAS_WORKSPACE_CONFIG when imported: the first job of a process must record
    it as later jobs (and reruns in a fresh process) do, or a rerun reports a change that is not."""
    code = "from medtrain.engine.provenance import determinism; print(determinism()['cublas_workspace_config'])"
    env = {k: v for k, v in os.environ.items() if k != "CUBLAS_WORKSPACE_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT
    )
    assert done.stdout.strip() == ":4096:8", done.stderr[-2000:]


def test_a_resumed_session_keeps_the_runs_record_and_is_appended(tmp_path, monkeypatch):
    """A run of 2 processes continued by 1: its record (created, command, data, environment,
    `distributed`) stays; the session is appended with its own command, processes and what
    differs. Continued into another folder, the record comes along with the session added; a
    run without a record gets the session's, marked `recorded_from_epoch`."""
    cfg = compose_cfg([*TINY, "seed=7"])
    run, other, bare = tmp_path / "run", tmp_path / "other", tmp_path / "bare"
    for folder in (run, other, bare):
        folder.mkdir()
    two = {"world_size": 2, "nodes": 1, "processes_per_node": 2, "backend": "gloo"}
    monkeypatch.setattr(sys, "argv", ["medtrain", "trainer.max_epochs=3"])
    original = write_provenance(run, cfg, "cpu", two)
    original_bytes = (run / "provenance.json").read_bytes()
    (run / "git_diff.patch").write_text("diff of the run's start\n")  # as a dirty checkout's
    monkeypatch.setattr(sys, "argv", ["medtrain", "trainer.max_epochs=4", "trainer.resume=true"])
    newer = environment()
    newer["packages"] = newer["packages"] | {"numpy": "99.0"}
    monkeypatch.setattr(medtrain.engine.provenance, "environment", lambda: newer)
    resumed = {
        "checkpoint": str(run / "checkpoints" / "last.pt"),
        "after_epoch": 3,
        "config_changes": {"trainer.max_epochs": [3, 4]},
        "world_size": 2,
        "run": str(run),
    }
    written = write_provenance(run, cfg, "cpu", {"world_size": 1}, resumed)
    stored = json.loads((run / "provenance.json").read_text())
    assert stored == written
    assert {k: v for k, v in stored.items() if k != "resumed"} == json.loads(original_bytes)
    assert stored["distributed"] == two and stored["created"] == original["created"]
    assert stored["command"] == ["medtrain", "trainer.max_epochs=3"]
    [session] = stored["resumed"]
    assert session["command"] == ["medtrain", "trainer.max_epochs=4", "trainer.resume=true"]
    assert session["after_epoch"] == 3 and session["processes"] == 1
    assert "distributed" not in session and session["device"] == "cpu"
    assert session["config_changes"] == {"trainer.max_epochs": [3, 4]}
    numpy_then = original["environment"]["packages"]["numpy"]
    assert session["environment_changes"] == {"environment.packages.numpy": [numpy_then, "99.0"]}
    assert (run / "git_diff.patch").read_text() == "diff of the run's start\n"

    # Continued again, into another folder: the record and its diff come along.
    again = resumed | {"after_epoch": 4, "config_changes": {}, "world_size": 1}
    write_provenance(other, cfg, "cpu", two, again)
    moved = json.loads((other / "provenance.json").read_text())
    assert moved["created"] == original["created"] and moved["data"] == original["data"]
    assert [s["after_epoch"] for s in moved["resumed"]] == [3, 4]
    assert moved["resumed"][1]["processes"] == 2 and moved["resumed"][1]["distributed"] == two
    assert (other / "git_diff.patch").read_text() == "diff of the run's start\n"

    # A checkpoint whose run recorded nothing (a release before provenance.json).
    alone = resumed | {"run": str(tmp_path / "old")}
    recorded = write_provenance(bare, cfg, "cpu", {"world_size": 1}, alone)
    assert recorded["recorded_from_epoch"] == 3 and recorded["data"]["kind"] == "generated"
    assert recorded["command"] == recorded["resumed"][0]["command"]
    assert recorded["resumed"][0]["config_changes"] == {"trainer.max_epochs": [3, 4]}
    assert "distributed" not in recorded


def test_a_provenance_json_that_cannot_be_read_stops_a_resume(tmp_path):
    """A damaged record is named with what to do: the resume would otherwise replace it."""
    from medtrain.engine.resume import run_provenance
    from medtrain.errors import DataError

    assert run_provenance(None) is None and run_provenance(tmp_path) is None
    (tmp_path / "provenance.json").write_text('{"created": ')
    with pytest.raises(DataError, match=r"trainer.resume: cannot read .*provenance.json"):
        run_provenance(tmp_path)
    (tmp_path / "provenance.json").write_text("[]")
    with pytest.raises(DataError, match="holds no JSON object: the continued run would lose"):
        run_provenance(tmp_path)
