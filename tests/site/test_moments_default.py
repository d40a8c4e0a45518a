"""The default feature moments are an accounted Gaussian release; without DP (nothing to
account them in) a site sends them exact."""

from __future__ import annotations

import numpy as np
from conftest import run_config

from medfl import tasks
from medfl.config import parse_run_config
from medfl.site import feature_stats
from medfl.site.releases import exact_moments


def _by_hand(cfg, data):
    spec = tasks.task_for(cfg).feature_spec()
    x = data.x_train[:, list(spec.numeric_idx)].astype(np.float64)
    low, high = spec.bounds[:, 0], spec.bounds[:, 1]
    u = (np.clip(x, low, high) - low) / (high - low)
    return u.sum(axis=0), (u ** 2).sum(axis=0)


def test_the_default_run_noises_its_moments_and_a_run_without_dp_does_not():
    dp = parse_run_config(run_config())
    assert dp.preprocessing.stats_noise_multiplier > 0 and not exact_moments(dp)
    no_dp = parse_run_config(run_config(privacy__enabled=False))
    assert exact_moments(no_dp)
    data = tasks.task_for(dp).load_site("switzerland")
    sums, sumsq = _by_hand(dp, data)
    exact = feature_stats(no_dp, data, rng=np.random.default_rng(0))
    np.testing.assert_allclose(exact.sums, sums, rtol=1e-12)
    np.testing.assert_allclose(exact.sumsq, sumsq, rtol=1e-12)
    noised = feature_stats(dp, data, rng=np.random.default_rng(0))
    # noise of σ·sqrt(2d) = 5·sqrt(10) per component: nowhere near the exact sums
    assert np.all(np.abs(noised.sums - sums) > 1e-6) and noised.count == len(data.x_train)
