"""Server side: pooled classification figures, 95% CIs and fairness gaps from the sites'
noisy report releases (:mod:`medfl.evaluation.release`).

Pooling. Each site releases, per cell, a (2, B) class-wise score histogram on the public
grid (:mod:`medfl.evaluation.histograms`) with Gaussian noise of a known standard
deviation per count. A pooled cell is the *sum* of every reporting site's noisy
histogram; its noise is Gaussian with variance the sum of the sites' variances. No site
is left out: the pooled figures and the pooled count come from the same sites.

Figures. :func:`medfl.evaluation.histograms.figures` of the pooled histogram (noisy
counts as released, so every sum stays unbiased; see there).

Confidence intervals: a parametric bootstrap that simulates both sources of error. Each
of ``B`` replicates draws every bin's count from a Poisson distribution with mean the
pooled count clipped at 0 (sampling: a sum of independent Poisson counts is Poisson, so
this is also the per-site resampling), adds fresh Gaussian noise of the pooled variance
to every bin (the DP noise), and recomputes the figures. The 95% CI is the 2.5th-97.5th
percentile of the replicates. A replicate whose figure is undefined (a class count not
positive) counts as lying beyond either end, alternately, so that a cell too noisy to
say anything gets a CI spanning the whole range instead of a falsely narrow one. With
noise the intervals are percentile rather than "basic" ones: the noisy figures' sampling
distributions are skewed, and percentile intervals kept 95% coverage where basic ones
did not (``bench/report_coverage.py``).

Gaps (comparison level minus reference level): the two cells hold different patients
and carry independent noise, so replicate ``b`` of the gap is replicate ``b`` of one cell
minus replicate ``b`` of the other; flagged when its 95% CI excludes 0.

The utility floor ``k``. A cell's figures are shown only when its noisy count of each
class is at least ``k``: below that the figures are mostly noise. It is a rule about what
is worth reading, not a privacy protection (the release is already DP).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from medfl.evaluation.histograms import (
    N_BINS,
    figures,
    reliability,
    roc_points,
)
from medfl.evaluation.release import CellRelease
from medfl.evaluation.scores import score_table

# score_table: exact figures of real scores, kept importable from here for the sites'
# local reports
__all__ = ["B", "CLASSIFICATION", "SIGNED", "SUPPRESSED_GAP", "UNIT", "Analysis",
           "PooledHistogram", "SiteCell", "analyse", "classification_metrics", "floor_reason",
           "gap", "interval", "metric", "replicates", "score_table", "suppressed_metrics"]

B = 1000  # bootstrap replicates
CLASSIFICATION = ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "f1",
                  "brier", "ece")
#: the range of each figure (and of a gap: the difference of two of them)
SIGNED = {"calibration": (-1.0, 1.0)}
UNIT = (0.0, 1.0)
CLASS_NAMES = ("negatives", "positives")


def metric(value: float | None, ci: tuple[float, float] | None = None, *,
           suppressed: bool = False, estimated: bool = False) -> dict[str, Any]:
    """One reported figure (the report's ``Figure``)."""
    finite = value if value is not None and math.isfinite(value) else None
    ok = finite is not None
    return {"value": float(finite) if finite is not None else None,
            "ci": [float(ci[0]), float(ci[1])] if ok and ci is not None
            and all(math.isfinite(c) for c in ci) else None,
            "suppressed": suppressed, "estimated": estimated and ok}


def suppressed_metrics(names: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """Each of ``names`` as a suppressed figure."""
    return {m: metric(None, suppressed=True) for m in names}


SUPPRESSED_GAP = {"value": None, "ci": None, "flagged": False, "suppressed": True,
                  "estimated": False}


@dataclass(frozen=True)
class SiteCell:
    """One site's release of one cell: ``std`` is the noise standard deviation of each
    histogram count (a float), or of each segmentation sum (one per ``SEG_SUMS``)."""

    site: str
    release: CellRelease
    std: float | tuple[float, ...]


@dataclass(frozen=True)
class PooledHistogram:
    """The sum of the sites' noisy (2, B) histograms of one cell, and the noise variance
    of each pooled count."""

    sites: tuple[str, ...]
    hist: np.ndarray
    noise_var: float

    @classmethod
    def pool(cls, rows: Sequence[SiteCell]) -> PooledHistogram:
        """Sum ``rows`` (every site's release of the same cell)."""
        hists = [np.asarray(r.release.hist, dtype=np.float64) for r in rows
                 if r.release.hist is not None]
        if len(hists) != len(rows):
            raise ValueError("a classification cell needs a histogram from every site "
                             f"(got {len(hists)} of {len(rows)})")
        total = np.sum(hists, axis=0) if hists else np.zeros((2, N_BINS))
        var = 0.0
        for r in rows:
            std = np.asarray(r.std, dtype=np.float64).reshape(-1)
            if std.size != 1 or not std[0] >= 0:
                raise ValueError(f"site {r.site!r}: a histogram's noise is one standard "
                                 f"deviation >= 0 for every count (got {r.std!r})")
            var += float(std[0]) ** 2
        return cls(tuple(r.site for r in rows), total, var)

    @property
    def count_sd(self) -> float:
        """The noise standard deviation of one class's total count."""
        return math.sqrt(N_BINS * self.noise_var)


@dataclass
class Analysis:
    """One pooled cell: its figures, bootstrap replicates, counts and curves.

    ``n`` and ``class_counts`` are noisy counts (noise sd ``n_sd`` and ``class_sd``);
    ``reason`` says why the figures are not shown (None: shown).
    """

    sites: tuple[str, ...]
    point: dict[str, float]
    reps: dict[str, np.ndarray]
    n: float
    n_sd: float
    class_counts: tuple[float, float]
    class_sd: float
    reason: str | None
    roc: dict[str, list[float]] | None = None
    reliability: list[dict[str, float]] | None = None

    @property
    def suppressed(self) -> bool:
        """Whether the cell's figures are below the utility floor."""
        return self.reason is not None

    @property
    def prevalence(self) -> float | None:
        """The noisy share of positives, clipped to [0, 1]; None when ``n`` is not
        positive or the figures are suppressed."""
        if self.suppressed or not self.n > 0:
            return None
        return min(max(self.class_counts[1] / self.n, 0.0), 1.0)


def replicates(hist: np.ndarray, noise_var: float, *, threshold: float,
               rng: np.random.Generator, reps: int = B) -> dict[str, np.ndarray]:
    """``reps`` parametric-bootstrap replicates of every figure of a pooled (2, B)
    histogram (see the module docstring): Poisson counts around the clipped histogram,
    plus fresh Gaussian noise of variance ``noise_var`` per count."""
    base = np.clip(np.asarray(hist, dtype=np.float64), 0.0, None)
    sims = rng.poisson(base, size=(reps, *base.shape)).astype(np.float64)
    if noise_var > 0:
        sims += rng.normal(0.0, math.sqrt(noise_var), size=sims.shape)
    return figures(sims, threshold=threshold, noise_var=noise_var)


def floor_reason(class_counts: tuple[float, float], *, k: int, sd: float = 0.0
                 ) -> str | None:
    """Why a cell's figures are hidden under the utility floor ``k``, or None.

    The floor is noise-aware: a cell is hidden when a class's noisy count is under ``k``
    even at the upper end of its 95% noise interval (count + 1.96 sd), i.e. when the
    data show the class is too small; a count that noise merely may have pushed under
    ``k`` is shown, with a CI as wide as the noise makes it. With no noise this is the
    plain count under ``k``."""
    low = [f"{CLASS_NAMES[c]} ≈ {class_counts[c]:.0f}" for c in (0, 1)
           if class_counts[c] + 1.96 * sd < k]
    if not low:
        return None
    return (f"noisy class count under k={k} even allowing for the noise ({', '.join(low)}): "
            "too few patients for readable figures (a utility floor, not a privacy measure)")


def analyse(pooled: PooledHistogram, *, threshold: float, k: int,
            rng: np.random.Generator, reps: int = B) -> Analysis:
    """Figures, replicates and curves of one pooled cell (see the module docstring).

    The replicates are drawn even for a cell under the floor, so that a gap's
    replicates stay paired whatever is shown.
    """
    raw = figures(pooled.hist, threshold=threshold, noise_var=pooled.noise_var)
    # The figures are those of the histogram with noisy negative counts set to 0 (post-
    # processing, so that a figure is defined wherever a class has a count); the counts
    # and the floor use the unbiased noisy totals, the CIs the bootstrap.
    point = {name: float(v) for name, v in figures(
        np.clip(pooled.hist, 0.0, None), threshold=threshold,
        noise_var=pooled.noise_var).items()}
    point.update({key: float(raw[key]) for key in ("n", "n_neg", "n_pos")})
    counts = (point["n_neg"], point["n_pos"])
    reason = floor_reason(counts, k=k, sd=pooled.count_sd)
    a = Analysis(sites=pooled.sites, point=point,
                 reps=replicates(pooled.hist, pooled.noise_var, threshold=threshold,
                                 rng=rng, reps=reps),
                 n=point["n"], n_sd=math.sqrt(2) * pooled.count_sd, class_counts=counts,
                 class_sd=pooled.count_sd, reason=reason)
    if reason is None:
        a.roc = roc_points(pooled.hist, threshold=threshold)
        a.reliability = reliability(pooled.hist, threshold=threshold)
    return a


def interval(reps: np.ndarray, *, bounds: tuple[float, float] = UNIT
             ) -> tuple[float, float]:
    """The 2.5th-97.5th percentile of ``reps``, an undefined (NaN) replicate counting as
    lying beyond either end, alternately; clipped to ``bounds``."""
    r = np.asarray(reps, dtype=np.float64).copy()
    bad = ~np.isfinite(r)
    lo, hi = bounds
    r[bad] = np.where(np.arange(int(bad.sum())) % 2 == 0, lo - 1.0, hi + 1.0)
    q = np.percentile(r, [2.5, 97.5])
    return float(np.clip(q[0], lo, hi)), float(np.clip(q[1], lo, hi))


def classification_metrics(a: Analysis, names: tuple[str, ...] = CLASSIFICATION
                           ) -> dict[str, dict[str, Any]]:
    """The report's figures of cell ``a``, each with its 95% CI; all suppressed when the
    cell is under the floor."""
    if a.suppressed:
        return suppressed_metrics(names)
    return {m: metric(a.point[m], interval(a.reps[m], bounds=SIGNED.get(m, UNIT)))
            for m in names}


def gap(ref: Analysis, comp: Analysis, name: str) -> dict[str, Any]:
    """``comp - ref`` for figure ``name`` with a 95% CI from paired replicates (the
    report's ``Gap``); suppressed when either cell is under the floor."""
    if ref.suppressed or comp.suppressed:
        return dict(SUPPRESSED_GAP)
    value = comp.point[name] - ref.point[name]
    if not math.isfinite(value):
        return {"value": None, "ci": None, "flagged": False, "suppressed": False,
                "estimated": False}
    lo, hi = SIGNED.get(name, UNIT)
    ci = interval(comp.reps[name] - ref.reps[name], bounds=(lo - hi, hi - lo))
    return {"value": value, "ci": list(ci), "flagged": bool(ci[0] > 0 or ci[1] < 0),
            "suppressed": False, "estimated": False}
