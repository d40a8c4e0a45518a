"""The monitoring release: what a site shares about the global model at a monitoring round.

At the rounds the run's test-release plan names (``evaluation.monitor-every`` and the
last round, :func:`medfl.privacy.mechanisms.monitor_rounds`) a site releases, through one
Gaussian mechanism (:func:`medfl.privacy.mechanisms.gaussian_release`):

- classification: the whole test set's class-wise score histogram on the public grid
  (:mod:`medfl.evaluation.histograms`), a (2, B) array of noisy counts;
- segmentation: the whole test set's noisy sums ``MONITOR_SUMS`` (images, per-image Dice
  and IoU, each in [0, 1]);

and, when the run asks for a personalised evaluation (``evaluation.personal-epochs`` >
0), the same statistics of the site's fine-tuned copy under ``personal-`` keys, in the
same release. Nothing here is suppressed at ``k``: the noise protects every patient, and
nothing noisy is checked as a count. The figures (accuracy, AUROC, log-loss, Dice, IoU)
are computed back from the noisy statistics (:func:`medfl.evaluation.histograms.
point_metrics`), ``None`` where undefined; the server pools the sites by summing them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from medfl.evaluation.histograms import N_BINS, histogram, point_metrics
from medfl.wire import WireKeys

SUPPRESSED = -1.0  # sentinel on the wire for a suppressed exact count (the audit's)

#: the segmentation sums of a monitoring release, in wire order (each image adds at most
#: 1 to each)
MONITOR_SUMS = ("n", "dice", "iou")

#: Prefix of the personalised evaluation's statistics (a site's fine-tuned copy of the
#: global model, ``evaluation.personal-epochs``) in an evaluate reply.
PERSONAL = "personal-"


def _defined(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass(frozen=True, eq=False)
class SiteEvalStats:
    """One site's monitoring release for one model (see the module docstring).

    ``hist``: the noisy (2, B) histogram (classification) or ``None``; ``sums``: the noisy
    ``MONITOR_SUMS`` (segmentation) or ``None``; ``hist_std`` / ``sums_std``: their noise
    standard deviation per component (0: exact); ``test_epsilon``: the site's ε on its
    test rows in this run after this release; ``threshold``: the run's operating
    threshold (public; not on the wire), which fixes the histogram's grid.
    """

    threshold: float
    hist: np.ndarray | None = None
    sums: np.ndarray | None = None
    hist_std: float = 0.0
    sums_std: float = 0.0
    test_epsilon: float = 0.0

    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("hist-std", "sums-std", "test-epsilon"),
        lists=("hist", "sums"),
        fixed_length={"hist": "n_monitor_hist", "sums": "n_monitor_sums"},
        noise={"hist-std": "hist", "sums-std": "sums"},
    )

    def figures(self) -> dict[str, float]:
        """:func:`point_metrics` of the noisy histogram (empty for segmentation)."""
        if self.hist is None:
            return {}
        return point_metrics(self.hist, threshold=self.threshold)

    @property
    def n(self) -> int:
        """The test set's (noisy) size, rounded, at least 0."""
        if self.hist is not None:
            return max(0, round(self.figures()["n"]))
        return round(max(0.0, float(self.sums[0]))) if self.sums is not None else 0

    @property
    def accuracy(self) -> float | None:
        """Share of correct predictions at the threshold (``None``: undefined)."""
        return _defined(self.figures().get("accuracy", math.nan))

    @property
    def auroc(self) -> float | None:
        """AUROC of the binned scores (``None``: undefined)."""
        return _defined(self.figures().get("auroc", math.nan))

    @property
    def loss(self) -> float | None:
        """Mean log-loss per example, at each bin's representative probability."""
        return _defined(self.figures().get("loss", math.nan))

    def _mean(self, which: str) -> float | None:
        if self.sums is None or not self.sums[0] > 0:
            return None
        return float(np.clip(self.sums[MONITOR_SUMS.index(which)] / self.sums[0], 0.0, 1.0))

    @property
    def dice_sum(self) -> float | None:
        """The noisy sum of per-image Dice (segmentation; ``None`` otherwise)."""
        return None if self.sums is None else float(self.sums[MONITOR_SUMS.index("dice")])

    @property
    def dice(self) -> float | None:
        """Mean per-image Dice (segmentation; ``None`` otherwise)."""
        return self._mean("dice")

    @property
    def iou(self) -> float | None:
        """Mean per-image IoU (segmentation; ``None`` otherwise)."""
        return self._mean("iou")

    def to_metrics(self) -> dict[str, float | list[float]]:
        """Flat numeric form for the wire: ``hist`` row-major (negatives' bins, then the
        positives'), ``sums`` per ``MONITOR_SUMS``; the absent one empty."""
        hist = [] if self.hist is None else [float(v) for v in np.ravel(self.hist)]
        sums = [] if self.sums is None else [float(v) for v in self.sums]
        return {"hist": hist, "sums": sums, "hist-std": float(self.hist_std),
                "sums-std": float(self.sums_std), "test-epsilon": float(self.test_epsilon)}

    @classmethod
    def from_metrics(cls, metrics: dict[str, Any], prefix: str = "", *,
                     threshold: float) -> SiteEvalStats:
        """Parse :meth:`to_metrics`' form; ``prefix`` selects e.g. the ``personal-`` keys;
        ``threshold``: the run's ``evaluation.threshold``."""
        m = {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix)}
        hist = np.asarray(m.get("hist", []), dtype=np.float64)
        sums = np.asarray(m.get("sums", []), dtype=np.float64)
        return cls(threshold=float(threshold),
                   hist=hist.reshape(2, N_BINS) if hist.size else None,
                   sums=sums.reshape(len(MONITOR_SUMS)) if sums.size else None,
                   hist_std=float(m.get("hist-std", 0.0)),
                   sums_std=float(m.get("sums-std", 0.0)),
                   test_epsilon=float(m.get("test-epsilon", 0.0)))

    @classmethod
    def has_metrics(cls, metrics: dict[str, Any], prefix: str = "") -> bool:
        """Whether ``metrics`` hold this release under ``prefix``."""
        return bool(metrics.get(prefix + "hist")) or bool(metrics.get(prefix + "sums"))


