"""Evaluation sufficient statistics: score groups, AUROC from groups, suppression at k."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm
from sklearn.metrics import roc_auc_score

from medfl.evaluation.stats import (
    SiteEvalStats,
    mixture_auroc,
    pool_site_stats,
    score_groups,
    site_eval_stats,
)


def test_score_groups_by_hand():
    groups = score_groups(np.array([0.9, 0.1, 0.5, 0.3, 0.7]), k=2)
    # sorted: .1 .3 .5 .7 .9 -> 5 // 2 = 2 groups: [.1 .3 .5], [.7 .9]
    assert [g[0] for g in groups] == [3, 2]
    assert groups[0][1] == pytest.approx(0.3) and groups[1][1] == pytest.approx(0.8)
    assert groups[0][2] == pytest.approx(np.var([0.1, 0.3, 0.5]))


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 400), st.integers(1, 25))
def test_every_group_holds_at_least_k_and_none_is_lost(n, k):
    if n < k:
        with pytest.raises(ValueError):
            score_groups(np.zeros(n), k=k)
        return
    groups = score_groups(np.random.default_rng(n).uniform(size=n), k=k)
    assert all(g[0] >= k for g in groups)
    assert sum(g[0] for g in groups) == n


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(5, 60), st.integers(5, 60))
def test_with_k1_the_estimate_is_the_exact_auroc(seed, n_neg, n_pos):
    rng = np.random.default_rng(seed)
    neg, pos = rng.beta(2, 3, n_neg).round(2), rng.beta(3, 2, n_pos).round(2)  # with ties
    exact = roc_auc_score(np.r_[np.zeros(n_neg), np.ones(n_pos)], np.r_[neg, pos])
    assert mixture_auroc(score_groups(neg, k=1), score_groups(pos, k=1)) == pytest.approx(exact)


def test_two_normal_groups_by_hand():
    # one group each: P(X+ > X-) = Phi((0.7 - 0.4) / sqrt(0.01 + 0.03))
    auc = mixture_auroc([(10, 0.4, 0.03)], [(20, 0.7, 0.01)])
    assert auc == pytest.approx(norm.cdf(0.3 / np.sqrt(0.04)))


def test_estimate_at_k10_is_close_to_exact_on_realistic_scores():
    rng = np.random.default_rng(0)
    neg, pos = rng.beta(2, 4, 300), rng.beta(4, 2, 200)
    exact = roc_auc_score(np.r_[np.zeros(300), np.ones(200)], np.r_[neg, pos])
    est = mixture_auroc(score_groups(neg, k=10), score_groups(pos, k=10))
    assert est == pytest.approx(exact, abs=0.01)


def test_small_class_withholds_auroc_and_both_classes_groups():
    # 3 negatives < k = 10. Sending the positives' groups (20 patients) beside n = 23
    # would reveal the 3, so neither class's groups leave.
    y = np.r_[np.zeros(3), np.ones(20)]
    s = site_eval_stats(y, np.linspace(0.1, 0.9, 23), threshold=0.5, k=10)
    assert s.auroc is None and s.groups_neg is None and s.groups_pos is None
    # at 0.5 the 3 negatives and 12 of the positives are right, 8 positives wrong: the 8
    # incorrect are a count under k too, so n-correct is withheld as well
    assert s.n == 23 and s.n_correct is None


def test_tiny_test_set_shares_nothing():
    s = site_eval_stats(np.array([0, 1, 1]), np.array([0.2, 0.7, 0.9]), threshold=0.5, k=10)
    assert (s.n, s.n_correct, s.loss_sum, s.auroc, s.groups_neg, s.groups_pos) == (None,) * 6
    wire = s.to_metrics()
    assert wire["num-examples"] == wire["n-correct"] == wire["loss-sum"] == -1.0
    assert pool_site_stats([s])["sites_suppressed"] == 1


def test_site_stats_match_sklearn_when_nothing_is_suppressed():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 200)
    p = np.clip(0.3 * y + rng.uniform(0, 0.7, 200), 0, 1)
    s = site_eval_stats(y, p, threshold=0.5, k=10)
    assert s.auroc == pytest.approx(roc_auc_score(y, p))
    assert s.accuracy == pytest.approx(np.mean((p >= 0.5) == y))
    expected_loss = -np.sum(y * np.log(p.clip(1e-12)) + (1 - y) * np.log((1 - p).clip(1e-12)))
    assert s.loss_sum == pytest.approx(expected_loss)
    assert sum(g[0] for g in s.groups_pos) == int(y.sum())


def test_wire_round_trip():
    s = SiteEvalStats(40, 30, 4.2, 0.8, [(20, 0.3, 0.01)], [(20, 0.6, 0.02)])
    assert SiteEvalStats.from_metrics(s.to_metrics()) == s
    t = SiteEvalStats(16, 15, 4.2, None, None, None)
    assert SiteEvalStats.from_metrics(t.to_metrics()) == t


def test_pooled_accuracy_is_over_all_rows_not_a_mean_of_sites():
    a = SiteEvalStats(100, 90, 10.0, None, [(10, 0.2, 0.0)], [(90, 0.8, 0.0)])
    b = SiteEvalStats(20, 10, 5.0, None, [(10, 0.8, 0.0)], [(10, 0.2, 0.0)])
    pooled = pool_site_stats([a, b])
    assert pooled["accuracy"] == pytest.approx(100 / 120)
    assert pooled["loss"] == pytest.approx(15.0 / 120)
    # negatives: 10 at .2, 10 at .8; positives: 90 at .8, 10 at .2 (zero variance: exact)
    # (90*10 [.8>.2] + .5*90*10 [tie] + .5*10*10 [tie]) / (100*20) = 1400 / 2000
    assert pooled["auroc"] == pytest.approx(0.7)


def _hand_dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    p, t = pred.reshape(len(pred), -1), truth.reshape(len(truth), -1)
    inter, a, b = (p & t).sum(1), p.sum(1), t.sum(1)
    dice = np.where(a + b == 0, 1.0, 2 * inter / np.maximum(a + b, 1))
    union = a + b - inter
    return dice, np.where(union == 0, 1.0, inter / np.maximum(union, 1))


def test_segmentation_sums_match_hand_computed_dice_and_iou():
    from medfl.evaluation.stats import segmentation_stats

    rng = np.random.default_rng(0)
    truth = rng.random((12, 1, 8, 8)) < 0.3
    probs = np.clip(truth * 0.7 + rng.random(truth.shape) * 0.5, 0, 1)
    truth[0] = False  # an empty mask predicted empty scores 1
    probs[0] = 0.0
    dice, iou = _hand_dice_iou(probs >= 0.5, truth)
    stats = segmentation_stats(truth.astype(np.float32), probs, threshold=0.5, k=10)
    assert stats.n == 12 and dice[0] == 1.0
    assert stats.dice == pytest.approx(dice.mean()) and stats.iou == pytest.approx(iou.mean())
    assert stats.dice_sqsum == pytest.approx(np.square(dice).sum())
    back = type(stats).from_metrics(stats.to_metrics())
    assert back.dice == pytest.approx(stats.dice)


def test_segmentation_below_k_images_shares_nothing():
    from medfl.evaluation.stats import SUPPRESSED, segmentation_stats

    stats = segmentation_stats(np.ones((4, 1, 8, 8), np.float32), np.ones((4, 1, 8, 8)),
                               threshold=0.5, k=10)
    m = stats.to_metrics()
    assert m["num-examples"] == SUPPRESSED and "dice-sum" not in m


def test_mixture_auroc_over_thousands_of_groups_is_the_exact_auroc_with_ties():
    # k = 1 with rounded scores: over 256 groups per class (several blocks) and many ties
    rng = np.random.default_rng(5)
    neg, pos = rng.normal(0, 1, 3000).round(1), rng.normal(0.8, 1, 2000).round(1)
    exact = roc_auc_score(np.r_[np.zeros(3000), np.ones(2000)], np.r_[neg, pos])
    assert mixture_auroc(score_groups(neg, k=1), score_groups(pos, k=1)) == pytest.approx(
        exact, abs=1e-12)
