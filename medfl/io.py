"""Atomic file writes: a crash mid-write never leaves a half-written file behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medfl.errors import ConfigError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """UTF-8 text, written atomically (see :func:`atomic_write_bytes`)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    """Strict JSON (no NaN/Infinity: callers encode those explicitly), indented, sorted."""
    text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


def append_jsonl(path: Path, obj: Any) -> None:
    """Append one JSON line; the line is written with a single ``write`` call."""
    line = json.dumps(obj, sort_keys=True, allow_nan=False) + "\n"
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line)
        fh.flush()
        os.fsync(fh.fileno())


def publish_dataset(out_dir: Path, key: str, render: Callable[[Path], None], *,
                    holds: Callable[[Path, str], bool]) -> None:
    """Render a generated dataset into a temporary sibling of ``out_dir``, then rename it
    into place, so a reader never sees a half-written folder.

    ``render(tmp)`` writes the files; ``holds(folder, key)`` tells whether a folder already
    holds this dataset (a concurrent generator with the same parameters may win the race,
    and its copy is then used).
    """
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        render(tmp)
        try:
            # A directory replaces only a missing or empty one: a non-empty target fails.
            os.replace(tmp, out_dir)
        except OSError:
            if not holds(out_dir, key):
                raise ConfigError(
                    f"the synthetic data folder exists and is not empty or a dataset with key "
                    f"{key}; remove it or choose another folder") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
