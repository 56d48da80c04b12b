"""The wheel is medtrain whole: every package, and conf/ as `medtrain.conf`, so that an installed
medtrain (not the repository) trains the default experiment and predicts with its run."""

from __future__ import annotations

import importlib.resources
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

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
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path / "dist"), str(ROOT)],
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
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The unpacked wheel first on the path: the editable install of the repository is not used.
    env = {**os.environ, "PYTHONPATH": str(site)}
    work = tmp_path / "work"
    work.mkdir()
    where = subprocess.run(
        [sys.executable, "-c", "import medtrain.conf as c; print(c.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
    )
    assert where.stdout.strip().startswith(str(site)), where.stdout + where.stderr
    # Every shipped experiment composes from the installed package alone.
    experiments = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("*.yaml"))
    compose = (
        "import sys; from medtrain.engine.config import compose_config\n"
        "for name in sys.argv[1:]:\n"
        "    cfg = compose_config([f'experiment={name}'])\n"
        "    print(name, cfg.task._target_)\n"
    )
    composed = subprocess.run(
        [sys.executable, "-c", compose, *experiments],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert composed.returncode == 0, composed.stderr[-2000:]
    assert [line.split()[0] for line in composed.stdout.splitlines()] == experiments
    small = ["dataset.num_train=64", "dataset.num_val=32", "dataset.num_test=32"]
    small += ["trainer.max_epochs=1", "trainer.progress=false", "trainer.device=cpu"]
    train = subprocess.run(
        [sys.executable, "-m", "medtrain", *small, "hydra.run.dir=run"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert train.returncode == 0, train.stderr[-2000:]
    assert json.loads((work / "run" / "metrics.json").read_text())["test/auc"] > 0.5
    (work / "scans").mkdir()
    import numpy as np

    np.save(work / "scans" / "a.npy", np.random.default_rng(0).random((32, 32)).astype(np.float32))
    predict = subprocess.run(
        [
            sys.executable,
            "-m",
            "medtrain",
            "predict",
            "run_dir=run",
            "inputs=scans",
            "output=p.csv",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert predict.returncode == 0, predict.stderr[-2000:]
    assert (work / "p.csv").read_text().startswith("file,label,prob_normal,prob_lesion,error")
