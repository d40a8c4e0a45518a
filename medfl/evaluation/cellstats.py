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
from dataclasses import dataclass, replace
from typing import Any, ClassVar, cast

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from medfl.evaluation.stats import SUPPRESSED, per_image_overlap
from medfl.evaluation.subgroups import Cell, attributes
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


# --- classification ------------------------------------------------------------------

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


def _small(count: int, k: int) -> bool:
    """A count that would describe between 1 and k - 1 patients."""
    return 0 < count < k


def _attribute_rules(masks: list[np.ndarray], y: np.ndarray, above: np.ndarray,
                     cell_list: list[Cell], *, k: int) -> tuple[set[int], set[int], list[bool]]:
    """Complementary suppression, attribute by attribute.

    Returns the cells whose sizes are withheld, the cells whose class detail is withheld,
    and, per class, whether every released cell (and every attribute's remainder: rows
    in none of its levels) holds 0 or >= k patients on each side of the threshold, so that
    groups may be cut there everywhere (one decision for all cells: cutting some cells and
    not others would let the server subtract one cell's side from another's).
    """
    everyone = masks[0]
    hide_n, hide_detail = set(), set()
    for idx in attributes(cell_list).values():
        rest = everyone & ~np.logical_or.reduce([masks[i] for i in idx])
        sizes = [int(masks[i].sum()) for i in idx]
        if any(n < k for n in sizes) or _small(int(rest.sum()), k):
            hide_n.update(idx)
            continue
        per_class = [(int((y[m] == c).sum())) for m in [masks[i] for i in idx] for c in (0, 1)]
        rest_class = [int((y[rest] == c).sum()) for c in (0, 1)]
        if any(n < k for n in per_class) or any(_small(n, k) for n in rest_class):
            hide_detail.update(idx)
    shown = [i for i, m in enumerate(masks) if i not in hide_n | hide_detail
             and min(int((y[m] == 0).sum()), int((y[m] == 1).sum())) >= k]
    split = []
    for c in (0, 1):
        sides = [int(((y == c) & (above == side) & masks[i]).sum())
                 for i in shown for side in (True, False)]
        ok = all(n >= k for n in sides)
        for idx in attributes(cell_list).values():
            if set(idx) <= set(shown):
                rest = everyone & ~np.logical_or.reduce([masks[i] for i in idx])
                ok &= not any(_small(int(((y == c) & (above == side) & rest).sum()), k)
                              for side in (True, False))
        split.append(ok)
    return hide_n, hide_detail, split


def classification_report(y: np.ndarray, p: np.ndarray, sensitive: pd.DataFrame,
                          cell_list: list[Cell], *, threshold: float, k: int) -> list[CellStats]:
    """Per-cell statistics of binary labels ``y`` (n,) and probabilities ``p`` (n,), with
    the suppression rules of the module docstring applied."""
    y = np.asarray(y).astype(np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-12, 1 - 1e-12)
    logits = np.log(p) - np.log1p(-p)
    cut = math.log(threshold) - math.log1p(-threshold)
    masks = [np.asarray(c.select(sensitive), dtype=bool) for c in cell_list]
    hide_n, hide_detail, split = _attribute_rules(masks, y, logits >= cut, cell_list, k=k)
    out = []
    for i, sel in enumerate(masks):
        yc, pc, lc = y[sel], p[sel], logits[sel]
        n = len(yc)
        if n < k or i in hide_n:
            out.append(CellStats())
            continue
        base = CellStats(n=n, loss_sum=float(-np.sum(yc * np.log(pc) + (1 - yc) * np.log(1 - pc))),
                         brier_sum=float(np.sum((pc - yc) ** 2)))
        if min(int(yc.sum()), n - int(yc.sum())) < k or i in hide_detail:
            out.append(base)
            continue
        groups = [g for c in (0, 1)
                  for g in class_groups(lc[yc == c], cls=c, cut=cut, k=k, split=split[c])]
        out.append(replace(base, auroc=float(roc_auc_score(yc, pc)), groups=tuple(groups)))
    return out


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
        # reduction="none" returns one tensor (MONAI types the call as tensor-or-sequence)
        per_image = cast(torch.Tensor, HausdorffDistanceMetric(
            include_background=True, percentile=95, reduction="none")(pred[keep], truth[keep]))
        hd[keep.numpy()] = per_image.reshape(-1).double().numpy()
    return dice, iou, hd


def segmentation_report(dice: np.ndarray, iou: np.ndarray, hd: np.ndarray,
                        sensitive: pd.DataFrame, cell_list: list[Cell], *,
                        k: int) -> list[CellStats]:
    """Per-cell sums of per-image Dice, IoU and HD95 (see :func:`per_image_segmentation`).

    HD95 is shared only where both the images with a defined HD95 and those without
    (an empty mask) are 0 or at least ``k``; the same size rules as classification apply
    attribute by attribute, remainder included.
    """
    masks = [np.asarray(c.select(sensitive), dtype=bool) for c in cell_list]
    finite = np.isfinite(hd)

    def hd_ok(m: np.ndarray) -> bool:
        return int((m & finite).sum()) >= k and not _small(int((m & ~finite).sum()), k)

    hide_n, hide_hd = set(), set()
    for idx in attributes(cell_list).values():
        rest = masks[0] & ~np.logical_or.reduce([masks[i] for i in idx])
        if any(int(masks[i].sum()) < k for i in idx) or _small(int(rest.sum()), k):
            hide_n.update(idx)
        elif not all(hd_ok(masks[i]) for i in idx) or _small(int((rest & finite).sum()), k) \
                or _small(int((rest & ~finite).sum()), k):
            hide_hd.update(idx)
    out = []
    for i, sel in enumerate(masks):
        d, j, h = dice[sel], iou[sel], hd[sel & finite]
        if len(d) < k or i in hide_n:
            out.append(CellStats())
            continue
        show_hd = i not in hide_hd and hd_ok(sel)
        out.append(CellStats(
            n=len(d), dice_sum=float(d.sum()), dice_sqsum=float(np.square(d).sum()),
            iou_sum=float(j.sum()), iou_sqsum=float(np.square(j).sum()),
            hd_n=len(h) if show_hd else None, hd_sum=float(h.sum()) if show_hd else None,
            hd_sqsum=float(np.square(h).sum()) if show_hd else None))
    return out
