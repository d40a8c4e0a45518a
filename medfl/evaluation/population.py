"""Server side: metrics, 95% confidence intervals and fairness gaps from the sites' cells.

Classification. Each shared score group (size ``n``, mean and variance of its logits, side
of the threshold) is expanded into ``n`` *pseudo-patients*: the group's mean plus its
standard deviation times ``n`` evenly spaced standard-normal quantiles (rescaled to the
group's exact mean and variance). A group wholly on one side of the threshold keeps its
exact mean; if its quantiles would cross the threshold they are shrunk toward the mean
just enough to stay on their side (the variance is then smaller than the group's). Metrics are
then computed on the pseudo-patients as on real ones; with every group on one side of the
threshold the confusion counts are exact, otherwise the straddling groups' split is an
estimate and the metric is marked ``estimated``. A single site's AUROC, Brier score and
log-loss are the site's exact values. CIs: percentile bootstrap (1,000 replicates,
resampling pseudo-patients within each site and class), shifted onto the exact value where
one is reported. Fairness gaps (comparison level minus reference level) get CIs from
independent bootstraps of the two subgroups; a gap is flagged when its CI excludes 0.

Segmentation. Dice, IoU and HD95 are means of per-image values, pooled from the sites'
sums; CIs are t-intervals from the sums of squares; the Dice gap uses Welch's standard error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm, rankdata
from scipy.stats import t as student_t
from sklearn.metrics import roc_curve

from medfl.evaluation.cellstats import ABOVE, BELOW, MIXED, CellStats, Group

B = 1000  # bootstrap replicates
ECE_BINS = 10
CLASSIFICATION = ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "brier", "ece")
SEGMENTATION = ("dice", "iou", "hd95")


def metric(value: float | None, ci: tuple[float, float] | None = None, *,
           suppressed: bool = False, estimated: bool = False) -> dict[str, Any]:
    """One reported figure (the report's ``M``)."""
    finite = value if value is not None and math.isfinite(value) else None
    ok = finite is not None
    return {"value": float(finite) if finite is not None else None,
            "ci": [float(ci[0]), float(ci[1])] if ok and ci is not None
            and all(math.isfinite(c) for c in ci) else None,
            "suppressed": suppressed, "estimated": estimated and ok}


def suppressed_metrics(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each of ``names`` as a suppressed figure."""
    return {m: metric(None, suppressed=True) for m in names}


# --- pseudo-patients ------------------------------------------------------------------

@dataclass(frozen=True)
class Pseudo:
    """Pseudo-patients of one population: logits, labels, and the stratum (site) index."""

    logits: np.ndarray
    y: np.ndarray
    stratum: np.ndarray
    mixed: tuple[bool, bool]  # a group of class 0 / class 1 straddles the threshold

    @property
    def n(self) -> int:
        """The number of pseudo-patients."""
        return len(self.y)


def expand(groups: list[tuple[int, Group]], *, cut: float) -> Pseudo:
    """Pseudo-patients from ``(stratum, group)`` pairs (see module docstring)."""
    logits, ys, strata = [], [], []
    for stratum, g in groups:
        z = norm.ppf((np.arange(g.n) + 0.5) / g.n)
        if g.n > 1:
            z = (z - z.mean()) / z.std()
        x = g.mean + math.sqrt(max(g.var, 0.0)) * z
        # A margin keeps the side after the round trip through the sigmoid.
        bound = cut + 1e-7 if g.side == ABOVE else cut - 1e-7
        if g.side == ABOVE and x.min() < bound:
            x = _shrink(x, g.mean, x.min(), bound)
        elif g.side == BELOW and x.max() > bound:
            x = _shrink(x, g.mean, x.max(), bound)
        logits.append(x)
        ys.append(np.full(g.n, g.cls))
        strata.append(np.full(g.n, stratum))

    def straddles(cls: int) -> bool:
        return any(g.side == MIXED for _, g in groups if g.cls == cls)

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return Pseudo(cat(logits, np.float64), cat(ys, np.int64), cat(strata, np.int64),
                  (straddles(0), straddles(1)))


def _shrink(x: np.ndarray, mean: float, extreme: float, bound: float) -> np.ndarray:
    """Scale ``x`` about ``mean`` so that ``extreme`` lands on ``bound`` (mean unchanged);
    a mean beyond the bound (rounding) collapses the group onto the bound."""
    if (bound - mean) * (extreme - mean) <= 0 or extreme == mean:
        return np.full_like(x, bound)
    return mean + (x - mean) * ((bound - mean) / (extreme - mean))


def _bootstrap_index(p: Pseudo, rng: np.random.Generator) -> np.ndarray:
    """(B, n) indices resampled within each (stratum, class): labels stay in place."""
    idx = np.empty((B, p.n), dtype=np.int64)
    for s in np.unique(p.stratum):
        for c in (0, 1):
            pos = np.flatnonzero((p.stratum == s) & (p.y == c))
            if len(pos):
                idx[:, pos] = pos[rng.integers(0, len(pos), size=(B, len(pos)))]
    return idx


def score_table(y: np.ndarray, prob: np.ndarray, *, threshold: float) -> dict[str, np.ndarray]:
    """Classification metrics of ``prob`` (R, n) against fixed labels ``y`` (n,), row-wise.

    Undefined ratios (e.g. PPV with no positive prediction) are NaN. ECE uses
    ``ECE_BINS`` equal-width bins; ``calibration`` is calibration-in-the-large (mean
    predicted risk minus observed rate).
    """
    prob = np.atleast_2d(prob)
    n1, n = int(y.sum()), len(y)
    n0 = n - n1
    ranks = rankdata(prob, axis=1)
    auroc = (ranks[:, y == 1].sum(1) - n1 * (n1 + 1) / 2) / (n1 * n0) if n1 and n0 \
        else np.full(len(prob), np.nan)
    pred = prob >= threshold
    tp = (pred & (y == 1)).sum(1).astype(float)
    fp = (pred & (y == 0)).sum(1).astype(float)
    fn, tn = n1 - tp, n0 - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"auroc": auroc, "accuracy": (tp + tn) / n, "sensitivity": tp / n1,
               "specificity": tn / n0, "ppv": tp / (tp + fp), "npv": tn / (tn + fn),
               "f1": 2 * tp / (2 * tp + fp + fn), "brier": np.mean((prob - y) ** 2, axis=1)}
    bins = np.minimum((prob * ECE_BINS).astype(int), ECE_BINS - 1)
    err = prob - y
    out["ece"] = sum(np.abs((err * (bins == b)).sum(1)) for b in range(ECE_BINS)) / n
    out["calibration"] = err.mean(1)
    out["fpr"] = 1 - out["specificity"]
    return out


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


@dataclass
class Analysis:
    """A population's point metrics, bootstrap replicates and curves."""

    point: dict[str, float]
    reps: dict[str, np.ndarray]
    estimated: dict[str, bool]
    roc: dict | None
    reliability: list[dict] | None
    prevalence: float


def analyse(p: Pseudo, *, threshold: float, rng: np.random.Generator,
            exact: dict[str, float] | None = None) -> Analysis:
    """Metrics of a population's pseudo-patients; ``exact`` overrides point values
    (a site's exact AUROC, Brier) and shifts their bootstrap replicates onto them."""
    prob = _sigmoid(p.logits)
    point = {k: float(v[0]) for k, v in score_table(p.y, prob, threshold=threshold).items()}
    reps = score_table(p.y, prob[_bootstrap_index(p, rng)], threshold=threshold)
    for name, value in (exact or {}).items():
        if value is not None and name in point:
            reps[name] = reps[name] + (value - point[name])
            point[name] = value
    est0, est1 = p.mixed
    estimated = {"sensitivity": est1, "specificity": est0, "fpr": est0,
                 # from pseudo-patients unless a site's exact value was given
                 "auroc": "auroc" not in (exact or {}), "brier": "brier" not in (exact or {}),
                 "ece": True, "calibration": True}
    for name in ("accuracy", "ppv", "npv", "f1"):
        estimated[name] = est0 or est1
    fpr, tpr, _ = roc_curve(p.y, prob)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 101)).astype(int))
    bins = np.minimum((prob * ECE_BINS).astype(int), ECE_BINS - 1)
    rel = [{"predicted": float(prob[bins == b].mean()), "observed": float(p.y[bins == b].mean()),
            "n": int((bins == b).sum())} for b in range(ECE_BINS) if (bins == b).any()]
    return Analysis(point, reps, estimated,
                    {"fpr": fpr[keep].round(4).tolist(), "tpr": tpr[keep].round(4).tolist()},
                    rel, float(p.y.mean()))


