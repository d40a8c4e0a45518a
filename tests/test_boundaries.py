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
CONFIG_PACKAGE = ROOT / "medfl" / "config"


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
    # medfl/config/ validates the name once.
    offenders = []
    for top in ("medfl", "server", "client", "deploy"):
        for path in (ROOT / top).rglob("*.py"):
            if TASK_PACKAGE in path.parents or CONFIG_PACKAGE in path.parents:
                continue
            offenders += [f"{path.relative_to(ROOT)}:{n}" for n in _task_branches(path)]
    assert offenders == []


def test_the_task_branch_check_sees_each_form(tmp_path):
    src = tmp_path / "x.py"
    src.write_text('a = cfg.task == "tabular"\nb = cfg.task in ("segmentation", "x")\n'
                   'c = kind(cfg) == "z"\nd = cfg.model == "unet"\ne = t is TaskName.TABULAR\n')
    assert _task_branches(src) == [1, 2, 3, 5]


# --- import cycles ---------------------------------------------------------------------------

#: Cycles that predate this check, each allowed only as it stands (a cycle may shrink or go,
#: never grow). The subgroup selectors are built per task in medfl/tasks while
#: medfl.evaluation.subgroups looks the task up inside a function.
KNOWN_CYCLES: tuple[frozenset[str], ...] = ()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return getattr(test, "id", getattr(test, "attr", None)) == "TYPE_CHECKING"


def _imported_names(tree: ast.AST, package: str) -> list[str]:
    """Every module name imported anywhere in ``tree`` (module level and inside functions),
    relative imports resolved against ``package``; ``from a import b`` gives ``a.b``, which
    the caller resolves to module ``a`` when ``b`` is not a module. Imports under ``if
    TYPE_CHECKING:`` are skipped: they never run."""
    names: list[str] = []
    skipped = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
               and _is_type_checking(node) for n in ast.walk(node)}
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            names += [f"{base}.{a.name}" for a in node.names]
    return names


def _import_graph(root: Path, top: str = "medfl") -> dict[str, set[str]]:
    """Module -> the modules of ``top`` it imports."""
    files = {_module_name(p, root): p for p in (root / top).rglob("*.py")}

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        targets = {resolve(n) for n in _imported_names(ast.parse(path.read_text()), package)}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                work.append((child, iter(sorted(graph[child]))))
            elif child in stack:
                low[node] = min(low[node], index[child])
    return found


def test_no_import_cycle_among_medfl_modules():
    cycles = _cycles(_import_graph(ROOT))
    new = [sorted(c) for c in cycles if not any(c <= known for known in KNOWN_CYCLES)]
    assert new == []


def test_the_cli_and_the_deployment_commands_do_not_import_each_other():
    graph = _import_graph(ROOT)
    assert "medfl.deployment.cli" in graph["medfl.cli"]
    assert not any({"medfl.cli", "medfl.deployment.cli"} & c for c in _cycles(graph))


def test_the_cycle_check_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "medfl"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from medfl.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nimport medfl.a\n"
                              "if TYPE_CHECKING:\n    from medfl import d\n")
    (pkg / "d.py").write_text("import medfl.c\n")
    graph = _import_graph(tmp_path)
    assert graph["medfl.sub.b"] == {"medfl.c"} and graph["medfl.c"] == {"medfl.a"}
    assert _cycles(graph) == [frozenset({"medfl.a", "medfl.sub.b", "medfl.c"})]
