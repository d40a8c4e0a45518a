"""Pooled segmentation figures from noisy sums: means, delta-method CIs with the noise,
Welch gaps, the utility floor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from medfl.evaluation.population import SiteCell
from medfl.evaluation.population_seg import (
    PooledSums,
    dice_gap,
    floor_reason,
    image_diagonal,
    mean_of,
    segmentation_metrics,
)
from medfl.evaluation.release import SEG_SUMS, CellRelease

SIZE = 64


def _sums(dice: np.ndarray, hd_px: np.ndarray) -> np.ndarray:
    """Exact SEG_SUMS of per-image Dice (IoU = Dice / 2 here) and HD95 in pixels."""
    hd = hd_px / image_diagonal(SIZE)
    iou = dice / 2
    return np.array([len(dice), dice.sum(), (dice ** 2).sum(), iou.sum(), (iou ** 2).sum(),
                     len(hd), hd.sum(), (hd ** 2).sum()])


def _cell(name: str, sums: np.ndarray, std: float | tuple[float, ...] = ()) -> SiteCell:
    return SiteCell(name, CellRelease(sums=sums), std)


def test_exact_sums_give_the_pooled_means_and_t_intervals():
    a, b = np.linspace(0.6, 0.9, 20), np.linspace(0.4, 0.8, 15)
    hd_a, hd_b = np.linspace(2, 9, 20), np.linspace(3, 12, 15)
    p = PooledSums.pool([_cell("a", _sums(a, hd_a)), _cell("b", _sums(b, hd_b))])

    m = segmentation_metrics(p, k=10, diagonal=image_diagonal(SIZE))

    both, hd = np.r_[a, b], np.r_[hd_a, hd_b]
    ref = sps.t.interval(0.95, len(both) - 1, loc=both.mean(), scale=sps.sem(both))
    assert m["dice"]["value"] == pytest.approx(both.mean())
    assert m["dice"]["ci"] == pytest.approx(list(ref))
    assert m["iou"]["value"] == pytest.approx(both.mean() / 2)
    ref_hd = sps.t.interval(0.95, len(hd) - 1, loc=hd.mean(), scale=sps.sem(hd))
    assert m["hd95"]["value"] == pytest.approx(hd.mean())
    assert m["hd95"]["ci"] == pytest.approx(list(ref_hd))
    assert m["hd95"]["images"] == 35


def test_the_noise_variance_is_added_by_the_delta_method():
    dice = np.linspace(0.5, 0.9, 40)
    std = np.array([3.0, 2.0, 2.0, 2.0, 2.0, 3.0, 2.0, 2.0])
    exact = mean_of(PooledSums.pool([_cell("a", _sums(dice, dice))]), "dice", "n")
    noisy = mean_of(PooledSums.pool([_cell("a", _sums(dice, dice), tuple(std))]), "dice", "n")
    assert exact is not None and noisy is not None
    n, mean = 40, dice.mean()
    by_hand = (std[1] ** 2 + mean ** 2 * std[0] ** 2) / n ** 2
    assert noisy.var - exact.var == pytest.approx(by_hand)
    assert exact.var == pytest.approx(dice.var(ddof=1) / n)


def test_pooling_adds_the_noise_variances():
    s = _sums(np.full(12, 0.7), np.full(12, 4.0))
    p = PooledSums.pool([_cell("a", s, (1.0,) * len(SEG_SUMS)),
                         _cell("b", s, (2.0,) * len(SEG_SUMS))])
    assert p.sites == ("a", "b") and p.n == 24
    assert p.get("dice") == pytest.approx((2 * s[1], 5.0))


def test_a_cell_under_k_by_its_noisy_count_is_suppressed():
    s = _sums(np.full(12, 0.7), np.full(12, 4.0))
    s[0] = 8.6  # the noisy image count
    p = PooledSums.pool([_cell("a", s, (2.0,) * len(SEG_SUMS))])
    m = segmentation_metrics(p, k=10, diagonal=image_diagonal(SIZE))
    assert all(f["suppressed"] and f["value"] is None for f in m.values())
    reason = floor_reason(p, k=10)
    assert reason is not None and "k=10" in reason and "noisy" in reason
    assert dice_gap(p, p, k=10)["suppressed"]


def test_dice_gap_without_noise_is_welchs_interval():
    a, b = np.linspace(0.6, 0.9, 20), np.linspace(0.4, 0.8, 15)
    ref = PooledSums.pool([_cell("x", _sums(a, a))])
    comp = PooledSums.pool([_cell("x", _sums(b, b))])
    g = dice_gap(ref, comp, k=10)
    welch = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)
    assert g["value"] == pytest.approx(b.mean() - a.mean())
    assert g["ci"] == pytest.approx([welch.low, welch.high])
    assert g["flagged"] is True


def test_image_diagonal_of_a_square_image():
    assert image_diagonal(64) == pytest.approx(math.hypot(64, 64))