def _ci(reps: np.ndarray, *, bounds: tuple[float, float] | None = (0.0, 1.0)
        ) -> tuple[float, float] | None:
    """Percentile interval, clipped to the metric's range (a replicate shifted onto an
    exact value can fall outside it)."""
    r = reps[np.isfinite(reps)]
    if len(r) < 0.9 * len(reps):
        return None
    lo, hi = np.percentile(r, [2.5, 97.5])
    if bounds is not None:
        lo, hi = np.clip([lo, hi], *bounds)
    return float(lo), float(hi)


def classification_metrics(a: Analysis) -> dict[str, dict[str, Any]]:
    """The report's classification figures of ``a``, each with its bootstrap CI."""
    return {m: metric(a.point[m], _ci(a.reps[m]), estimated=a.estimated.get(m, False))
            for m in CLASSIFICATION}


def gap(ref: Analysis, comp: Analysis, name: str) -> dict:
    """``comp - ref`` for metric ``name`` (the report's ``G``)."""
    value = comp.point[name] - ref.point[name]
    ci = _ci(comp.reps[name] - ref.reps[name], bounds=(-1.0, 1.0))
    ok = math.isfinite(value)
    return {"value": value if ok else None, "ci": list(ci) if ci and ok else None,
            "flagged": bool(ok and ci is not None and (ci[0] > 0 or ci[1] < 0)),
            "suppressed": False,
            "estimated": bool(ref.estimated.get(name) or comp.estimated.get(name))}


