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
