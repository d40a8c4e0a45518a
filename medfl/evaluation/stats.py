"""Evaluation sufficient statistics: what a site computes, suppresses and shares.

A site never shares per-patient scores. For a test set of at least ``k`` patients it
shares: the number of examples, the number of correct predictions at the operating
threshold, the summed log-loss, and, only when *both* classes have at least ``k``
patients, its AUROC and a per-class histogram of predicted scores coarsened so that every
non-empty bin holds at least ``k`` patients. (Sending one class's histogram when the other
is small would reveal the small class's size as ``n`` minus the total.) A test set under
``k`` patients shares nothing but the fact that it is suppressed. The server pools the
histograms into a consortium-wide AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

SUPPRESSED = -1.0  # sentinel on the wire for a suppressed scalar (never a real value)


def score_histogram(scores: np.ndarray, *, bins: int) -> np.ndarray:
    """Counts of ``scores`` in ``bins`` equal-width bins on [0, 1] (1.0 in the last bin)."""
    idx = np.clip((np.asarray(scores, dtype=np.float64) * bins).astype(np.int64), 0, bins - 1)
    return np.bincount(idx, minlength=bins).astype(np.int64)


def coarsen_histogram(hist: np.ndarray, *, k: int) -> tuple[np.ndarray, bool]:
    """Merge adjacent bins so every non-empty reported bin holds at least ``k`` counts.

    Bins are merged left to right into runs of at least ``k``; a remainder under ``k``
    joins the last run. Each run's total is placed at the run's count-weighted centre
    bin. Returns ``(coarse, suppressed)``; when the total is under ``k`` the histogram is
    suppressed whole (all zeros, ``True``). The total count is preserved otherwise.
    """
    hist = np.asarray(hist, dtype=np.int64)
    total = int(hist.sum())
    if total < k:
        return np.zeros_like(hist), True
    runs: list[list[int]] = []
    current: list[int] = []
    count = 0
    for i, c in enumerate(hist):
        if c == 0 and not current:
            continue
        current.append(i)
        count += int(c)
        if count >= k:
            runs.append(current)
            current, count = [], 0
    if current:
        runs[-1].extend(current)
    coarse = np.zeros_like(hist)
    for run in runs:
        weights = hist[run]
        centre = int(round(float(np.dot(run, weights)) / float(weights.sum())))
        coarse[centre] += int(weights.sum())
    return coarse, False


def binned_auroc(hist_neg: np.ndarray, hist_pos: np.ndarray) -> float | None:
    """AUROC from per-class score histograms on a shared bin grid (ties count one half).

    Equals the exact (Mann-Whitney) AUROC when no bin holds both a positive and a
    negative score with different values. ``None`` when a class is empty.
    """
    neg = np.asarray(hist_neg, dtype=np.float64)
    pos = np.asarray(hist_pos, dtype=np.float64)
    n_neg, n_pos = neg.sum(), pos.sum()
    if n_neg == 0 or n_pos == 0:
        return None
    neg_below = np.cumsum(neg) - neg
    return float(np.sum(pos * (neg_below + 0.5 * neg)) / (n_neg * n_pos))


@dataclass(frozen=True)
class SiteEvalStats:
    """What one site shares after evaluating the global model (already suppressed)."""

    n: int | None
    n_correct: int | None
    loss_sum: float | None
    auroc: float | None
    hist_neg: np.ndarray | None
    hist_pos: np.ndarray | None

    @property
    def accuracy(self) -> float | None:
        return None if self.n_correct is None or not self.n else self.n_correct / self.n

    @property
    def loss(self) -> float | None:
        return None if self.loss_sum is None or not self.n else self.loss_sum / self.n

    def to_metrics(self) -> dict[str, int | float | list[int]]:
        """Flat numeric form for the wire; suppressed values become ``SUPPRESSED`` / []."""
        return {
            "num-examples": SUPPRESSED if self.n is None else self.n,
            "n-correct": SUPPRESSED if self.n_correct is None else self.n_correct,
            "loss-sum": SUPPRESSED if self.loss_sum is None else self.loss_sum,
            "auroc": SUPPRESSED if self.auroc is None else self.auroc,
            "hist-neg": [] if self.hist_neg is None else [int(v) for v in self.hist_neg],
            "hist-pos": [] if self.hist_pos is None else [int(v) for v in self.hist_pos],
        }

    @classmethod
    def from_metrics(cls, m: dict) -> SiteEvalStats:
        def opt(v):
            return None if float(v) == SUPPRESSED else v

        n, n_correct, loss_sum = opt(m["num-examples"]), opt(m["n-correct"]), opt(m["loss-sum"])
        return cls(
            n=None if n is None else int(n),
            n_correct=None if n_correct is None else int(n_correct),
            loss_sum=None if loss_sum is None else float(loss_sum),
            auroc=opt(m["auroc"]),
            hist_neg=np.asarray(m["hist-neg"], dtype=np.int64) if len(m["hist-neg"]) else None,
            hist_pos=np.asarray(m["hist-pos"], dtype=np.int64) if len(m["hist-pos"]) else None,
        )


def site_eval_stats(
    y_true: np.ndarray, y_score: np.ndarray, *, threshold: float, bins: int, k: int
) -> SiteEvalStats:
    """Compute and suppress one site's evaluation statistics (see module docstring)."""
    y_true = np.asarray(y_true).astype(np.int64)
    y_score = np.asarray(y_score, dtype=np.float64)
    n = int(y_true.shape[0])
    if n < k:
        return SiteEvalStats(None, None, None, None, None, None)
    eps = 1e-12
    p = np.clip(y_score, eps, 1 - eps)
    loss_sum = float(-np.sum(y_true * np.log(p) + (1 - y_true) * np.log(1 - p)))
    n_correct = int(np.sum((y_score >= threshold).astype(np.int64) == y_true))
    n_pos = int(y_true.sum())
    if min(n_pos, n - n_pos) < k:
        return SiteEvalStats(n, n_correct, loss_sum, None, None, None)
    neg, _ = coarsen_histogram(score_histogram(y_score[y_true == 0], bins=bins), k=k)
    pos, _ = coarsen_histogram(score_histogram(y_score[y_true == 1], bins=bins), k=k)
    return SiteEvalStats(n=n, n_correct=n_correct, loss_sum=loss_sum,
                         auroc=float(roc_auc_score(y_true, y_score)), hist_neg=neg, hist_pos=pos)


