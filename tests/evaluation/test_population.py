"""Server-side pooled figures from noisy histograms: pooling, the utility floor, CIs that
include the DP noise, gaps, and coverage of a known truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from medfl.evaluation import population as pop
from medfl.evaluation.histograms import (
    N_BINS,
    figures,
    histogram,
    point_metrics,
    score_edges,
)
from medfl.evaluation.release import CellRelease
from medfl.privacy.mechanisms import gaussian_release


def _scores(rng: np.random.Generator, n: int, d: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.45).astype(int)
    return y, 1 / (1 + np.exp(-(rng.normal(-0.5, 1.0, n) + d * y)))


def _site(name: str, hist: np.ndarray, std: float = 0.0) -> pop.SiteCell:
    return pop.SiteCell(name, CellRelease(hist=hist), std)


def _analyse(hist: np.ndarray, noise_var: float = 0.0, *, k: int = 10, seed: int = 0,
             reps: int = pop.B) -> pop.Analysis:
    pooled = pop.PooledHistogram(("a",), hist, noise_var)
    return pop.analyse(pooled, threshold=0.5, k=k, rng=np.random.default_rng(seed), reps=reps)


def test_pooling_sums_the_sites_histograms_and_noise_variances():
    rng = np.random.default_rng(0)
    a, b = rng.normal(5, 3, (2, N_BINS)), rng.normal(7, 3, (2, N_BINS))

    pooled = pop.PooledHistogram.pool([_site("north", a, 3.0), _site("south", b, 4.0)])

    assert pooled.sites == ("north", "south")
    np.testing.assert_allclose(pooled.hist, a + b)
    assert pooled.noise_var == pytest.approx(3.0 ** 2 + 4.0 ** 2)
    assert pooled.count_sd == pytest.approx(5.0 * math.sqrt(N_BINS))


def test_pooled_figures_are_the_figures_of_the_summed_histogram():
    rng = np.random.default_rng(1)
    sites = [histogram(*_scores(rng, n, 1.5), threshold=0.5) for n in (120, 80, 40)]
    pooled = pop.PooledHistogram.pool([_site(str(i), h) for i, h in enumerate(sites)])
    a = pop.analyse(pooled, threshold=0.5, k=10, rng=rng)
    total = point_metrics(sum(sites), threshold=0.5)
    assert a.point["auroc"] == pytest.approx(total["auroc"])
    assert a.n == 240 and a.class_counts == (total["n_neg"], total["n_pos"])
    assert pop.classification_metrics(a)["sensitivity"]["value"] == \
        pytest.approx(total["sensitivity"])


def test_a_count_under_k_that_the_noise_may_explain_is_shown_with_its_ci():
    hist = np.full((2, N_BINS), 3.0)
    hist[1] = [2.0, 1.5, 0.0, -1.0, 1.0, 2.0, 1.0, 2.0]  # noisy positives: 8.5
    # noise sd of the total: sqrt(8 * 16) = 11.3, so 8.5 + 1.96 * 11.3 >= 10: shown
    a = _analyse(hist, noise_var=16.0, k=10)
    assert not a.suppressed
    assert pop.classification_metrics(a)["auroc"]["ci"] is not None


def test_a_cell_under_k_by_its_noisy_count_is_suppressed_with_its_reason():
    hist = np.full((2, N_BINS), 3.0)
    hist[1] = [1.0, 0.5, 0.0, -1.0, 1.0, 1.0, 0.5, 1.0]  # noisy positives: 4
    # noise sd of the positives' total: sqrt(8 * 0.25) = 1.41; 4 + 1.96 * 1.41 < 10
    a = _analyse(hist, noise_var=0.25, k=10)

    assert a.suppressed and a.prevalence is None and a.roc is None
    assert "k=10" in a.reason and "noisy" in a.reason and "positives ≈ 4" in a.reason
    assert "privacy" in a.reason  # says it is not a privacy measure
    shown = pop.classification_metrics(a)
    assert all(m["suppressed"] and m["value"] is None for m in shown.values())
    assert not _analyse(hist + 0.25, noise_var=16.0, k=10).suppressed  # 10.5 of each


def test_the_ci_widens_with_the_noise():
    rng = np.random.default_rng(2)
    hist = histogram(*_scores(rng, 400, 1.5), threshold=0.5)

    def width(noise_var: float) -> float:
        lo, hi = pop.classification_metrics(_analyse(hist, noise_var))["auroc"]["ci"]
        return hi - lo

    exact, noisy = width(0.0), width(6.0 ** 2)
    assert exact > 0 and noisy > 1.5 * exact
    # exact release: the bootstrap's spread is sampling alone, close to the usual
    # standard error of an AUROC (Hanley-McNeil) on the binned scores
    f = point_metrics(hist, threshold=0.5)
    a, n1, n0 = f["auroc"], f["n_pos"], f["n_neg"]
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n1 - 1) * (q1 - a * a) + (n0 - 1) * (q2 - a * a))
                   / (n1 * n0))
    assert exact == pytest.approx(2 * 1.96 * se, rel=0.2)


def test_an_undefined_replicate_widens_the_interval_to_the_range():
    reps = np.r_[np.full(900, 0.8), np.full(100, np.nan)]  # 10% undefined
    assert pop.interval(reps) == (0.0, 1.0)
    assert pop.interval(np.r_[np.full(990, 0.8), np.full(10, np.nan)]) == (0.8, 0.8)


def test_a_real_gap_is_flagged_and_no_gap_is_not():
    rng = np.random.default_rng(5)
    good = _analyse(histogram(*_scores(rng, 400, 2.5), threshold=0.5), seed=1)
    bad = _analyse(histogram(*_scores(rng, 400, 0.2), threshold=0.5), seed=2)
    same = _analyse(histogram(*_scores(rng, 400, 2.5), threshold=0.5), seed=3)

    g = pop.gap(good, bad, "auroc")
    assert g["flagged"] and g["value"] == pytest.approx(bad.point["auroc"] - good.point["auroc"])
    assert g["ci"][0] < g["value"] < g["ci"][1] < 0
    assert not pop.gap(good, same, "auroc")["flagged"]
    floor = _analyse(np.full((2, N_BINS), 0.5))
    assert pop.gap(good, floor, "auroc") == pop.SUPPRESSED_GAP


def _binormal_truth(mean0: float, d: float, n: int, prevalence: float) -> np.ndarray:
    edges = np.r_[-np.inf, score_edges(0.5), np.inf]
    share = [np.diff(norm.cdf(edges - m)) for m in (mean0, mean0 + d)]
    return n * np.stack([(1 - prevalence) * share[0], prevalence * share[1]])


def test_noisy_cis_cover_the_population_value():
    """200 replicates of a 300-patient pooled cell from three sites with noise sd 4 per
    count each: coverage of the population value well above chance (95% expected)."""
    rng = np.random.default_rng(11)
    sizes, prevalence, mean0, d, std = (150, 100, 50), 0.45, -0.8, 1.8, 4.0
    truth = figures(_binormal_truth(mean0, d, sum(sizes), prevalence), threshold=0.5)
    hits = {m: 0 for m in ("auroc", "sensitivity", "specificity")}
    for _ in range(200):
        rows = []
        for j, n in enumerate(sizes):
            y = (rng.random(n) < prevalence).astype(int)
            p = 1 / (1 + np.exp(-(mean0 + d * y + rng.standard_normal(n))))
            rel = gaussian_release(histogram(y, p, threshold=0.5), 1.0, sensitivity=1.0,
                                   sigma=std, rng=rng)
            rows.append(_site(str(j), rel.values, std))
        a = pop.analyse(pop.PooledHistogram.pool(rows), threshold=0.5, k=10, rng=rng, reps=400)
        for m in hits:
            lo, hi = pop.interval(a.reps[m])
            hits[m] += lo <= truth[m] <= hi
    assert all(h / 200 >= 0.88 for h in hits.values()), hits
