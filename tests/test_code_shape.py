"""Code shape: functions short enough to read at once, files short enough to read in one
sitting (STYLE.md). ruff holds complexity and docstrings; this holds length."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from conftest import ROOT

#: Longest function or method, def line through last line (decorators not counted).
MAX_FUNCTION_LINES = 60
#: Longest library file; bench/ scripts are held to the function limit only.
MAX_FILE_LINES = 350

FUNCTION_DIRS = ("medfl", "server", "client", "deploy", "bench")
FILE_DIRS = ("medfl", "server", "client", "deploy")


def _python_files(*dirs: str, root: Path = ROOT) -> Iterator[Path]:
    for name in dirs:
        yield from sorted((root / name).rglob("*.py"))


def long_functions(path: Path, *, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``name:line (n lines)`` for each function or method in ``path`` over ``limit``
    lines; nested functions are measured on their own as well as inside their parent."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            # lineno is the def line itself: decorators sit above it.
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > limit:
                found.append(f"{node.name}:{node.lineno} ({length} lines)")
    return found


def file_lines(path: Path) -> int:
    """Lines in ``path``, as an editor numbers them."""
    return len(path.read_text().splitlines())


def test_no_function_is_longer_than_the_limit():
    offenders = [f"{path.relative_to(ROOT)}: {entry}"
                 for path in _python_files(*FUNCTION_DIRS)
                 for entry in long_functions(path)]
    assert not offenders, f"over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(offenders)


def test_no_library_file_is_longer_than_the_limit():
    offenders = [f"{path.relative_to(ROOT)} ({file_lines(path)} lines)"
                 for path in _python_files(*FILE_DIRS)
                 if file_lines(path) > MAX_FILE_LINES]
    assert not offenders, f"over {MAX_FILE_LINES} lines:\n" + "\n".join(offenders)


def _function_source(body_lines: int, *, decorators: int = 0, nested: bool = False) -> str:
    """A function whose def line plus body is ``body_lines + 1`` lines long."""
    lines = [f"@decorator_{i}" for i in range(decorators)]
    lines.append("def subject(x):")
    indent = "        " if nested else "    "
    if nested:
        lines.append("    def inner(y):")
        body_lines -= 1
    lines += [f"{indent}x = x + {i}" for i in range(body_lines - 1)]
    lines.append(f"{indent}return x")
    return "\n".join(lines) + "\n"


def test_the_checker_catches_a_61_line_function(tmp_path):
    path = tmp_path / "long.py"
    path.write_text("import os\n\n\n" + _function_source(60) + "\n\nX = 1\n")

    assert long_functions(path) == ["subject:4 (61 lines)"]


def test_the_checker_passes_60_lines_and_does_not_count_decorators(tmp_path):
    path = tmp_path / "ok.py"
    path.write_text(_function_source(59, decorators=3))

    assert long_functions(path) == []


def test_the_checker_measures_methods_and_nested_functions(tmp_path):
    method = "class C:\n" + "".join(f"    {line}\n" for line in
                                     _function_source(61).splitlines())
    (tmp_path / "method.py").write_text(method)
    (tmp_path / "nested.py").write_text(_function_source(62, nested=True))

    assert long_functions(tmp_path / "method.py") == ["subject:2 (62 lines)"]
    assert long_functions(tmp_path / "nested.py") == ["subject:1 (63 lines)",
                                                       "inner:2 (62 lines)"]


def test_file_lines_counts_what_an_editor_numbers(tmp_path):
    path = tmp_path / "f.py"
    path.write_text("a = 1\n" * (MAX_FILE_LINES + 1))

    assert file_lines(path) == MAX_FILE_LINES + 1
