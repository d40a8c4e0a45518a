"""Class-wise score histograms on a fixed public grid: what a site's classification
figures are released as, and the figures computed back from them.

The grid is public (a function of the declared operating threshold only): bin edges on
the logit scale at ``logit(threshold) + EDGE_OFFSETS``, so the threshold is an edge and the
confusion counts at it are sums of whole bins. A cell's histogram is a (2, B) array:
row 0 counts the negatives per bin, row 1 the positives. Each patient adds 1 to exactly
one bin of each cell it belongs to.

Figures from a (possibly noisy) histogram: negative counts (noise) are clipped to 0
first; AUROC counts pairs in the same bin as one half (the Mann-Whitney statistic of the
binned scores); Brier score, log-loss, calibration-in-the-large and ECE use each bin's
representative probability (the sigmoid of its logit midpoint; the two open end bins use
the edge plus or minus half a bin width). ECE is computed over the grid's bins.
"""

from __future__ import annotations

import math

import numpy as np

#: bin edges on the logit scale, relative to the operating threshold's logit: 8 bins
EDGE_OFFSETS = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
N_BINS = len(EDGE_OFFSETS) + 1


def logit(p: float) -> float:
    """The logit of probability ``p``."""
    return math.log(p) - math.log1p(-p)


def score_edges(threshold: float) -> np.ndarray:
    """The public bin edges (logit scale) for operating threshold ``threshold``."""
    return logit(threshold) + EDGE_OFFSETS


def bin_probabilities(threshold: float) -> np.ndarray:
    """Each bin's representative probability (see the module docstring), shape (B,)."""
    e = score_edges(threshold)
    width = float(np.diff(EDGE_OFFSETS).mean())
    mids = np.r_[e[0] - width / 2, (e[:-1] + e[1:]) / 2, e[-1] + width / 2]
    return 1.0 / (1.0 + np.exp(-mids))


def above_threshold(threshold: float) -> np.ndarray:
    """Boolean (B,): the bins at or above the operating threshold (predicted positive)."""
    e = score_edges(threshold)
    lower = np.r_[-np.inf, e]
    return lower >= logit(threshold)


def histogram(y: np.ndarray, p: np.ndarray, *, threshold: float) -> np.ndarray:
    """Exact (2, B) counts of labels ``y`` (0/1) and probabilities ``p`` on the grid."""
    y = np.asarray(y).astype(np.int64).reshape(-1)
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    # bin b holds edges[b-1] <= z < edges[b]: a score on the threshold is predicted positive
    bins = np.searchsorted(score_edges(threshold), z, side="right")
    out = np.zeros((2, N_BINS), dtype=np.float64)
    np.add.at(out, (y, bins), 1.0)
    return out


def point_metrics(hist: np.ndarray, *, threshold: float) -> dict[str, float]:
    """Classification figures of one (2, B) histogram (noisy counts clipped at 0); NaN
    where a figure is undefined (a class, or the predicted positives, with no count)."""
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    neg, pos = h[0], h[1]
    n0, n1 = float(neg.sum()), float(pos.sum())
    n = n0 + n1
    up = above_threshold(threshold)
    tp, fp = float(pos[up].sum()), float(neg[up].sum())
    fn, tn = n1 - tp, n0 - fp
    prob = bin_probabilities(threshold)
    below_neg = np.r_[0.0, np.cumsum(neg)[:-1]]
    nan = math.nan

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else nan

    out = {
        "n": n, "n_neg": n0, "n_pos": n1,
        "auroc": ratio(float((pos * (below_neg + 0.5 * neg)).sum()), n1 * n0),
        "accuracy": ratio(tp + tn, n), "sensitivity": ratio(tp, n1),
        "specificity": ratio(tn, n0), "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn),
        "f1": ratio(2 * tp, 2 * tp + fp + fn),
        "brier": ratio(float((neg * prob ** 2 + pos * (1 - prob) ** 2).sum()), n),
        "loss": ratio(float(-(neg * np.log1p(-prob) + pos * np.log(prob)).sum()), n),
        "calibration": ratio(float(((neg + pos) * prob).sum()) - n1, n),
        "ece": ratio(float(np.abs((neg + pos) * prob - pos).sum()), n),
    }
    out["fpr"] = 1 - out["specificity"]
    return out
