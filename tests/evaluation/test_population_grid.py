"""Figures from a score histogram on the public grid: against sklearn on the binned scores,
and the rules for noisy counts (as released, NaN where undefined)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medfl.evaluation import histograms as grid


def _scores(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.4).astype(int)
    logits = rng.normal(-0.3, 1.6, n) + 1.4 * y
    return y, 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_point_figures_equal_sklearn_on_the_binned_scores(threshold):
    y, p = _scores(1)
    b = grid.bin_index(p, threshold=threshold)
    binned = grid.bin_probabilities(threshold)[b]  # each score replaced by its bin's value
    pred = p >= threshold

    f = grid.point_metrics(grid.histogram(y, p, threshold=threshold), threshold=threshold)

    # ties in one bin count one half: exactly sklearn's AUROC of the bin index
    assert f["auroc"] == pytest.approx(roc_auc_score(y, b))
    assert f["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert f["specificity"] == pytest.approx(recall_score(1 - y, ~pred))
    assert f["fpr"] == pytest.approx(1 - recall_score(1 - y, ~pred))
    assert f["ppv"] == pytest.approx(precision_score(y, pred))
    assert f["npv"] == pytest.approx(precision_score(1 - y, ~pred))
    assert f["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert f["f1"] == pytest.approx(f1_score(y, pred))
    assert f["brier"] == pytest.approx(brier_score_loss(y, binned))
    assert f["loss"] == pytest.approx(log_loss(y, binned))
    assert f["calibration"] == pytest.approx(binned.mean() - y.mean())
    ece = sum(abs((binned[b == k] - y[b == k]).sum()) for k in range(grid.N_BINS)) / len(y)
    assert f["ece"] == pytest.approx(ece)
    assert (f["n"], f["n_pos"]) == (len(y), y.sum())


def test_the_threshold_is_an_edge_and_a_score_on_it_is_predicted_positive():
    assert grid.logit(0.3) in grid.score_edges(0.3)
    assert grid.bin_index(np.array([0.3]), threshold=0.3)[0] == \
        int(np.argmax(grid.above_threshold(0.3)))


def test_noisy_counts_enter_the_sums_as_released():
    hist = np.zeros((2, grid.N_BINS))
    hist[1, 0], hist[1, 2], hist[1, 7] = -2.0, 3.0, 9.0  # positives (noisy): total 10
    hist[0, 0], hist[0, 3], hist[0, 7] = 6.0, 3.0, 1.0  # negatives: total 10
    f = grid.point_metrics(hist, threshold=0.5)  # bins 4-7 are at or above 0.5
    assert (f["n_pos"], f["n_neg"]) == (10.0, 10.0)
    assert f["sensitivity"] == pytest.approx(9 / 10)
    assert f["specificity"] == pytest.approx(9 / 10)
    assert f["ppv"] == pytest.approx(9 / 10)
    # pairs by hand: each positive bin against the negatives below it and half of those
    # beside it, the -2 included as released
    mann_whitney = -2 * (0 + 0.5 * 6) + 3 * (6 + 0) + 9 * (9 + 0.5 * 1)
    assert f["auroc"] == pytest.approx(mann_whitney / (10 * 10))
    hist[1, 0] = -8.0  # pairs (79.5) over n1 n0 (40): above 1, so clipped to the range
    assert grid.point_metrics(hist, threshold=0.5)["auroc"] == 1.0


def test_a_figure_whose_denominator_is_not_positive_is_undefined():
    hist = np.zeros((2, grid.N_BINS))
    hist[0, 2], hist[1, 5], hist[1, 1] = 20.0, 3.0, -4.0  # noisy positives total -1
    f = grid.point_metrics(hist, threshold=0.5)
    assert math.isnan(f["sensitivity"]) and math.isnan(f["auroc"])
    assert f["specificity"] == 1.0


def test_figures_score_a_stack_of_histograms_row_by_row():
    y, p = _scores(2)
    y2, p2 = _scores(3)
    stack = np.stack([grid.histogram(y, p, threshold=0.5), grid.histogram(y2, p2, threshold=0.5)])
    f = grid.figures(stack, threshold=0.5)
    assert f["auroc"].shape == (2,)
    assert f["auroc"][1] == pytest.approx(roc_auc_score(y2, grid.bin_index(p2, threshold=0.5)))


def test_roc_points_end_at_the_corners_and_reliability_keeps_filled_bins():
    y, p = _scores(4)
    h = grid.histogram(y, p, threshold=0.5)
    roc = grid.roc_points(h, threshold=0.5)
    assert (roc["fpr"][0], roc["tpr"][0]) == (0.0, 0.0)
    assert (roc["fpr"][-1], roc["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(roc["fpr"]) >= 0) and np.all(np.diff(roc["tpr"]) >= 0)
    bins = grid.reliability(h, threshold=0.5)
    assert sum(b["n"] for b in bins) == len(y)
    b = grid.bin_index(p, threshold=0.5)
    top = grid.N_BINS - 1
    assert bins[-1]["observed"] == pytest.approx(y[b == top].mean(), abs=1e-4)


def test_ece_is_corrected_for_the_noise_variance_of_each_bin():
    y, p = _scores(5)
    h = grid.histogram(y, p, threshold=0.5)
    prob = grid.bin_probabilities(0.5)
    err = h[0] * prob - h[1] * (1 - prob)
    assert grid.point_metrics(h, threshold=0.5, noise_var=0.0)["ece"] == \
        pytest.approx(np.abs(err).sum() / len(y))
    var = 9.0 * (prob ** 2 + (1 - prob) ** 2)  # each count's noise var 9, by hand
    by_hand = np.sqrt(np.clip(err ** 2 - var, 0, None)).sum() / len(y)
    assert grid.point_metrics(h, threshold=0.5, noise_var=9.0)["ece"] == pytest.approx(by_hand)
    assert by_hand < np.abs(err).sum() / len(y)
