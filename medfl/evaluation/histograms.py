"""Class-wise score histograms on a fixed public grid: what a site's classification
figures are released as, and the figures computed back from them.

The grid is public (a function of the declared operating threshold only): bin edges on
the logit scale at ``logit(threshold) + EDGE_OFFSETS``, so the threshold is an edge and the
confusion counts at it are sums of whole bins. A cell's histogram is a (2, B) array:
row 0 counts the negatives per bin, row 1 the positives. Each patient adds 1 to exactly
one bin of each cell it belongs to.

Figures from a (possibly noisy) histogram (:func:`figures`, :func:`point_metrics`):

- Noisy counts enter every sum *as released*, negative ones included. Each figure is a
  ratio of sums (or, for AUROC, of a bilinear form) of counts, and the DP noise is
  independent and zero-mean per bin, so numerator and denominator stay unbiased;
  clipping each count at 0 first would add about 0.4 noise standard deviations to every
  empty bin and pull every figure toward its uninformative value.
- A figure is undefined (NaN) where its denominator is not positive, and a proportion
  is clipped to [0, 1] (calibration-in-the-large to [-1, 1]) at the end.
- AUROC counts a positive and a negative in the same bin as one half (the Mann-Whitney
  statistic of the binned scores, equal to sklearn's ``roc_auc_score`` on the bin index).
- Brier score, log-loss, calibration-in-the-large and ECE use each bin's representative
  probability (the sigmoid of its logit midpoint; the two open end bins use the edge
  plus or minus one bin width / 2). ECE is computed over the grid's bins.
- ECE sums each bin's absolute error ``|e_b|``, ``e_b = neg_b p_b - pos_b (1 - p_b)``,
  and noise makes ``|e_b + noise|`` larger than ``|e_b|`` on average (at test-set ε = 1
  on the heart-sized benchmark, by 0.2). Given the noise variance of each count, each bin
  contributes ``sqrt(max(e_b² - var_b, 0))`` instead, ``var_b`` being the noise variance
  of ``e_b``: the usual moment correction of a squared error, exact when there is no
  noise.

Every function takes histograms of shape (..., 2, B), so a whole bootstrap of (R, 2, B)
replicates is scored in one call.
"""

from __future__ import annotations

import math

import numpy as np

#: bin edges on the logit scale, relative to the operating threshold's logit: 8 bins
EDGE_OFFSETS = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
N_BINS = len(EDGE_OFFSETS) + 1
#: every figure :func:`figures` returns
FIGURES = ("n", "n_neg", "n_pos", "auroc", "accuracy", "sensitivity", "specificity", "fpr",
           "ppv", "npv", "f1", "brier", "loss", "calibration", "ece")


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
    out = np.zeros((2, N_BINS), dtype=np.float64)
    np.add.at(out, (y, bin_index(p, threshold=threshold)), 1.0)
    return out


