"""The commands in README.md and docs/ cannot go stale: every `medtrain` command of a ```bash block is
checked (training overrides compose; a verb's arguments are keys it takes; sweep specifications
parse), and the blocks marked `<!-- doc-test: run -->` are run, page by page, in a scratch folder,
with small-data overrides added to training commands so that they finish in seconds."""

from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from hydra._internal.utils import get_args_parser

from medtrain.commands import VERBS, main, verb_of
from medtrain.engine.config import compose_config
from medtrain.errors import ConfigError
from tests.conftest import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
RUN_MARK = "<!-- doc-test: run -->"
# Added to training commands of run-blocks: the built-in synthetic datasets all take these keys.
SMALL = [
    "dataset.num_train=64",
    "dataset.num_val=16",
    "dataset.num_test=16",
    "trainer.max_epochs=1",
    "trainer.progress=false",
]


@dataclass
class Block:
    page: Path
    line: int  # of the opening fence
    commands: list[str]  # logical lines (continuations joined), comments kept
    run: bool


def blocks(page: Path) -> list[Block]:
    """The ```bash blocks of a page, with whether the line before the fence marks them to run."""
    found, lines = [], page.read_text().splitlines()
    k = 0
    while k < len(lines):
        if lines[k].strip() in ("```bash", "```sh", "```shell"):
            previous = next((x.strip() for x in reversed(lines[:k]) if x.strip()), "")
            start, body = k, []
            k += 1
            while k < len(lines) and lines[k].strip() != "```":
                body.append(lines[k])
                k += 1
            joined = re.sub(r"\\\n\s*", " ", "\n".join(body))
            commands = [
                c for c in joined.splitlines() if c.strip() and not c.lstrip().startswith("#")
            ]
            found.append(Block(page, start + 1, commands, previous == RUN_MARK))
        k += 1
    return found


def medtrain_args(command: str) -> list[str] | None:
    """The arguments of a `medtrain` (or `python -m medtrain`) command line; None for others."""
    words = shlex.split(command, comments=True)
    if words[:1] == ["medtrain"]:
        return words[1:]
    if words[:3] == ["python", "-m", "medtrain"]:
        return words[3:]
    launcher = words[1:] if words[:1] == ["srun"] else words
    if launcher[:1] == ["torchrun"] and "medtrain" in launcher:  # torchrun [flags] -m medtrain
        k = launcher.index("medtrain")
        assert launcher[k - 1] == "-m", command
        return launcher[k + 1 :]
    return None


def first_values(overrides: list[str]) -> list[str]:
    """A grid's overrides (`a=1,2`, `b=choice(x,y)`, `c=range(1,3)`) with their first value."""
    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        match = re.fullmatch(r"(?:choice|range)\((.*)\)", value)
        if match:
            value = match.group(1)
        if sep and "," in value and not value.startswith(("[", "{", "'", '"')):
            value = value.split(",")[0]
        out.append(f"{key}{sep}{value}")
    return out


def check_training(args: list[str], where: str) -> None:
    parsed = get_args_parser().parse_args(args)
    if parsed.config_name is not None:  # a saved config: composed from the run folder
        return
    overrides = first_values(parsed.overrides) if parsed.multirun else parsed.overrides
    if parsed.config_dir:
        folder = Path(parsed.config_dir)
        folder = folder if folder.is_absolute() else ROOT / folder
        assert folder.is_dir(), f"{where}: --config-dir {parsed.config_dir} does not exist"
        overrides = [f"hydra.searchpath=[file://{folder}]", *overrides]
    try:
        compose_config(overrides)
    except ConfigError as err:
        pytest.fail(f"{where}: {err}")


def check_verb(verb: str, args: list[str], where: str) -> None:
    if verb == "train":
        check_training(args, where)
        return
    if any(a in ("-h", "--help", "help") for a in args):
        return
    module = importlib.import_module(f"medtrain.commands.{VERBS[verb][0]}")
    if verb == "sweep":
        from medtrain.experiments.sweep import parse_args

        try:
            sweep = parse_args(args)
        except ConfigError as err:
            pytest.fail(f"{where}: {err}")
        check_training([*sweep.overrides, *(p.override(p.values[0]) for p in sweep.params)], where)
        return
    if verb == "cv":
        from medtrain.experiments.cv import parse_args as parse_cv

        try:
            cv = parse_cv(args)
        except ConfigError as err:
            pytest.fail(f"{where}: {err}")
        check_training(cv.overrides, where)
        return
    if verb == "check-data":
        check_training([a for a in args if not a.startswith("check.")], where)
        args = [a.removeprefix("check.") for a in args if a.startswith("check.")]
    aliases = {"hydra.run.dir": "output"}
    for arg in args:
        key, sep, _ = arg.partition("=")
        assert sep, f"{where}: {arg!r} is not key=value"
        assert aliases.get(key, key) in module.DEFAULTS, (
            f"{where}: medtrain {verb} takes no {key!r}"
        )


def all_commands():
    for page in PAGES:
        for block in blocks(page):
            for command in block.commands:
                yield page, block, command


def test_the_pages_have_commands_and_run_blocks():
    pages = {page.relative_to(ROOT).as_posix() for page, _, _ in all_commands()}
    assert "README.md" in pages and len(pages) >= 5
    assert any(block.run for page in PAGES for block in blocks(page) if page.name == "README.md")


def test_no_page_shows_the_commands_of_release_0_1():
    """Only the upgrading page names them, beside today's."""
    stale = re.compile(r"python -m medtrain\.\w+")
    for page in PAGES:
        if page.name == "upgrading.md":
            continue
        for k, line in enumerate(page.read_text().splitlines(), 1):
            if stale.search(line) and "release 0.1" not in line:
                pytest.fail(f"{page.relative_to(ROOT)}:{k}: {line.strip()}")


@pytest.mark.parametrize(
    ("page", "line", "command"),
    [
        pytest.param(page, block.line, command, id=f"{page.relative_to(ROOT)}:{block.line}:{n}")
        for page in PAGES
        for block in blocks(page)
        for n, command in enumerate(block.commands)
        if medtrain_args(command) is not None
    ],
)
def test_every_medtrain_command_is_valid(page, line, command):
    args = medtrain_args(command)
    where = f"{page.relative_to(ROOT)}:{line}: {command}"
    try:
        verb, rest = verb_of(args)
    except SystemExit:
        pytest.fail(f"{where}: unknown verb")
    if verb != "help":
        check_verb(verb, rest, where)


def run(command: str, folder: Path) -> None:
    """Run one line of a run-block in `folder`: a medtrain command in this process (what the
    `medtrain` script calls, with small data for training), anything else with bash."""
    args = medtrain_args(command)
    if args is None:
        words = shlex.split(command)
        if words[0] == "python":  # this interpreter, where medtrain is installed
            command = shlex.join([sys.executable, *words[1:]])
        done = subprocess.run(["bash", "-c", command], cwd=folder, capture_output=True, text=True)
        assert done.returncode == 0, f"{command}\n{done.stdout[-1500:]}\n{done.stderr[-1500:]}"
        return
    verb, _ = verb_of(args)
    extra = SMALL if verb in ("train", "sweep") and "--help" not in args else []
    assert main([*args, *extra]) == 0, command


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in PAGES if any(b.run for b in blocks(p))], ids=lambda p: p.name
)
def test_run_blocks_run(page, tmp_path, monkeypatch):
    # The pages' commands name the repository's examples/ from the repository root.
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    monkeypatch.chdir(tmp_path)
    for block in blocks(page):
        if not block.run:
            continue
        for command in block.commands:
            run(command, tmp_path)
