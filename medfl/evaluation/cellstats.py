"""LEGACY: the k-suppressed report statistics of earlier versions, read by the server's
report code until it moves to the report release (:mod:`medfl.evaluation.release`).

No site produces these any more: a site's report is one Gaussian release over all cells
(:mod:`medfl.evaluation.report_cells`). Delete this module once nothing imports it.

Classification cells carried each class's sorted scores (logit scale) cut into *groups* of
at least ``k`` patients, each described by its size, mean and variance, plus whether the
whole group lies at or above the operating threshold (side 1), below it (side 0) or
straddles it (side -1); segmentation cells the sums and sums of squares of per-image Dice,
IoU and HD95."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medfl.evaluation.stats import SUPPRESSED
from medfl.wire import WireKeys

ABOVE, BELOW, MIXED = 1, 0, -1


@dataclass(frozen=True)
class Group:
    """``n`` (>= k) consecutive sorted logits of one class: their mean, variance and side."""

    cls: int
    n: int
    mean: float
    var: float
    side: int


@dataclass(frozen=True)
class CellStats:
    """One cell's shared statistics; ``None`` where suppressed."""

    n: int | None = None
    loss_sum: float | None = None
    brier_sum: float | None = None
    auroc: float | None = None
    groups: tuple[Group, ...] | None = None
    dice_sum: float | None = None
    dice_sqsum: float | None = None
    iou_sum: float | None = None
    iou_sqsum: float | None = None
    hd_n: int | None = None
    hd_sum: float | None = None
    hd_sqsum: float | None = None

    @property
    def suppressed(self) -> bool:
        """Whether the cell shares nothing (under ``k`` patients, or complementary)."""
        return self.n is None


@dataclass(frozen=True)
class ReportStats:
    """A site's report statistics: one ``CellStats`` per declared cell, plus an
    explanation vector (mean |SHAP| per feature, or a saliency grid) over ``explain_n``
    test cases (``None`` when under ``k`` or not computed)."""

    cells: tuple[CellStats, ...]
    explain: tuple[float, ...] = ()
    explain_n: int | None = None

    #: per-cell lists (cell 0 = whole test set, then each declared subgroup), the score
    #: groups (``g-*``, aligned), and the explanation vector with its count
    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("explain-n",),
        lists=("cell-n", "cell-loss-sum", "cell-brier-sum", "cell-auroc",
               "g-cell", "g-class", "g-n", "g-mean", "g-var", "g-side",
               "cell-dice-sum", "cell-dice-sqsum", "cell-iou-sum", "cell-iou-sqsum",
               "cell-hd-n", "cell-hd-sum", "cell-hd-sqsum", "explain"),
        counts=frozenset({"cell-n", "g-n", "cell-hd-n", "explain-n"}),
        fixed_length={"explain": "n_explain", **{f"cell-{x}": "n_cells" for x in (
            "n", "loss-sum", "brier-sum", "auroc", "dice-sum", "dice-sqsum", "iou-sum",
            "iou-sqsum", "hd-n", "hd-sum", "hd-sqsum")}},
    )

    # --- the wire --------------------------------------------------------------------

    def to_metrics(self) -> dict[str, float | list[float]]:
        """Flat numeric form for the wire: one list per field, suppressed values as
        ``SUPPRESSED``, the groups of every cell in parallel ``g-*`` lists."""
        def col(attr: str) -> list[float]:
            return [SUPPRESSED if getattr(c, attr) is None else float(getattr(c, attr))
                    for c in self.cells]

        groups = [(i, g) for i, c in enumerate(self.cells) for g in (c.groups or ())]
        out: dict[str, float | list[float]] = {
            "cell-n": col("n"), "cell-loss-sum": col("loss_sum"),
            "cell-brier-sum": col("brier_sum"), "cell-auroc": col("auroc"),
            "g-cell": [float(i) for i, _ in groups], "g-class": [float(g.cls) for _, g in groups],
            "g-n": [float(g.n) for _, g in groups], "g-mean": [g.mean for _, g in groups],
            "g-var": [g.var for _, g in groups], "g-side": [float(g.side) for _, g in groups],
            "explain": [float(v) for v in self.explain],
            "explain-n": SUPPRESSED if self.explain_n is None else float(self.explain_n),
        }
        if any(c.dice_sum is not None for c in self.cells):
            out.update({"cell-dice-sum": col("dice_sum"), "cell-dice-sqsum": col("dice_sqsum"),
                        "cell-iou-sum": col("iou_sum"),
                        "cell-iou-sqsum": col("iou_sqsum"), "cell-hd-n": col("hd_n"),
                        "cell-hd-sum": col("hd_sum"), "cell-hd-sqsum": col("hd_sqsum")})
        return out

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> ReportStats:
        """Parse :meth:`to_metrics`' form."""
        n_cells = len(m["cell-n"])

        def val(key: str, i: int) -> float | None:
            if key not in m:
                return None
            v = float(m[key][i])
            return None if v == SUPPRESSED else v

        def count(key: str, i: int) -> int | None:
            v = val(key, i)
            return None if v is None else int(v)

        by_cell: dict[int, list[Group]] = {}
        for c, k, n, mu, v, s in zip(m["g-cell"], m["g-class"], m["g-n"], m["g-mean"],
                                     m["g-var"], m["g-side"], strict=True):
            by_cell.setdefault(int(c), []).append(
                Group(int(k), int(n), float(mu), float(v), int(s)))
        cells = tuple(
            CellStats(n=count("cell-n", i), loss_sum=val("cell-loss-sum", i),
                      brier_sum=val("cell-brier-sum", i), auroc=val("cell-auroc", i),
                      groups=tuple(by_cell[i]) if i in by_cell else None,
                      dice_sum=val("cell-dice-sum", i), dice_sqsum=val("cell-dice-sqsum", i),
                      iou_sum=val("cell-iou-sum", i),
                      iou_sqsum=val("cell-iou-sqsum", i), hd_n=count("cell-hd-n", i),
                      hd_sum=val("cell-hd-sum", i), hd_sqsum=val("cell-hd-sqsum", i))
            for i in range(n_cells))
        en = float(m.get("explain-n", SUPPRESSED))
        return cls(cells, tuple(float(v) for v in m.get("explain", [])),
                   None if en == SUPPRESSED else int(en))


# kept while the server's population tests build score groups with it
def class_groups(logits: np.ndarray, *, cls: int, cut: float, k: int,
                 split: bool = True) -> list[Group]:
    """One class's sorted ``logits`` cut into groups of at least ``k``; with ``split`` and
    both sides of ``cut`` (the operating threshold on the logit scale) holding ``k`` or
    more, no group straddles the threshold."""
    s = np.sort(np.asarray(logits, dtype=np.float64))
    below, above = s[s < cut], s[s >= cut]
    parts = [below, above] if split and min(len(below), len(above)) >= k else [s]
    out = []
    for part in parts:
        for g in np.array_split(part, len(part) // k):
            side = ABOVE if g[0] >= cut else (BELOW if g[-1] < cut else MIXED)
            out.append(Group(cls, len(g), float(g.mean()), float(g.var()), side))
    return out