def bin_index(p: np.ndarray, *, threshold: float) -> np.ndarray:
    """Each probability's bin on the grid, shape (n,); bin ``b`` holds
    ``edges[b-1] <= logit(p) < edges[b]``, so a score on the threshold is predicted
    positive."""
    p = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 1e-12, 1 - 1e-12)
    z = np.log(p) - np.log1p(-p)
    return np.searchsorted(score_edges(threshold), z, side="right")


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` where ``den > 0``, NaN elsewhere (no warning)."""
    ok = den > 0
    return np.where(ok, num / np.where(ok, den, 1.0), np.nan)


def figures(hist: np.ndarray, *, threshold: float,
            noise_var: float = 0.0) -> dict[str, np.ndarray]:
    """Every figure of :data:`FIGURES` for histograms ``hist`` of shape (..., 2, B), each
    of shape (...); see the module docstring for the rules (noisy counts as released,
    NaN where undefined, proportions clipped to their range, ECE corrected for the noise
    variance ``noise_var`` of each count)."""
    h = np.asarray(hist, dtype=np.float64)
    neg, pos = h[..., 0, :], h[..., 1, :]
    n0, n1 = neg.sum(-1), pos.sum(-1)
    n = n0 + n1
    up = above_threshold(threshold)
    tp, fp = pos[..., up].sum(-1), neg[..., up].sum(-1)
    fn, tn = n1 - tp, n0 - fp
    prob = bin_probabilities(threshold)
    below_neg = np.cumsum(neg, axis=-1) - neg
    mann_whitney = (pos * (below_neg + 0.5 * neg)).sum(-1)
    both = (n0 > 0) & (n1 > 0)
    out = {
        "n": n, "n_neg": n0, "n_pos": n1,
        "auroc": np.where(both, _ratio(mann_whitney, np.where(both, n0 * n1, 0.0)), np.nan),
        "accuracy": _ratio(tp + tn, n), "sensitivity": _ratio(tp, n1),
        "specificity": _ratio(tn, n0), "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn),
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "brier": _ratio((neg * prob ** 2 + pos * (1 - prob) ** 2).sum(-1), n),
        "ece": _ratio(_bin_errors(neg, pos, prob, noise_var).sum(-1), n),
    }
    counts = ("n", "n_neg", "n_pos")
    out = {k: v if k in counts else np.clip(v, 0.0, 1.0) for k, v in out.items()}
    out["fpr"] = 1.0 - out["specificity"]
    out["loss"] = np.clip(_ratio(-(neg * np.log1p(-prob) + pos * np.log(prob)).sum(-1), n),
                          0.0, None)
    out["calibration"] = np.clip(_ratio(((neg + pos) * prob).sum(-1) - n1, n), -1.0, 1.0)
    return out


def _bin_errors(neg: np.ndarray, pos: np.ndarray, prob: np.ndarray,
                noise_var: float) -> np.ndarray:
    """Each bin's absolute calibration error, corrected for the noise (module docstring)."""
    err = neg * prob - pos * (1 - prob)
    if noise_var <= 0:
        return np.abs(err)
    var = noise_var * (prob ** 2 + (1 - prob) ** 2)
    return np.sqrt(np.clip(err ** 2 - var, 0.0, None))


def point_metrics(hist: np.ndarray, *, threshold: float,
                  noise_var: float = 0.0) -> dict[str, float]:
    """:func:`figures` of one (2, B) histogram, as floats (NaN where undefined)."""
    return {k: float(v) for k, v in figures(hist, threshold=threshold,
                                            noise_var=noise_var).items()}


def roc_points(hist: np.ndarray, *, threshold: float) -> dict[str, list[float]]:
    """The ROC curve of one (2, B) histogram: (FPR, TPR) at every edge of the grid, from
    the highest to the lowest (counts clipped at 0 so that the curve is monotone)."""
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    above = np.cumsum(h[:, ::-1], axis=1)  # patients at or above each lower edge
    totals = above[:, -1:]
    rates = _ratio(above, np.broadcast_to(totals, above.shape))
    fpr = np.r_[0.0, np.nan_to_num(rates[0])].round(4)
    tpr = np.r_[0.0, np.nan_to_num(rates[1])].round(4)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def reliability(hist: np.ndarray, *, threshold: float) -> list[dict[str, float]]:
    """Per grid bin with a (clipped) count of at least one: its representative
    probability, the observed rate of positives, and its count rounded (a noisy one when
    the histogram is)."""
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    total = h.sum(0)
    prob = bin_probabilities(threshold)
    return [{"predicted": round(float(prob[b]), 4),
             "observed": round(float(h[1, b] / total[b]), 4), "n": int(round(total[b]))}
            for b in range(N_BINS) if total[b] >= 1]


def operating_point(hist: np.ndarray, *, threshold: float,
                    sensitivity: float) -> dict[str, float] | None:
    """The second, declared operating point of one (2, B) histogram: the highest grid
    edge at which the sensitivity reaches ``sensitivity``, and the figures there.

    Post-processing of the released histogram (no extra privacy cost): counts are clipped
    at 0 so that sensitivity falls monotonically with the edge, and the edge is one of
    the public grid's (:func:`score_edges`; below the lowest edge every patient is
    predicted positive, threshold 0). Returns ``threshold`` (a probability),
    ``sensitivity``, ``specificity``, ``ppv`` and ``npv`` (NaN where undefined), or None
    when the histogram holds no positive.
    """
    h = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    neg, pos = h[0], h[1]
    n0, n1 = float(neg.sum()), float(pos.sum())
    if not n1 > 0:
        return None
    edges = score_edges(threshold)  # ascending; bin b + 1 starts at edges[b]
    tp = fp = 0.0
    j = len(edges) - 1
    for j in range(len(edges) - 1, -2, -1):  # the highest edge first; -1: every bin
        tp, fp = float(pos[j + 1:].sum()), float(neg[j + 1:].sum())
        if tp / n1 >= sensitivity - 1e-12:
            break
    fn, tn = n1 - tp, n0 - fp

    def ratio(a: float, b: float) -> float:
        return a / b if b > 0 else float("nan")

    cut = float(1.0 / (1.0 + np.exp(-edges[j]))) if j >= 0 else 0.0
    return {"threshold": cut, "sensitivity": ratio(tp, n1), "specificity": ratio(tn, n0),
            "ppv": ratio(tp, tp + fp), "npv": ratio(tn, tn + fn)}
