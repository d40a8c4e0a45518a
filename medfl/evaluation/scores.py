"""Classification figures of real scores (a site's own, never released): what a site's
local report shows, and the reference the server's estimates are benchmarked against."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata

ECE_BINS = 10


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