def monitor_statistic(y: np.ndarray, scores: np.ndarray, *, threshold: float,
                      segmentation: bool) -> np.ndarray:
    """The exact statistic a monitoring release noises, flat: the (2, B) histogram of
    labels ``y`` (n,) and probabilities ``scores`` (n,), or for segmentation (masks and
    foreground probabilities, (n, 1, H, W)) the ``MONITOR_SUMS``. Each patient adds at
    most 1 to each component (one histogram bin; one image, a Dice and an IoU in [0, 1]),
    so its L2 norm per patient is at most 1 (histogram) or sqrt(3) (sums)."""
    if not segmentation:
        return histogram(y, np.asarray(scores).reshape(-1), threshold=threshold).reshape(-1)
    from medfl.evaluation.segmentation import per_image_overlap

    if len(y) == 0:
        return np.zeros(len(MONITOR_SUMS))
    dice, iou = per_image_overlap(y, scores, threshold=threshold)
    return np.array([float(len(dice)), float(dice.sum()), float(iou.sum())])


def from_release(values: np.ndarray, std: float, *, threshold: float, segmentation: bool,
                 test_epsilon: float) -> SiteEvalStats:
    """One model's :class:`SiteEvalStats` from its part of a release (see
    :func:`monitor_statistic`)."""
    if segmentation:
        return SiteEvalStats(threshold, sums=np.asarray(values, dtype=np.float64),
                             sums_std=std, test_epsilon=test_epsilon)
    return SiteEvalStats(threshold, hist=np.asarray(values, dtype=np.float64).reshape(2, N_BINS),
                         hist_std=std, test_epsilon=test_epsilon)


def pool_site_stats(stats: list[SiteEvalStats]) -> dict[str, float | int | None]:
    """Consortium-wide figures over all sites' test sets together: the sites' noisy
    histograms (or segmentation sums) summed, figures computed from the sum.

    ``auroc_sites_excluded`` and ``sites_suppressed`` are kept for the summary's format:
    no site is left out or suppressed (0), except sites without a histogram from AUROC.
    """
    hists = [s.hist for s in stats if s.hist is not None]
    sums = [s.sums for s in stats if s.sums is not None]
    out: dict[str, float | int | None] = {
        "n": 0, "dice": None, "iou": None, "accuracy": None, "auroc": None, "loss": None,
        "auroc_sites_excluded": len(stats) - len(hists), "sites_suppressed": 0}
    if hists:
        pooled = SiteEvalStats(stats[0].threshold, hist=np.sum(hists, axis=0))
        out.update(n=pooled.n, accuracy=pooled.accuracy, auroc=pooled.auroc, loss=pooled.loss)
    if sums:
        seg = SiteEvalStats(stats[0].threshold, sums=np.sum(sums, axis=0))
        out.update(n=int(out["n"] or 0) + seg.n, dice=seg.dice, iou=seg.iou)
    return out
