"""One encoder for training and serving: raw tabular columns -> the model's features.

The encoding is heart-disease's: numeric, then binary, then one-hot categorical with the
first level dropped. Training encodes with a :class:`~medfl.data.tabular_schema.TabularSchema`,
serving with a bundle's ``input_schema["columns"]``; both reach :func:`encode_columns`.
Error messages name the line and column, never a cell's value.

The cells are read with plain Python and numpy, one column at a time: no pandas Series is
built per column, so one served record costs microseconds, and a site's CSV of tens of
thousands of rows a few tens of milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from medfl.errors import DataError

__all__ = ["FEATURE_TYPES", "MISSING", "MISSING_MODES", "column_cells", "encode_columns",
           "feature_names", "missing_mode"]

FEATURE_TYPES = ("numeric", "binary", "categorical")
#: Cells read as a missing value (case-insensitive, after stripping blanks).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})
#: How a feature's missing cells are handled (see :mod:`medfl.data.tabular_schema`).
MISSING_MODES = ("refuse", "impute", "level")

#: Raw columns by name (each a sequence of cells, one per row), as :func:`encode_columns`
#: reads them: a DataFrame, or a plain mapping (a served request's records).
Table: TypeAlias = pd.DataFrame | Mapping[str, Sequence[Any]]


def _by_type(columns: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    return {t: [c for c in columns if c["type"] == t] for t in FEATURE_TYPES}


def missing_mode(column: dict[str, Any]) -> str:
    """A column's declared handling of missing cells: ``refuse`` (default), ``impute``
    or ``level``."""
    return str(column.get("missing", "refuse"))


def feature_names(columns: list[dict[str, Any]]) -> tuple[str, ...]:
    """Encoded feature names of input ``columns``: numeric, binary, one-hot categorical
    (a ``missing: level`` column's missing level last, ``<name>_missing``), then the
    missing indicators of ``missing: impute`` columns with ``indicator`` (``<name>_missing``).
    """
    by = _by_type(columns)
    one_hot = []
    for c in by["categorical"]:
        one_hot += [f"{c['name']}_{lvl}" for lvl in c["levels"][1:]]
        if missing_mode(c) == "level":
            one_hot.append(f"{c['name']}_missing")
    return (*(c["name"] for c in by["numeric"] + by["binary"]), *one_hot,
            *(f"{c['name']}_missing" for c in by["numeric"] + by["binary"]
              if c.get("indicator")))


def _is_missing(cell: Any) -> bool:
    if cell is None:
        return True
    if isinstance(cell, float):
        return math.isnan(cell)
    return isinstance(cell, str) and cell.strip().lower() in MISSING


def _number(cell: Any) -> float:
    """A cell as a float (``nan`` when it is not a number); ``inf`` stays ``inf``."""
    if isinstance(cell, bool):
        return math.nan
    if isinstance(cell, (int, float, np.integer, np.floating)):
        try:
            return float(cell)
        except OverflowError:  # an int too large for a float
            return math.nan
    text = str(cell).strip()
    if "_" in text:  # float() reads "1_000" as 1000; a CSV number has no separators
        return math.nan
    try:
        return float(text)
    except ValueError:
        return math.nan


def _cells(cells: Sequence[Any], lines: Sequence[Any], name: str, *,
           numbers: bool) -> np.ndarray:
    """Column ``name``'s ``cells`` as stripped text (object array) or (``numbers``) finite
    float64, shape (n,); ``DataError`` names the first line with a missing or bad cell."""
    missing = [_is_missing(c) for c in cells]
    if any(missing):
        raise DataError(f"line {lines[missing.index(True)]}, column {name!r}: missing value "
                        "(every feature, label and sensitive cell must be filled)")
    if not numbers:
        return np.array([c.strip() if isinstance(c, str) else str(c) for c in cells],
                        dtype=object)
    values = np.fromiter((_number(c) for c in cells), dtype=np.float64, count=len(cells))
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"line {lines[int(bad.argmax())]}, column {name!r}: not a finite "
                        "number")
    return values


def _column(table: Table, name: str) -> Sequence[Any]:
    if isinstance(table, pd.DataFrame):
        return table[name].to_numpy(dtype=object)
    return table[name]


def _lines(table: Table, lines: Sequence[Any] | None, n: int) -> Sequence[Any]:
    if lines is not None:
        return lines
    return list(table.index) if isinstance(table, pd.DataFrame) else range(n)


def column_cells(frame: pd.DataFrame, name: str, *, numbers: bool) -> np.ndarray:
    """Column ``name``'s cells, stripped text or (``numbers``) finite float64, shape (n,).

    Raises ``DataError`` naming the first line (``frame.index``) with a missing cell, or a
    cell that is not a finite number when ``numbers``.
    """
    return _cells(_column(frame, name), frame.index, name, numbers=numbers)


def _values(cells: Sequence[Any], rows: Sequence[Any], col: dict[str, Any]
            ) -> tuple[np.ndarray, np.ndarray]:
    """A numeric or binary column's finite float64 values, with its missing cells ``nan``
    (or the column's ``impute`` value) where it declares them, and the missing mask."""
    name = col["name"]
    if missing_mode(col) == "refuse":  # _cells refuses a missing cell, naming its line
        values = _cells(cells, rows, name, numbers=True)
        missing = np.zeros(len(values), dtype=bool)
    else:
        missing = np.fromiter((_is_missing(c) for c in cells), dtype=bool, count=len(cells))
        values = np.full(len(cells), float(col.get("impute", math.nan)))
        at = np.flatnonzero(~missing).tolist()
        values[at] = _cells([cells[i] for i in at], [rows[i] for i in at], name, numbers=True)
    lo, hi = col["bounds"] if col["type"] == "numeric" else (0, 1)
    bad = ~missing & ((values < lo) | (values > hi) if col["type"] == "numeric"
                      else (values != 0) & (values != 1))
    if bad.any():
        valid = f"between {lo} and {hi}" if col["type"] == "numeric" else "0 or 1"
        raise DataError(f"line {rows[int(bad.argmax())]}, column {name!r}: value must be "
                        f"{valid}")
    return values, missing


def _one_hot(cells: Sequence[Any], rows: Sequence[Any], col: dict[str, Any]) -> np.ndarray:
    """A categorical column's one-hot block (first level dropped; a ``missing: level``
    column's missing cells in a last column of their own)."""
    levels, name = list(col["levels"]), col["name"]
    numbers = not isinstance(levels[0], str)
    missing = np.zeros(len(cells), dtype=bool)
    if missing_mode(col) == "level":
        missing = np.fromiter((_is_missing(c) for c in cells), dtype=bool, count=len(cells))
    at = np.flatnonzero(~missing).tolist()
    v = np.full(len(cells), math.nan if numbers else "", dtype=np.float64 if numbers else object)
    v[at] = _cells([cells[i] for i in at], [rows[i] for i in at], name, numbers=numbers)
    bad = ~missing & ~np.isin(v, levels)
    if bad.any():
        raise DataError(f"line {rows[int(bad.argmax())]}, column {name!r}: value outside its "
                        f"levels {levels}")
    block = [v == lvl for lvl in levels[1:]] + ([missing] if missing_mode(col) == "level"
                                                else [])
    return np.stack(block, axis=1).astype(np.float64)


def encode_columns(table: Table, columns: list[dict[str, Any]], *,
                   lines: Sequence[Any] | None = None) -> np.ndarray:
    """Map raw input columns to the model's unscaled feature matrix.

    Parameters
    ----------
    table : one row per patient, as a DataFrame or a mapping of column name to cells;
        cells may be numbers or text (a CSV read as text).
    columns : ``input_schema["columns"]``: dicts with ``name``, ``type`` and ``bounds``
        (numeric) or ``levels`` (binary, categorical); optionally ``missing`` (``refuse``,
        the default; ``impute`` with ``impute``, the value, and ``indicator``; ``level``)
        as :mod:`medfl.data.tabular_schema` declares.
    lines : the rows' labels in error messages (line numbers); default the frame's index,
        or 0, 1, ... for a mapping.

    Returns
    -------
    array of shape (n, len(feature_names(columns))), float32, in that order. A missing
    cell of an ``impute`` column without an ``impute`` value (a site's rows before the
    consortium's value arrives) is ``nan``; the standardiser fills it.

    Raises ``DataError`` naming the line and column, and what would be valid, for a
    missing column or cell, a value outside the bounds or levels; never the value itself.
    """
    expected = [c["name"] for c in columns]
    present = set(table.columns) if isinstance(table, pd.DataFrame) else set(table)
    absent = [c for c in expected if c not in present]
    if absent:
        raise DataError(f"missing input columns {absent}; expected {expected}")
    n = len(_column(table, expected[0])) if expected else 0
    rows = _lines(table, lines, n)
    by = _by_type(columns)
    parts, indicators = [np.zeros((n, 0))], []
    for col in by["numeric"] + by["binary"]:
        values, missing = _values(_column(table, col["name"]), rows, col)
        parts.append(values[:, None])
        if col.get("indicator"):
            indicators.append(missing[:, None].astype(np.float64))
    for col in by["categorical"]:
        parts.append(_one_hot(_column(table, col["name"]), rows, col))
    return np.concatenate(parts + indicators, axis=1).astype(np.float32)
