"""The consortium's prevalence from the sites' released label counts, the class weight a
site derives from it, and the report's second operating point (all hand-computed)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfl.data.prevalence import checked_prevalence, pooled_prevalence, pos_weight_for
from medfl.data.scaling import FeatureMoments, moments_sensitivity, site_moments
from medfl.errors import ConfigError
from medfl.evaluation.histograms import operating_point


def _m(count, positives):
    return FeatureMoments(count, np.zeros(1), np.zeros(1), positives=positives)


def test_pooled_prevalence_is_the_sum_of_positives_over_the_sum_of_rows():
    # (12 + 3 + 0) / (100 + 50 + 50) = 15 / 200
    assert pooled_prevalence([_m(100, 12), _m(50, 3), _m(50, 0)]) == pytest.approx(0.075)


def test_pooled_prevalence_is_clipped_and_missing_without_every_sites_count():
    assert pooled_prevalence([_m(100, -4.0), _m(100, 1.0)]) == 0.01  # noise below zero
    assert pooled_prevalence([_m(10, 10.0), _m(10, 11.0)]) == 0.99
    assert pooled_prevalence([_m(100, 12), _m(50, None)]) is None


def test_a_site_clips_a_sent_prevalence_and_refuses_a_non_finite_one():
    assert pos_weight_for(0.1) == pytest.approx(9.0)
    assert pos_weight_for(0.5) == pytest.approx(1.0)
    assert pos_weight_for(1e-9) == pytest.approx(99.0)  # clipped to 0.01
    assert pos_weight_for(2.0) == pytest.approx(1 / 99)  # clipped to 0.99
    for bad in (float("nan"), float("inf"), "0.1", True, None):
        with pytest.raises(ConfigError, match="expected a finite number"):
            checked_prevalence(bad)


def test_the_label_count_joins_the_moments_release_and_its_sensitivity():
    x = np.array([[0.0], [1.0], [0.5], [1.0]])
    y = np.array([1, 0, 1, 1])
    exact = site_moments(x, bounds=np.array([[0.0, 1.0]]), labels=y)
    assert exact.positives == 3.0 and exact.sums.tolist() == [2.5]
    # one [0, 1] column: sums and sumsq change by <= 1 each, the label count by <= 1
    assert moments_sensitivity(1, labels=True) == pytest.approx(math.sqrt(3))
    assert moments_sensitivity(4) == pytest.approx(math.sqrt(8))
    noised = site_moments(x, bounds=np.array([[0.0, 1.0]]), labels=y, noise_multiplier=2.0,
                          rng=np.random.default_rng(0))
    draws = np.random.default_rng(0).normal(0.0, 2.0 * math.sqrt(3), size=3)
    assert noised.positives == pytest.approx(3.0 + draws[2])
    assert site_moments(x, bounds=np.array([[0.0, 1.0]])).positives is None


# A (2, 8) histogram on the grid of threshold 0.5: edges at logit offsets -3..3, so the
# cut at edge j (probability sigmoid(j - 3)) predicts bins j + 1 .. 7 positive.
HIST = np.array([[30, 20, 10, 10, 5, 3, 2, 0],    # 80 negatives
                 [0, 1, 1, 2, 4, 4, 4, 4]])       # 20 positives


def test_the_second_operating_point_is_the_highest_edge_reaching_the_sensitivity():
    # positives at or above bin b+1 for the edges from the top: 4, 8, 12, 16, 18, 19, 20
    point = operating_point(HIST, threshold=0.5, sensitivity=0.8)
    # 16 / 20 = 0.8 first at the edge of offset 0 (bins 4..7): threshold 0.5
    assert point["threshold"] == pytest.approx(0.5)
    assert point["sensitivity"] == pytest.approx(16 / 20)
    assert point["specificity"] == pytest.approx((80 - 10) / 80)   # fp = 5 + 3 + 2 + 0
    assert point["ppv"] == pytest.approx(16 / 26)
    assert point["npv"] == pytest.approx(70 / 74)
    higher = operating_point(HIST, threshold=0.5, sensitivity=0.9)
    # 18 / 20 at offset -1 (bins 3..7): fp = 20, tp = 18
    assert higher["threshold"] == pytest.approx(1 / (1 + math.e))
    assert (higher["sensitivity"], higher["specificity"]) == pytest.approx((0.9, 60 / 80))


def test_the_second_operating_point_handles_noise_and_no_positives():
    noisy = HIST.astype(float).copy()
    noisy[1, 7] = -3.0  # a noisy negative count is clipped at 0
    point = operating_point(noisy, threshold=0.5, sensitivity=0.25)
    # positives 16 after clipping; from the top 0, 4, 8 -> 4 / 16 = 0.25 at offset 2
    assert point["threshold"] == pytest.approx(1 / (1 + math.exp(-2)))
    assert point["sensitivity"] == pytest.approx(0.25)
    # every positive lies above the lowest edge (offset -3): bin 0 holds negatives only
    every = operating_point(HIST, threshold=0.5, sensitivity=1.0)
    assert every["threshold"] == pytest.approx(1 / (1 + math.exp(3)))
    assert (every["specificity"], every["npv"]) == pytest.approx((30 / 80, 1.0))
    low = HIST.astype(float).copy()
    low[1, 0] = 1.0  # one positive in the lowest bin: only "everyone positive" reaches 1
    everyone = operating_point(low, threshold=0.5, sensitivity=1.0)
    assert everyone["threshold"] == 0.0 and everyone["specificity"] == 0.0
    assert math.isnan(everyone["npv"])
    assert operating_point(np.vstack([HIST[0], np.zeros(8)]), threshold=0.5,
                           sensitivity=0.8) is None


def test_a_site_derives_its_weight_from_the_sent_prevalence_and_vets_it():
    from dataclasses import replace

    from conftest import run_config

    from medfl.config import parse_run_config
    from medfl.data.scaling import Standardizer
    from medfl.federation.records import scaler_from_config, scaler_to_config
    from medfl.site.moments import training_config

    sent = scaler_to_config(Standardizer((0,), (1.0,), (2.0,), prevalence=0.2))
    assert sent["scaler-prevalence"] == 0.2
    cfg = parse_run_config(run_config(task="tabular"))
    assert cfg.train.pos_weight == "auto"  # the default
    got = training_config(cfg, scaler_from_config(sent))
    assert got.train.pos_weight == pytest.approx(4.0)  # (1 - 0.2) / 0.2
    fixed = replace(cfg, train=replace(cfg.train, pos_weight=1.5))
    assert training_config(fixed, scaler_from_config(sent)).train.pos_weight == 1.5
    assert scaler_from_config({**sent, "scaler-prevalence": 1e-6}).prevalence == 0.01
    with pytest.raises(ConfigError, match="prevalence=nan"):
        scaler_from_config({**sent, "scaler-prevalence": float("nan")})


def test_pos_weight_accepts_auto_or_a_positive_number_only():
    from conftest import run_config

    from medfl.config import parse_run_config

    assert parse_run_config(run_config(train__pos_weight=3)).train.pos_weight == 3.0
    for bad in ("balanced", 0.0, -1.0, float("inf"), True):
        with pytest.raises(ConfigError, match="train.pos-weight"):
            parse_run_config(run_config(train__pos_weight=bad))
