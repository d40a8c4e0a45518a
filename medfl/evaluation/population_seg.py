"""Server side: pooled segmentation figures from the sites' noisy sums
(:data:`medfl.evaluation.release.SEG_SUMS`), with 95% CIs that include the DP noise.

Each site releases, per cell, the noisy sums over its test images of per-image Dice and
IoU and their squares, of the number of images with a defined HD95 and of HD95 and its
square divided by the public image diagonal ``D`` (:func:`image_diagonal`), with the
noise standard deviation of each sum. A pooled cell sums every reporting site's sums;
the noise variances add.

A mean is a ratio ``S / N`` of two noisy sums. Its variance (delta method) is the
sampling variance of a mean of ``N`` images, ``s² / N`` with ``s²`` from the sum of
squares, plus the noise's: ``(var_S + mean² · var_N) / N²``. The 95% CI is the mean plus
or minus a t-quantile (``N - 1`` degrees of freedom) times its standard error, clipped to
the figure's range; a gap (comparison level minus reference level) adds the two
variances, with Welch-Satterthwaite degrees of freedom. HD95 is the mean of ``hd / D``
times ``D`` (pixels), averaged over the images where it is defined. Images are treated as
independent (clustering by site is ignored).

The utility floor ``k``: a cell's figures are shown when its noisy image count is at
least ``k``, and HD95 when its noisy count of images with a defined HD95 is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from medfl.evaluation.population import SUPPRESSED_GAP, SiteCell, metric
from medfl.evaluation.release import SEG_SUMS

SEGMENTATION = ("dice", "iou", "hd95")
#: figure -> (its sum, its count) in SEG_SUMS
_SUMS = {"dice": ("dice", "n"), "iou": ("iou", "n"), "hd95": ("hd", "hd_n")}


def image_diagonal(size: int) -> float:
    """The public image diagonal (pixels) that HD95 is divided by before it is summed:
    ``size * sqrt(2)`` for ``size`` x ``size`` images."""
    return float(size) * math.sqrt(2.0)


@dataclass(frozen=True)
class PooledSums:
    """The sum of the sites' noisy ``SEG_SUMS`` of one cell and each sum's noise
    variance."""

    sites: tuple[str, ...]
    sums: np.ndarray
    noise_var: np.ndarray

    @classmethod
    def pool(cls, rows: Sequence[SiteCell]) -> PooledSums:
        """Sum ``rows`` (every site's release of the same cell)."""
        sums = np.zeros(len(SEG_SUMS))
        var = np.zeros(len(SEG_SUMS))
        for r in rows:
            if r.release.sums is None:
                raise ValueError(f"site {r.site!r} released no segmentation sums for a cell")
            sums += np.asarray(r.release.sums, dtype=np.float64)
            std = np.asarray(r.std, dtype=np.float64).reshape(-1)
            var += np.broadcast_to(std if std.size else 0.0, var.shape) ** 2
        return cls(tuple(r.site for r in rows), sums, var)

    def get(self, name: str) -> tuple[float, float]:
        """A pooled sum and its noise variance."""
        i = SEG_SUMS.index(name)
        return float(self.sums[i]), float(self.noise_var[i])

    @property
    def n(self) -> float:
        """The noisy number of images."""
        return self.get("n")[0]


@dataclass(frozen=True)
class MeanEstimate:
    """A mean from noisy sums: estimate, variance (sampling + noise), noisy count."""

    mean: float
    var: float
    count: float

    @property
    def df(self) -> float:
        """Degrees of freedom of its t-interval."""
        return max(self.count - 1.0, 1.0)

    def ci(self, *, scale: float = 1.0, upper: float = 1.0) -> tuple[float, float]:
        """95% t-interval of ``scale * mean``, clipped to [0, ``scale * upper``]."""
        half = float(student_t.ppf(0.975, self.df)) * math.sqrt(self.var)
        lo, hi = max(self.mean - half, 0.0), min(self.mean + half, upper)
        return lo * scale, hi * scale


def mean_of(p: PooledSums, key: str, count: str) -> MeanEstimate | None:
    """The mean of per-image ``key`` (in [0, 1]) over ``count`` images (see the module
    docstring); None when the noisy count is not positive."""
    n, var_n = p.get(count)
    if not n > 0:
        return None
    s, var_s = p.get(key)
    sq, _ = p.get(f"{key}_sq")
    mean = min(max(s / n, 0.0), 1.0)
    # the sample variance of values in [0, 1] is at most mean (1 - mean) n / (n - 1)
    spread = min(max(sq / n - mean * mean, 0.0), mean * (1 - mean))
    sample_var = spread * n / (n - 1) if n > 1 else mean * (1 - mean)
    var = sample_var / n + (var_s + mean * mean * var_n) / (n * n)
    return MeanEstimate(mean, var, n)


def segmentation_metrics(p: PooledSums, *, k: int, diagonal: float) -> dict[str, dict]:
    """Dice, IoU and HD95 (pixels) of a pooled cell with 95% CIs; HD95 also carries
    ``images``, the rounded noisy number of images it averages (both masks non-empty),
    since a missed lesion drops out of it. Suppressed under the floor ``k``."""
    out: dict[str, dict[str, Any]] = {}
    for name, (key, count) in _SUMS.items():
        est = mean_of(p, key, count)
        if est is None or est.count < k or p.n < k:
            out[name] = metric(None, suppressed=True)
        else:
            scale = diagonal if name == "hd95" else 1.0
            out[name] = metric(est.mean * scale, est.ci(scale=scale))
    hd_n = p.get("hd_n")[0]
    out["hd95"]["images"] = int(round(hd_n)) if not out["hd95"]["suppressed"] else None
    return out


def floor_reason(p: PooledSums, *, k: int) -> str | None:
    """Why a segmentation cell's figures are hidden under the utility floor, or None."""
    if p.n >= k:
        return None
    return (f"noisy image count under k={k} (≈ {p.n:.0f}): too few images for readable "
            "figures (a utility floor, not a privacy measure)")


def dice_gap(ref: PooledSums, comp: PooledSums, *, k: int) -> dict[str, Any]:
    """``comp - ref`` mean Dice with a Welch-type t-interval (the report's ``Gap``)."""
    a, b = mean_of(ref, "dice", "n"), mean_of(comp, "dice", "n")
    if a is None or b is None or min(a.count, b.count) < k:
        return dict(SUPPRESSED_GAP)
    value = b.mean - a.mean
    se = math.sqrt(a.var + b.var)
    if se == 0:
        return {"value": value, "ci": None, "flagged": False, "suppressed": False,
                "estimated": False}
    df = (a.var + b.var) ** 2 / (a.var ** 2 / a.df + b.var ** 2 / b.df)
    half = float(student_t.ppf(0.975, df)) * se
    lo, hi = max(value - half, -1.0), min(value + half, 1.0)
    return {"value": value, "ci": [lo, hi], "flagged": bool(lo > 0 or hi < 0),
            "suppressed": False, "estimated": False}
