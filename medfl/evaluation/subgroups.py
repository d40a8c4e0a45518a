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

from medfl.config import RunConfig

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
        return self.attribute == ALL


def _everyone(frame: pd.DataFrame) -> np.ndarray:
    return np.ones(len(frame), dtype=bool)


def _column(frame: pd.DataFrame, name: str) -> pd.Series | None:
    return frame[name] if name in frame.columns else None


def _sex(male: tuple, female: tuple) -> list[Cell]:
    def pick(values: tuple) -> Callable[[pd.DataFrame], np.ndarray]:
        def select(frame: pd.DataFrame) -> np.ndarray:
            col = _column(frame, "sex")
            if col is None:
                return np.zeros(len(frame), dtype=bool)
            norm = col.astype(str).str.strip().str.upper()
            return norm.isin([str(v).upper() for v in values]).to_numpy()
        return select

    return [Cell("sex", "male", pick(male)), Cell("sex", "female", pick(female))]


def _age_band(cut: float, column: str = "age") -> list[Cell]:
    def band(lower: bool) -> Callable[[pd.DataFrame], np.ndarray]:
        def select(frame: pd.DataFrame) -> np.ndarray:
            col = _column(frame, column)
            if col is None:
                return np.zeros(len(frame), dtype=bool)
            age = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                return (age < cut) if lower else (age >= cut)
        return select

    c = f"{cut:g}"
    return [Cell(f"{column} band", f"under {c}", band(True)),
            Cell(f"{column} band", f"{c} and over", band(False))]


def _levels(column: str, levels: list) -> list[Cell]:
    def pick(level: object) -> Callable[[pd.DataFrame], np.ndarray]:
        def select(frame: pd.DataFrame) -> np.ndarray:
            col = _column(frame, column)
            if col is None:
                return np.zeros(len(frame), dtype=bool)
            return (col.astype(str).str.strip() == str(level)).to_numpy()
        return select

    return [Cell(column, str(lv), pick(lv)) for lv in levels]


def _cuts(column: str, cuts: list[float]) -> list[Cell]:
    edges = [-np.inf, *sorted(float(c) for c in cuts), np.inf]

    def between(lo: float, hi: float) -> Callable[[pd.DataFrame], np.ndarray]:
        def select(frame: pd.DataFrame) -> np.ndarray:
            col = _column(frame, column)
            if col is None:
                return np.zeros(len(frame), dtype=bool)
            v = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64)
            with np.errstate(invalid="ignore"):
                return (v >= lo) & (v < hi)
        return select

    def name(lo: float, hi: float) -> str:
        if lo == -np.inf:
            return f"under {hi:g}"
        return f"{lo:g} and over" if hi == np.inf else f"{lo:g} to under {hi:g}"

    return [Cell(f"{column} band", name(lo, hi), between(lo, hi))
            for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def cells(cfg: RunConfig) -> list[Cell]:
    """The run's evaluation cells, in wire order (cell 0 is the whole test set)."""
    out = [Cell(ALL, ALL, _everyone)]
    if cfg.task == "heart-disease":
        out += _sex(male=("1", "1.0"), female=("0", "0.0")) + _age_band(55)
    elif cfg.task in ("image-classification", "segmentation"):
        out += _sex(male=("M", "MALE"), female=("F", "FEMALE")) + _age_band(65)
    elif cfg.task == "tabular":
        from medfl import tasks

        for entry in tasks.tabular_schema(cfg).subgroups:
            if entry.levels:
                out += _levels(entry.name, list(entry.levels))
            elif entry.cuts:
                out += _cuts(entry.name, list(entry.cuts))
    return out


def attributes(cell_list: list[Cell]) -> dict[str, list[int]]:
    """Attribute -> indices of its cells, in declaration order (reference level first)."""
    out: dict[str, list[int]] = {}
    for i, c in enumerate(cell_list):
        if not c.is_all:
            out.setdefault(c.attribute, []).append(i)
    return out
