"""The shape of the package: no code outside `medtrain/tasks/` branches on a task's name, the layers
import downwards only, every module says what it is for, and the tests mirror the package."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "medtrain"
TASK_NAMES = {"classification", "regression", "segmentation"}
TASK_CLASSES = {"ClassificationTask", "RegressionTask", "SegmentationTask"}


def modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _names_a_task(node: ast.AST) -> bool:
    """A string constant (or a tuple, list or set of them) naming a task or a task class."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value in TASK_NAMES or any(c in node.value for c in TASK_CLASSES)
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_names_a_task(e) for e in node.elts)
    return False


def task_name_branches(source: str) -> list[str]:
    """Places in `source` that decide by a task's name: comparisons and membership tests against
    one, `startswith`/`endswith` of one, dispatch tables keyed by one, and lookups with one."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(_names_a_task(o) for o in operands):
                found.append(f"line {node.lineno}: comparison {ast.unparse(node)}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in ("startswith", "endswith") and any(
                _names_a_task(a) for a in node.args
            ):
                found.append(f"line {node.lineno}: {ast.unparse(node)}")
        elif isinstance(node, ast.Dict) and sum(_names_a_task(k) for k in node.keys if k) > 1:
            found.append(f"line {node.lineno}: a table keyed by task names")
        elif isinstance(node, ast.Subscript) and _names_a_task(node.slice):
            found.append(f"line {node.lineno}: lookup {ast.unparse(node)}")
    return found


def test_the_branch_finder_finds_branches():
    """The check below can fail: each way of deciding by a task's name is found."""
    code = """
if kind == "segmentation": pass
if task.name in ("classification", "regression"): pass
ok = target.endswith("ClassificationTask")
SECTIONS = {"classification": 1, "segmentation": 2}
x = SECTIONS["regression"]
"""
    assert len(task_name_branches(code)) == 5
    assert task_name_branches("name = 'classification'\nprint(task.name)\n") == []


# The map of release 0.1's config paths names the old task classes by path: it maps, never branches.
NAMES_OLD_PATHS = {"engine/legacy.py"}


def test_no_code_outside_the_tasks_package_branches_on_a_task_name():
    outside = [
        p
        for p in modules()
        if p.relative_to(PACKAGE).parts[0] != "tasks"
        and p.relative_to(PACKAGE).as_posix() not in NAMES_OLD_PATHS
    ]
    found = {
        str(p.relative_to(ROOT)): branches
        for p in outside
        if (branches := task_name_branches(p.read_text()))
    }
    assert found == {}


def imports_of(path: Path) -> set[str]:
    """The medtrain packages or top-level modules a module imports (`engine`, `io`, ...)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medtrain"):
            parts = node.module.split(".")
            found |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("medtrain.")}
    return found


# Each layer may import the layers below it (and itself). `analysis.report` and `analysis.gradcam`
# read finished runs (they rebuild the task and the model), so they sit with the engine.
LAYERS = [
    {"errors", "io", "values", "__version__"},
    {"data", "models", "losses", "metrics", "analysis"},
    {"tasks"},
    {"engine"},
    {"inference", "experiments"},
    {"commands"},
]
READS_RUNS = {"analysis/report.py", "analysis/gradcam.py"}


def layer(name: str) -> int:
    return next(k for k, members in enumerate(LAYERS) if name in members)


def test_layers_import_downwards():
    upward = []
    for path in modules():
        relative = path.relative_to(PACKAGE)
        if len(relative.parts) == 1:  # __init__, __main__, errors, io, values
            continue
        own = layer("engine") if relative.as_posix() in READS_RUNS else layer(relative.parts[0])
        for name in imports_of(path) - {relative.parts[0]}:
            if layer(name) > own:
                upward.append(f"{relative} imports medtrain.{name}")
    assert upward == []


def test_every_module_has_a_docstring():
    missing = [
        str(p.relative_to(ROOT))
        for p in modules()
        if not ast.get_docstring(ast.parse(p.read_text()))
    ]
    assert missing == []


def test_the_top_level_holds_packages_and_basics_only():
    files = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert files == ["__init__.py", "__main__.py", "errors.py", "io.py", "values.py"]


@pytest.mark.parametrize(
    "package", sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
)
def test_tests_mirror_the_package(package):
    assert (ROOT / "tests" / package).is_dir(), f"tests/{package}/ is missing"


def test_the_module_map_names_every_module():
    """docs/architecture.md's map has a line for every module, under its package's heading
    (`**engine/**` ...): ten were missing from it."""
    import re

    text = (ROOT / "docs" / "architecture.md").read_text()
    sections = dict(re.findall(r"\*\*(\w+)/\*\*(.*?)(?=\n\*\*|\Z)", text, flags=re.S))
    missing = []
    for path in modules():
        relative = path.relative_to(PACKAGE)
        if path.name in ("__init__.py", "__main__.py") or len(relative.parts) != 2:
            continue
        package = relative.parts[0]
        if f"`{path.name}`" not in sections.get(package, ""):
            missing.append(str(relative))
    assert missing == []
