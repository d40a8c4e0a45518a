"""One encoder for training and serving: raw tabular columns -> the model's features.

The encoding is heart-disease's: numeric, then binary, then one-hot categorical with the
first level dropped. Training encodes with a :class:`~medfl.data.tabular_schema.TabularSchema`,
serving with a bundle's ``input_schema["columns"]``; both reach :func:`encode_columns`.
Error messages name the line and column, never a cell's value.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from medfl.errors import DataError

__all__ = ["FEATURE_TYPES", "MISSING", "column_cells", "encode_columns", "feature_names"]

FEATURE_TYPES = ("numeric", "binary", "categorical")
#: Cells read as a missing value (case-insensitive, after stripping blanks).
MISSING = frozenset({"", "na", "n/a", "nan", "null", "none", "?"})


def feature_names(columns: list[dict[str, Any]]) -> tuple[str, ...]:
    """Encoded feature names of input ``columns``: numeric, binary, then one-hot."""
    by = {t: [c for c in columns if c["type"] == t] for t in FEATURE_TYPES}
    return (*(c["name"] for c in by["numeric"] + by["binary"]),
            *(f"{c['name']}_{lvl}" for c in by["categorical"] for lvl in c["levels"][1:]))


def column_cells(frame: pd.DataFrame, name: str, *, numbers: bool) -> np.ndarray:
    """Column ``name``'s cells, stripped text or (``numbers``) finite float64, shape (n,).

    Raises ``DataError`` naming the first line (``frame.index``) with a missing cell, or a
    cell that is not a finite number when ``numbers``.
    """
    raw = frame[name]
    text = raw.astype(str).str.strip()
    missing = raw.isna().to_numpy() | text.str.lower().isin(MISSING).to_numpy()
    if missing.any():
        raise DataError(f"line {frame.index[missing.argmax()]}, column {name!r}: missing value "
                        "(every feature, label and sensitive cell must be filled)")
    if not numbers:
        return text.to_numpy()
    values = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        raise DataError(f"line {frame.index[bad.argmax()]}, column {name!r}: not a finite "
                        "number")
    return values


def encode_columns(frame: pd.DataFrame, columns: list[dict[str, Any]]) -> np.ndarray:
    """Map raw input columns to the model's unscaled feature matrix.

    Parameters
    ----------
    frame : one row per patient; cells may be numbers or text (a CSV read as text). Its
        index labels the rows in error messages (line numbers).
    columns : ``input_schema["columns"]``: dicts with ``name``, ``type`` and ``bounds``
        (numeric) or ``levels`` (binary, categorical).

    Returns
    -------
    array of shape (n, len(feature_names(columns))), float32, in that order.

    Raises ``DataError`` naming the line and column, and what would be valid, for a
    missing column or cell, a value outside the bounds or levels; never the value itself.
    """
    expected = [c["name"] for c in columns]
    missing = [c for c in expected if c not in frame.columns]
    if missing:
        raise DataError(f"missing input columns {missing}; expected {expected}")
    by = {t: [c for c in columns if c["type"] == t] for t in FEATURE_TYPES}
    parts = [np.zeros((len(frame), 0))]
    for col in by["numeric"] + by["binary"]:
        v = column_cells(frame, col["name"], numbers=True)
        lo, hi = col["bounds"] if col["type"] == "numeric" else (0, 1)
        bad = (v < lo) | (v > hi) if col["type"] == "numeric" else ~np.isin(v, (0, 1))
        if bad.any():
            valid = f"between {lo} and {hi}" if col["type"] == "numeric" else "0 or 1"
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value must be {valid}")
        parts.append(v[:, None])
    for col in by["categorical"]:
        levels = list(col["levels"])
        v = column_cells(frame, col["name"], numbers=not isinstance(levels[0], str))
        bad = ~np.isin(v, levels)
        if bad.any():
            raise DataError(f"line {frame.index[bad.argmax()]}, column {col['name']!r}: "
                            f"value outside its levels {levels}")
        parts.append(np.stack([v == lvl for lvl in levels[1:]], axis=1).astype(np.float64))
    return np.concatenate(parts, axis=1).astype(np.float32)
