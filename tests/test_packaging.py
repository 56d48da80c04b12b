"""The wheel is medtrain whole: every package, and conf/ as `medtrain.conf`, so that an installed
medtrain (not the repository) trains the default experiment and predicts with its run."""

from __future__ import annotations

import importlib.resources
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import tomllib

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for p in (ROOT / "medtrain").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert listed == folders | {"medtrain.conf"}
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"medtrain.conf": "conf"}


def test_the_config_groups_are_package_resources():
    conf = importlib.resources.files("medtrain.conf")
    assert conf.joinpath("train.yaml").is_file()
    groups = {p.name for p in (ROOT / "conf").iterdir() if p.is_dir() and p.name != "__pycache__"}
    for group in groups:
        assert conf.joinpath(group).is_dir(), group
    yaml = sorted(str(p.relative_to(ROOT / "conf")) for p in (ROOT / "conf").rglob("*.yaml"))
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["medtrain.conf"]
    deepest = max(len(Path(p).parts) for p in yaml)
    assert deepest <= max(len(Path(p).parts) for p in patterns)  # the globs reach every file


@pytest.mark.slow
def test_the_wheel_runs_outside_the_repository(tmp_path):
    """Build the wheel, unpack it into a folder of its own and run it from an unrelated folder:
    `medtrain` trains the default experiment (made small) and `medtrain predict` uses its run."""
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources.
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("medtrain", "conf"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("medtrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("medtrain/conf/") for n in names if n.startswith("medtrain/conf/")}
    for path in (ROOT / "conf").rglob("*.yaml"):
        assert str(path.relative_to(ROOT / "conf")) in shipped
    assert not any(n.startswith(("tests/", "conf/")) for n in names)
    for path in (ROOT / "medtrain" / "inference" / "static").iterdir():  # the service's web page
        assert f"medtrain/inference/static/{path.name}" in names
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The unpacked wheel first on the path: the editable install of the repository is not used.
    work = tmp_path / "work"
    work.mkdir()

    def python(*args: str) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [sys.executable, *args],
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(site)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout[-1000:] + done.stderr[-2000:]
        return done

    where = python("-c", "import medtrain.conf as c; print(c.__file__)").stdout
    assert where.strip().startswith(str(site))
    # Every shipped experiment composes from the installed package alone.
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    compose = (
        "import sys; from medtrain.engine.config import compose_config\n"
        "for name in sys.argv[1:]:\n"
        "    cfg = compose_config([f'experiment={name}'])\n"
        "    print(name, cfg.task._target_)\n"
    )
    composed = python("-c", compose, *experiments).stdout
    assert [line.split()[0] for line in composed.splitlines()] == experiments
    small = ["dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32"]
    small += ["trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu"]
    python("-m", "medtrain", *small, "hydra.run.dir=run")
    assert json.loads((work / "run" / "metrics.json").read_text())["test/auc"] > 0.5
    (work / "scans").mkdir()
    np.save(work / "scans" / "a.npy", np.random.default_rng(0).random((32, 32)).astype(np.float32))
    python("-m", "medtrain", "predict", "run_dir=run", "inputs=scans", "output=p.csv")
    assert (work / "p.csv").read_text().startswith("file,label,prob_normal,prob_lesion,error")