SUPPRESSED_GAP = {"value": None, "ci": None, "flagged": False, "suppressed": True,
                  "estimated": False}


# --- segmentation ----------------------------------------------------------------------

@dataclass(frozen=True)
class MeanStat:
    """Mean, standard deviation and count of per-image values, from sums."""

    n: int
    mean: float
    sd: float

    @classmethod
    def from_sums(cls, n: int, total: float, sqtotal: float) -> MeanStat:
        """From ``n`` values' sum and sum of squares (sample standard deviation)."""
        mean = total / n
        var = max(sqtotal / n - mean * mean, 0.0) * n / (n - 1) if n > 1 else 0.0
        return cls(n, mean, math.sqrt(var))

    def ci(self) -> tuple[float, float] | None:
        """95% t-interval of the mean; ``None`` under two values."""
        if self.n < 2:
            return None
        half = student_t.ppf(0.975, self.n - 1) * self.sd / math.sqrt(self.n)
        return self.mean - half, self.mean + half


def pooled_sums(cells: list[CellStats], key: str) -> MeanStat | None:
    """Pool ``<key>_sum`` / ``<key>_sqsum`` over cells (``hd`` counts ``hd_n`` images)."""
    count = "hd_n" if key == "hd" else "n"
    rows = [(getattr(c, count), getattr(c, f"{key}_sum"), getattr(c, f"{key}_sqsum"))
            for c in cells]
    rows = [r for r in rows if None not in r]
    if not rows:
        return None
    return MeanStat.from_sums(sum(r[0] for r in rows), sum(r[1] for r in rows),
                              sum(r[2] for r in rows))


def segmentation_metrics(cells: list[CellStats]) -> dict[str, dict]:
    """Dice, IoU and HD95 with t-intervals; HD95 also carries ``images``, the number of
    images it averages (both masks non-empty), since a missed lesion drops out of it."""
    out = {}
    for name, key in (("dice", "dice"), ("iou", "iou"), ("hd95", "hd")):
        s = pooled_sums(cells, key)
        out[name] = metric(s.mean, s.ci()) if s else metric(None, suppressed=True)
        if name == "hd95":
            out[name]["images"] = s.n if s else None
    return out


def dice_gap(ref: list[CellStats], comp: list[CellStats]) -> dict[str, Any]:
    """``comp - ref`` mean Dice with a Welch t-interval (the report's ``G``)."""
    a, b = pooled_sums(ref, "dice"), pooled_sums(comp, "dice")
    if a is None or b is None:
        return dict(SUPPRESSED_GAP)
    value = b.mean - a.mean
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se = math.sqrt(va + vb)
    if se == 0 or a.n < 2 or b.n < 2:
        return {"value": value, "ci": None, "flagged": False, "suppressed": False,
                "estimated": False}
    # Welch-Satterthwaite degrees of freedom
    df = (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = student_t.ppf(0.975, df) * se
    ci = (value - half, value + half)
    return {"value": value, "ci": list(ci), "flagged": bool(ci[0] > 0 or ci[1] < 0),
            "suppressed": False, "estimated": False}
