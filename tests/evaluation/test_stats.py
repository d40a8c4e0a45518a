"""The monitoring release: whole-test-set histograms and sums, their wire form, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import accuracy_score

from medfl.evaluation.histograms import N_BINS
from medfl.evaluation.stats import (
    MONITOR_SUMS,
    PERSONAL,
    SiteEvalStats,
    from_release,
    monitor_statistic,
    pool_site_stats,
)

# the public grid at threshold 0.5, by hand: logit edges -3, -2, -1, 0, 1, 2, 3
EDGES = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])


def _hand_histogram(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """numpy's histogram of each class's logits over (-inf, -3, ..., 3, inf)."""
    z = np.log(p) - np.log1p(-p)
    bins = np.r_[-np.inf, EDGES, np.inf]
    return np.stack([np.histogram(z[y == c], bins=bins)[0] for c in (0, 1)]).astype(float)


def _scores(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, 1 / (1 + np.exp(-(1.5 * (2 * y - 1) + rng.normal(0, 1.5, n))))


def test_the_exact_statistic_is_numpys_histogram_and_gives_sklearns_accuracy():
    y, p = _scores(300, 0)
    flat = monitor_statistic(y, p, threshold=0.5, segmentation=False)
    np.testing.assert_array_equal(flat.reshape(2, N_BINS), _hand_histogram(y, p))
    stats = from_release(flat, 0.0, threshold=0.5, segmentation=False, test_epsilon=0.0)
    # the threshold is a bin edge: accuracy from the histogram is exact
    assert stats.n == 300
    assert stats.accuracy == pytest.approx(accuracy_score(y, p >= 0.5))


def test_wire_round_trip_with_the_personal_prefix():
    hist = np.random.default_rng(1).normal(5, 2, (2, N_BINS))
    s = SiteEvalStats(0.5, hist=hist, hist_std=2.5, test_epsilon=0.4)
    wire = s.to_metrics()
    assert set(wire) == set(SiteEvalStats.WIRE.declared())
    both = {**wire, **{PERSONAL + k: v for k, v in
                       SiteEvalStats(0.5, hist=hist + 1, hist_std=2.5).to_metrics().items()}}
    back = SiteEvalStats.from_metrics(both, threshold=0.5)
    tuned = SiteEvalStats.from_metrics(both, PERSONAL, threshold=0.5)
    np.testing.assert_array_equal(back.hist, hist)
    np.testing.assert_array_equal(tuned.hist, hist + 1)
    assert (back.hist_std, back.test_epsilon, back.sums) == (2.5, 0.4, None)
    assert SiteEvalStats.has_metrics(both, PERSONAL) and not SiteEvalStats.has_metrics(wire,
                                                                                       PERSONAL)


def test_undefined_figures_are_none_not_zero():
    only_positives = np.zeros((2, N_BINS))
    only_positives[1, 5] = 16.0
    s = SiteEvalStats(0.5, hist=only_positives)
    assert s.n == 16 and s.auroc is None
    assert s.accuracy == pytest.approx(1.0)  # all 16 at or above the threshold
    empty = SiteEvalStats(0.5, hist=np.zeros((2, N_BINS)))
    assert (empty.n, empty.accuracy, empty.auroc, empty.loss) == (0, None, None, None)
    assert (empty.dice, empty.iou) == (None, None)


def test_pooled_figures_are_over_all_rows_not_a_mean_of_sites():
    (ya, pa), (yb, pb) = _scores(200, 2), _scores(40, 3)
    stats = [from_release(monitor_statistic(y, p, threshold=0.5, segmentation=False), 0.0,
                          threshold=0.5, segmentation=False, test_epsilon=0.0)
             for y, p in ((ya, pa), (yb, pb))]
    pooled = pool_site_stats(stats)
    y, p = np.r_[ya, yb], np.r_[pa, pb]
    assert pooled["n"] == 240
    assert pooled["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
    # the pooled AUROC is the Mann-Whitney statistic of the summed histograms, by hand
    h = _hand_histogram(y, p)
    below = np.r_[0.0, np.cumsum(h[0])[:-1]]
    auroc = float((h[1] * (below + 0.5 * h[0])).sum()) / (h[0].sum() * h[1].sum())
    assert pooled["auroc"] == pytest.approx(auroc)
    assert pooled["auroc_sites_excluded"] == 0 and pooled["sites_suppressed"] == 0
    assert pool_site_stats([])["n"] == 0 and pool_site_stats([])["accuracy"] is None


def _hand_dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    inter, a, b = (p & t).sum(1), p.sum(1), t.sum(1)
    dice = np.where(a + b == 0, 1.0, 2 * inter / np.maximum(a + b, 1))
    union = a + b - inter
    return dice, np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def test_segmentation_sums_match_hand_computed_dice_and_iou():
    rng = np.random.default_rng(0)
    truth = rng.random((12, 1, 8, 8)) < 0.3
    probs = np.clip(truth * 0.7 + rng.random(truth.shape) * 0.5, 0, 1)
    truth[0] = False  # an empty mask predicted empty scores 1
    probs[0] = 0.0
    dice, iou = _hand_dice_iou(probs >= 0.5, truth)
    flat = monitor_statistic(truth.astype(np.float32), probs, threshold=0.5, segmentation=True)
    assert len(flat) == len(MONITOR_SUMS) and dice[0] == 1.0
    np.testing.assert_allclose(flat, [12, dice.sum(), iou.sum()])
    stats = from_release(flat, 0.0, threshold=0.5, segmentation=True, test_epsilon=0.0)
    assert stats.n == 12 and stats.hist is None and stats.accuracy is None
    assert stats.dice == pytest.approx(dice.mean()) and stats.iou == pytest.approx(iou.mean())
    back = SiteEvalStats.from_metrics(stats.to_metrics(), threshold=0.5)
    assert back.dice == pytest.approx(stats.dice) and back.dice_sum == pytest.approx(dice.sum())
    pooled = pool_site_stats([stats, back])
    assert pooled["n"] == 24 and pooled["dice"] == pytest.approx(dice.mean())


def test_noisy_means_stay_in_the_unit_interval():
    s = SiteEvalStats(0.5, sums=np.array([3.0, 7.5, -1.0]), sums_std=4.0)
    assert s.dice == 1.0 and s.iou == 0.0
    assert SiteEvalStats(0.5, sums=np.array([-2.0, 1.0, 1.0])).dice is None
    assert math.isclose(SiteEvalStats(0.5, sums=np.array([-2.0, 1.0, 1.0])).n, 0)
