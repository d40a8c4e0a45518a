"""Federated standardisation from per-site moments equals pooled standardisation."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.data.scaling import Standardizer, local_standardizer, pool_moments, site_moments
from medfl.errors import DataError

BOUNDS = np.array([[0.0, 100.0], [-5.0, 5.0]])


def _sites(rng):
    return [np.column_stack([rng.uniform(10, 90, n), rng.normal(0, 1.5, n)])
            for n in (30, 120, 55)]


def test_pooled_moments_equal_numpy_on_the_pooled_rows():
    rng = np.random.default_rng(0)
    sites = _sites(rng)
    scaler = pool_moments([site_moments(x, bounds=BOUNDS) for x in sites], bounds=BOUNDS,
                          columns=(3, 7))
    pooled = np.clip(np.concatenate(sites), BOUNDS[:, 0], BOUNDS[:, 1])
    np.testing.assert_allclose(scaler.mean, pooled.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(scaler.std, pooled.std(axis=0), rtol=1e-8)
    assert scaler.columns == (3, 7)


def test_values_outside_public_bounds_are_clipped_before_leaving():
    x = np.array([[1000.0, 0.0]] * 10)
    m = site_moments(x, bounds=BOUNDS)
    assert m.sums[0] == pytest.approx(10.0)  # clipped to 100 -> 1.0 on the [0, 1] scale


def test_noise_has_the_calibrated_standard_deviation():
    x = np.full((50, 2), 50.0)
    rng = np.random.default_rng(1)
    draws = np.array([site_moments(x, bounds=BOUNDS, noise_multiplier=2.0, rng=rng).sums[0]
                      for _ in range(4000)])
    # sensitivity sqrt(2 d) = 2 for d = 2 columns; std = 2.0 * 2 = 4
    assert draws.std() == pytest.approx(4.0, rel=0.05)
    assert draws.mean() == pytest.approx(25.0, abs=0.3)


def test_standardizer_transforms_only_its_columns():
    s = Standardizer((1,), (10.0,), (2.0,))
    out = s.transform(np.array([[5.0, 14.0, 3.0]]))
    np.testing.assert_allclose(out, [[5.0, 2.0, 3.0]])
    assert Standardizer.from_dict(s.to_dict()) == s


def test_local_standardizer_matches_numpy_and_guards_constant_columns():
    x = np.array([[1.0, 7.0], [3.0, 7.0], [5.0, 7.0]])
    s = local_standardizer(x, columns=(0, 1))
    assert s.mean == (3.0, 7.0)
    assert s.std[0] == pytest.approx(np.std([1, 3, 5]))
    assert s.std[1] == 1.0  # a constant column (e.g. Switzerland's chol) is left unscaled


def test_no_sites_is_a_clear_error():
    with pytest.raises(DataError, match="no site reported"):
        pool_moments([], bounds=BOUNDS, columns=(0, 1))


def test_wrong_shape_is_named():
    with pytest.raises(DataError, match=r"shape \(n, 2\), got \(4, 3\)"):
        site_moments(np.zeros((4, 3)), bounds=BOUNDS)
