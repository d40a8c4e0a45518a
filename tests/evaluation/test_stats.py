"""Evaluation sufficient statistics: binned AUROC, coarsening at k, pooling."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from medfl.evaluation.stats import (
    SiteEvalStats,
    binned_auroc,
    coarsen_histogram,
    pool_site_stats,
    score_histogram,
    site_eval_stats,
)


def test_binned_auroc_by_hand():
    # negatives in bins 0,1; positives in bins 1,2 -> pairs: (p@1 vs n@0)=1, (p@1 vs n@1)=.5,
    # (p@2 vs n@0)=1, (p@2 vs n@1)=1 -> 3.5 / 4
    assert binned_auroc(np.array([1, 1, 0]), np.array([0, 1, 1])) == pytest.approx(0.875)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 60), st.integers(5, 60))
def test_fine_binned_auroc_matches_sklearn(seed, n_neg, n_pos):
    rng = np.random.default_rng(seed)
    neg, pos = rng.beta(2, 3, n_neg), rng.beta(3, 2, n_pos)
    y = np.r_[np.zeros(n_neg), np.ones(n_pos)]
    exact = roc_auc_score(y, np.r_[neg, pos])
    binned = binned_auroc(score_histogram(neg, bins=10_000), score_histogram(pos, bins=10_000))
    assert binned == pytest.approx(exact, abs=0.005)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 30), min_size=1, max_size=40), st.integers(1, 25))
def test_coarsening_invariants(hist, k):
    hist = np.array(hist)
    coarse, suppressed = coarsen_histogram(hist, k=k)
    if hist.sum() < k:
        assert suppressed and coarse.sum() == 0
    else:
        assert not suppressed
        assert coarse.sum() == hist.sum()  # no patient lost
        assert np.all((coarse == 0) | (coarse >= k))  # no cell under k
        assert len(coarse) == len(hist)


def test_coarsening_with_k1_is_identity():
    hist = np.array([0, 3, 1, 0, 2])
    np.testing.assert_array_equal(coarsen_histogram(hist, k=1)[0], hist)


def test_small_class_withholds_auroc_and_both_histograms():
    # 3 negatives < k = 10. Sending the positives' histogram (total 20) beside n = 23
    # would reveal the 3, so neither histogram leaves.
    y = np.r_[np.zeros(3), np.ones(20)]
    s = site_eval_stats(y, np.linspace(0.1, 0.9, 23), threshold=0.5, bins=20, k=10)
    assert s.auroc is None and s.hist_neg is None and s.hist_pos is None
    assert s.n == 23 and s.n_correct is not None


def test_tiny_test_set_shares_nothing():
    s = site_eval_stats(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]), threshold=0.5,
                        bins=10, k=10)
    assert (s.n, s.n_correct, s.loss_sum, s.auroc, s.hist_neg, s.hist_pos) == (None,) * 6
    wire = s.to_metrics()
    assert wire["num-examples"] == wire["n-correct"] == wire["loss-sum"] == -1.0
    assert pool_site_stats([s])["sites_suppressed"] == 1


def test_site_stats_match_sklearn_when_nothing_is_suppressed():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    s = site_eval_stats(y, p, threshold=0.5, bins=50, k=10)
    assert s.auroc == pytest.approx(roc_auc_score(y, p))
    assert s.accuracy == pytest.approx(np.mean((p >= 0.5) == y))
    expected_loss = -np.sum(y * np.log(p.clip(1e-12)) + (1 - y) * np.log((1 - p).clip(1e-12)))
    assert s.loss_sum == pytest.approx(expected_loss)


def test_wire_round_trip_preserves_suppression():
    s = SiteEvalStats(16, 15, 4.2, None, None, None)
    back = SiteEvalStats.from_metrics(s.to_metrics())
    assert back == s


def test_pooled_accuracy_is_over_all_rows_not_a_mean_of_sites():
    a = SiteEvalStats(100, 90, 10.0, None, np.array([10, 0]), np.array([0, 90]))
    b = SiteEvalStats(20, 10, 5.0, None, np.array([0, 10]), np.array([10, 0]))
    pooled = pool_site_stats([a, b])
    assert pooled["accuracy"] == pytest.approx(100 / 120)
    assert pooled["loss"] == pytest.approx(15.0 / 120)
    # pooled negatives: 10 in bin 0, 10 in bin 1; positives: 10 in bin 0, 90 in bin 1.
    # P(pos > neg) + .5 P(tie) = (90*10 + .5*(90*10 + 10*10)) / (100*20) = 1400 / 2000
    assert pooled["auroc"] == pytest.approx(0.7)
