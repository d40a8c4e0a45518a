"""Import boundaries: only medfl.federation speaks Flower; no web code in medfl."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

FLOWER_ADAPTER = ROOT / "medfl" / "federation"


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_adapter_package_imports_flwr_and_none_imports_fastapi():
    offenders = []
    for path in (ROOT / "medfl").rglob("*.py"):
        imported = _imports(path)
        if "fastapi" in imported or ("flwr" in imported and FLOWER_ADAPTER not in path.parents):
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def test_apps_are_thin():
    for app in (ROOT / "server" / "app.py", ROOT / "client" / "app.py"):
        assert len(app.read_text().splitlines()) < 120, app
        assert "sklearn" not in _imports(app) and "opacus" not in _imports(app)


def test_localsim_needs_only_the_standard_library():
    # The Makefile runs it with the system Python before .venv exists.
    assert _imports(ROOT / "medfl" / "localsim.py") <= {
        "__future__", "os", "signal", "socket", "sys", "time", "zlib", "pathlib"}


TASK_PACKAGE = ROOT / "medfl" / "tasks"


def _task_branches(path: Path) -> list[int]:
    """Lines comparing a task: ``x.task == ...``, ``x.task in (...)``, ``TaskName.X``
    against something, or a ``kind(...)`` helper's result."""
    def names_a_task(node: ast.AST) -> bool:
        if isinstance(node, ast.Attribute) and node.attr == "task":
            return True
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "TaskName":
            return True
        return isinstance(node, ast.Call) and getattr(node.func, "attr",
                                                       getattr(node.func, "id", "")) == "kind"

    return [node.lineno for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Compare)
            and any(names_a_task(x) for x in (node.left, *node.comparators))]


def test_no_branch_on_a_task_name_outside_the_tasks_package():
    # What differs between tasks lives in medfl/tasks/ (one class per task, one lookup);
    # config.py validates the name once.
    offenders = []
    for top in ("medfl", "server", "client", "deploy"):
        for path in (ROOT / top).rglob("*.py"):
            if TASK_PACKAGE in path.parents or path == ROOT / "medfl" / "config.py":
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n in _task_branches(path)]
    assert offenders == []


def test_the_task_branch_check_sees_each_form(tmp_path):
    src = tmp_path / "x.py"
    src.write_text('a = cfg.task == "tabular"\nb = cfg.task in ("segmentation", "x")\n'
                   'c = kind(cfg) == "z"\nd = cfg.model == "unet"\ne = t is TaskName.TABULAR\n')
    assert _task_branches(src) == [1, 2, 3, 5]
