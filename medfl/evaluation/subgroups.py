"""The subgroups a run reports on: public definitions over a site's sensitive attributes.

Cells are declared by the task (not discovered in the data), so the server and every site
agree on them without a site revealing which values it holds. Cell 0 is the whole test
set; then, attribute by attribute, one cell per level. The first level of an attribute is
the reference its fairness gaps are measured against.

| task | attribute | levels |
| --- | --- | --- |
| heart-disease | sex (UCI coding 1 = male) | male, female |
| heart-disease | age band (years) | under 55, 55 and over |
| imaging (synthetic or a manifest with ``sex`` / ``age``) | sex (M/F) | male, female |
| imaging | age band | under 65, 65 and over |
| tabular | declared in the schema's ``sensitive`` entries with ``levels`` or ``cuts`` | |
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

ALL = "all"


@dataclass(frozen=True)
class Cell:
    """One evaluation cell: ``attribute`` = ``level`` (or the whole test set)."""

    attribute: str
    level: str
    #: the sensitive-attribute frame -> boolean mask of the rows in this cell
    select: Callable[[pd.DataFrame], np.ndarray]

    @property
    def is_all(self) -> bool:
        """Whether this is cell 0, the whole test set."""
        return self.attribute == ALL


def _everyone(frame: pd.DataFrame) -> np.ndarray:
    return np.ones(len(frame), dtype=bool)


def _where(column: str, test: Callable[[pd.Series], object]) -> Callable[[pd.DataFrame],
                                                                          np.ndarray]:
    """A cell's selector: ``test`` on ``column``; no row is selected when the site's data
    lacks the column (its cells are then empty, hence suppressed)."""
    def select(frame: pd.DataFrame) -> np.ndarray:
        if column not in frame.columns:
            return np.zeros(len(frame), dtype=bool)
        with np.errstate(invalid="ignore"):
            return np.asarray(test(frame[column]), dtype=bool)
    return select


def _numbers(col: pd.Series) -> np.ndarray:
    return pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)


def sex_cells(male: tuple, female: tuple) -> list[Cell]:
    """Cells ``sex = male`` and ``sex = female``, matching the given codes."""
    def pick(values: tuple) -> Callable[[pd.DataFrame], np.ndarray]:
        wanted = [str(v).upper() for v in values]
        return _where("sex", lambda c: c.astype(str).str.strip().str.upper().isin(wanted))

    return [Cell("sex", "male", pick(male)), Cell("sex", "female", pick(female))]


def _same(col: pd.Series, level: object) -> np.ndarray:
    """Cells equal to a declared level: numerically when the level is a number (a CSV's
    "1.0" matches a level 1), as trimmed text otherwise."""
    if isinstance(level, (int, float)) and not isinstance(level, bool):
        return _numbers(col) == float(level)
    return (col.astype(str).str.strip() == str(level)).to_numpy()


def level_cells(column: str, levels: list) -> list[Cell]:
    """One cell per declared level of ``column``."""
    def equals(level: object) -> Callable[[pd.Series], np.ndarray]:
        return lambda col: _same(col, level)

    return [Cell(column, str(lv), _where(column, equals(lv))) for lv in levels]


def cut_cells(column: str, cuts: list[float]) -> list[Cell]:
    """Bands between consecutive ``cuts`` (the first from -inf, the last to +inf)."""
    edges = [-np.inf, *sorted(float(c) for c in cuts), np.inf]

    def name(lo: float, hi: float) -> str:
        if lo == -np.inf:
            return f"under {hi:g}"
        return f"{lo:g} and over" if hi == np.inf else f"{lo:g} to under {hi:g}"

    def within(lo: float, hi: float) -> Callable[[pd.Series], np.ndarray]:
        return lambda col: (_numbers(col) >= lo) & (_numbers(col) < hi)

    return [Cell(f"{column} band", name(lo, hi), _where(column, within(lo, hi)))
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def whole_test_set() -> Cell:
    """Cell 0: every row of a site's test set."""
    return Cell(ALL, ALL, _everyone)


def attributes(cell_list: list[Cell]) -> dict[str, list[int]]:
    """Attribute -> indices of its cells, in declaration order (reference level first)."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(cell_list):
        if not c.is_all:
            out.setdefault(c.attribute, []).append(i)
    return out