def pool_site_stats(stats: list[SiteEvalStats]) -> dict[str, float | int | None]:
    """Consortium-wide figures over all sites' test sets together.

    Accuracy and loss pool the sites that reported them. AUROC pools the histograms of
    the sites that reported them (both classes with at least ``k`` patients); the others
    are left out of it and counted in ``auroc_sites_excluded``.
    """
    shown = [s for s in stats if s.n is not None]
    with_acc = [s for s in shown if s.n_correct is not None]
    n_acc = sum(s.n for s in with_acc)
    with_loss = [s for s in shown if s.loss_sum is not None]
    n_loss = sum(s.n for s in with_loss)
    hists = [s for s in shown if s.hist_neg is not None and s.hist_pos is not None]
    auroc = None
    if hists:
        auroc = binned_auroc(sum(s.hist_neg for s in hists), sum(s.hist_pos for s in hists))
    return {
        "n": sum(s.n for s in shown),
        "accuracy": (sum(s.n_correct for s in with_acc) / n_acc) if n_acc else None,
        "auroc": auroc,
        "loss": (sum(s.loss_sum for s in with_loss) / n_loss) if n_loss else None,
        "auroc_sites_excluded": len(stats) - len(hists),
        "sites_suppressed": len(stats) - len(shown),
    }
