"""Shared helpers of the benchmarks: mean ± sd, and rewriting one section of BENCHMARKS.md."""

from __future__ import annotations

import statistics
from pathlib import Path


def mean_sd(values: list[float]) -> str:
    """``values``' mean ± sample standard deviation, three decimals."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def write_section(path: Path, name: str, *, heading: str, intro: str, columns: list[str],
                  rows: list[tuple[str, ...]]) -> None:
    """Replace the table between ``<!-- name:begin -->`` and ``<!-- name:end -->`` in
    ``path`` (appending it under ``heading`` the first time); the rest is left intact."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    block = "\n".join([
        begin, intro, "",
        f"| {' | '.join(columns)} |", f"| {' | '.join('---' for _ in columns)} |",
        *[f"| {' | '.join(r)} |" for r in rows],
        end,
    ])
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin in text:
        text = text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n## {heading}\n\n" + block + "\n"
    path.write_text(text)
    print(f"wrote {path}")
