"""The final evaluation a site shares for the report: per cell (whole test set and each
subgroup), suppressed at ``k``.

Classification cells carry each class's sorted scores (logit scale) cut into *groups* of
at least ``k`` patients, each described by its size, mean and variance, plus whether the
whole group lies at or above the operating threshold (side 1), below it (side 0) or
straddles it (side -1). Groups are cut at the threshold whenever both sides of a class hold
at least ``k`` patients, so the confusion counts are then exact; otherwise one group
straddles it and the server estimates that group's split. Every shared number aggregates at
least ``k`` patients of one class. Beside the groups a cell carries its summed log-loss and
Brier score and its exact AUROC.

Suppression, at the site, before anything leaves:

- a cell under ``k`` patients shares nothing but the fact that it is suppressed;
- a cell with a class under ``k`` shares its size and sums but no groups and no AUROC;
- *complementary suppression*: an attribute's levels share sizes only if every level has
  at least ``k`` patients, and groups only if every level has both classes at ``k`` or
  more; otherwise a suppressed level could be recovered as the whole minus the others.

Segmentation cells carry the sums and sums of squares of per-image Dice and IoU (MONAI)
and of the 95th-percentile Hausdorff distance over images where it is defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medfl.evaluation.stats import SUPPRESSED, per_image_overlap
from medfl.evaluation.subgroups import Cell, attributes

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
        return self.n is None


@dataclass(frozen=True)
class ReportStats:
    """A site's report statistics: one ``CellStats`` per declared cell, plus an
    explanation vector (mean |SHAP| per feature, or a saliency grid) over ``explain_n``
    test cases (``None`` when under ``k`` or not computed)."""

    cells: tuple[CellStats, ...]
    explain: tuple[float, ...] = ()
    explain_n: int | None = None
    extra: dict = field(default_factory=dict)

    # --- the wire --------------------------------------------------------------------

    def to_metrics(self) -> dict[str, float | list[float]]:
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
    def from_metrics(cls, m: dict) -> ReportStats:
        n_cells = len(m["cell-n"])

        def val(key: str, i: int, as_int: bool = False) -> float | int | None:
            if key not in m:
                return None
            v = float(m[key][i])
            return None if v == SUPPRESSED else (int(v) if as_int else v)

        by_cell: dict[int, list[Group]] = {}
        for c, k, n, mu, v, s in zip(m["g-cell"], m["g-class"], m["g-n"], m["g-mean"],
                                     m["g-var"], m["g-side"], strict=True):
            by_cell.setdefault(int(c), []).append(
                Group(int(k), int(n), float(mu), float(v), int(s)))
        cells = tuple(
            CellStats(n=val("cell-n", i, True), loss_sum=val("cell-loss-sum", i),
                      brier_sum=val("cell-brier-sum", i), auroc=val("cell-auroc", i),
                      groups=tuple(by_cell[i]) if i in by_cell else None,
                      dice_sum=val("cell-dice-sum", i), dice_sqsum=val("cell-dice-sqsum", i),
                      iou_sum=val("cell-iou-sum", i),
                      iou_sqsum=val("cell-iou-sqsum", i), hd_n=val("cell-hd-n", i, True),
                      hd_sum=val("cell-hd-sum", i), hd_sqsum=val("cell-hd-sqsum", i))
            for i in range(n_cells))
        en = float(m.get("explain-n", SUPPRESSED))
        return cls(cells, tuple(float(v) for v in m.get("explain", [])),
                   None if en == SUPPRESSED else int(en))


# --- classification ------------------------------------------------------------------

def class_groups(logits: np.ndarray, *, cls: int, cut: float, k: int) -> list[Group]:
    """One class's sorted ``logits`` cut into groups of at least ``k``, split at ``cut``
    (the operating threshold on the logit scale) when both sides hold ``k`` or more."""
    s = np.sort(np.asarray(logits, dtype=np.float64))
    below, above = s[s < cut], s[s >= cut]
    parts = [below, above] if min(len(below), len(above)) >= k else [s]
    out = []
    for part in parts:
        for g in np.array_split(part, len(part) // k):
            side = ABOVE if g[0] >= cut else (BELOW if g[-1] < cut else MIXED)
            out.append(Group(cls, len(g), float(g.mean()), float(g.var()), side))
    return out


def _classification_cell(y: np.ndarray, p: np.ndarray, *, threshold: float,
                         k: int) -> CellStats:
    n = len(y)
    if n < k:
        return CellStats()
    p = np.clip(p, 1e-12, 1 - 1e-12)
    loss_sum = float(-np.sum(y * np.log(p) + (1 - y) * np.log(1 - p)))
    brier_sum = float(np.sum((p - y) ** 2))
    base = CellStats(n=n, loss_sum=loss_sum, brier_sum=brier_sum)
    if min(int(y.sum()), n - int(y.sum())) < k:
        return base
    logits = np.log(p) - np.log1p(-p)
    cut = math.log(threshold) - math.log1p(-threshold)
    groups = (class_groups(logits[y == 0], cls=0, cut=cut, k=k)
              + class_groups(logits[y == 1], cls=1, cut=cut, k=k))
    return replace(base, auroc=float(roc_auc_score(y, p)), groups=tuple(groups))


def _complementary(cells: list[CellStats], cell_list: list[Cell], *, k: int,
                   class_ok: list[bool]) -> list[CellStats]:
    """Apply complementary suppression attribute by attribute (see module docstring).

    ``class_ok[i]``: cell ``i``'s finer statistics (class groups; segmentation: HD95 over
    images where it is defined) describe at least ``k`` patients each."""
    out = list(cells)
    for idx in attributes(cell_list).values():
        if any(out[i].n is None for i in idx):
            for i in idx:
                out[i] = CellStats()
        elif not all(class_ok[i] for i in idx):
            for i in idx:
                out[i] = replace(out[i], auroc=None, groups=None, hd_n=None, hd_sum=None,
                                 hd_sqsum=None)
    return out


def classification_report(y: np.ndarray, p: np.ndarray, sensitive: pd.DataFrame,
                          cell_list: list[Cell], *, threshold: float, k: int) -> list[CellStats]:
    """Per-cell statistics of binary labels ``y`` (n,) and probabilities ``p`` (n,)."""
    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    cells, class_ok = [], []
    for cell in cell_list:
        sel = cell.select(sensitive)
        cells.append(_classification_cell(y[sel], p[sel], threshold=threshold, k=k))
        n_pos = int(y[sel].sum())
        class_ok.append(min(n_pos, int(sel.sum()) - n_pos) >= k)
    return _complementary(cells, cell_list, k=k, class_ok=class_ok)


# --- segmentation --------------------------------------------------------------------

def per_image_segmentation(masks: np.ndarray, probs: np.ndarray, *,
                           threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-image Dice, IoU (MONAI, foreground; an empty prediction of an empty mask scores
    1) and 95th-percentile Hausdorff distance in pixels (NaN where either is empty)."""
    import torch
    from monai.metrics import HausdorffDistanceMetric

    dice, iou = per_image_overlap(masks, probs, threshold=threshold)
    pred = torch.as_tensor(np.asarray(probs) >= threshold, dtype=torch.float32)
    truth = torch.as_tensor(np.asarray(masks) > 0.5, dtype=torch.float32)
    empty = (pred.flatten(1).sum(1) == 0) | (truth.flatten(1).sum(1) == 0)
    hd = np.full(len(dice), np.nan)
    if (~empty).any():
        keep = ~empty
        hd[keep.numpy()] = HausdorffDistanceMetric(
            include_background=True, percentile=95, reduction="none")(
            pred[keep], truth[keep]).reshape(-1).double().numpy()
    return dice, iou, hd


def segmentation_report(dice: np.ndarray, iou: np.ndarray, hd: np.ndarray,
                        sensitive: pd.DataFrame, cell_list: list[Cell], *,
                        k: int) -> list[CellStats]:
    """Per-cell sums of per-image Dice, IoU and HD95 (see :func:`per_image_segmentation`)."""
    cells, ok = [], []
    for cell in cell_list:
        sel = cell.select(sensitive)
        d, j, h = dice[sel], iou[sel], hd[sel]
        h = h[np.isfinite(h)]
        if len(d) < k:
            cells.append(CellStats())
            ok.append(False)
        else:
            hd_ok = len(h) >= k
            ok.append(hd_ok)
            cells.append(CellStats(
                n=len(d), dice_sum=float(d.sum()), dice_sqsum=float(np.square(d).sum()),
                iou_sum=float(j.sum()), iou_sqsum=float(np.square(j).sum()),
                hd_n=len(h) if hd_ok else None,
                hd_sum=float(h.sum()) if hd_ok else None,
                hd_sqsum=float(np.square(h).sum()) if hd_ok else None))
    return _complementary(cells, cell_list, k=k, class_ok=ok)
