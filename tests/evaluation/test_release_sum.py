"""The report release split into a SecAgg+ vector and clear metrics, and the pooled
release the server rebuilds from the sum (hand-computed numbers)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfl.evaluation.release import CellRelease, ReportStats
from medfl.evaluation.release_sum import (
    REPORT_SCALE,
    SECURE_SUM_KEY,
    ReportLayout,
    pooled_release,
    secure_entry,
    site_releases,
    site_report_metrics,
    split_release,
)

SEG = ReportLayout(n_hist=0, n_sums=16, n_explain=0, n_seg=8)


def _seg_release(offset: float, stds: list[float], eps: float) -> dict:
    cells = (CellRelease(sums=np.arange(8.0) + offset),
             CellRelease(sums=np.arange(8.0) * 2 + offset))
    return ReportStats(cells, sums_std=tuple(stds), test_epsilon=eps).to_metrics()


def test_the_vector_is_the_values_over_the_scale_and_the_rest_stays_clear():
    release = _seg_release(1.0, [0.5] * 8, 0.2)
    vector, clear = split_release(release)
    np.testing.assert_array_equal(vector * REPORT_SCALE,
                                  [*range(1, 9), *(2 * i + 1 for i in range(8))])
    assert clear == {"hist-std": 0.0, "explain-std": 0.0, "sums-std": [0.5] * 8,
                     "test-epsilon": 0.2}


def test_the_pooled_release_sums_values_and_adds_variances():
    a = _seg_release(1.0, [3.0] * 8, 0.2)
    b = _seg_release(10.0, [4.0] * 7 + [0.0], 0.5)
    (va, ca), (vb, cb) = split_release(a), split_release(b)
    pooled = pooled_release(va + vb, {"a": ca, "b": cb}, layout=SEG)
    assert pooled["sums"] == [2 * i + 11 for i in range(8)] + [4 * i + 11 for i in range(8)]
    assert pooled["sums-std"] == [5.0] * 7 + [3.0]  # sqrt(3^2 + 4^2), sqrt(3^2 + 0)
    assert pooled["test-epsilon"] == 0.5 and pooled["hist"] == [] and pooled["explain"] == []
    stats = ReportStats.from_metrics(pooled, n_cells=2)
    assert stats.cells[1].sums[0] == 11.0


def test_a_sum_of_another_length_or_a_site_without_stds_is_refused():
    _, clear = split_release(_seg_release(0.0, [1.0] * 8, 0.1))
    with pytest.raises(ValueError, match=r"this run's has \(16,\) values"):
        pooled_release(np.zeros(15), {"a": clear}, layout=SEG)
    with pytest.raises(KeyError):
        pooled_release(np.zeros(16),
                       {"a": {k: v for k, v in clear.items() if k != "explain-std"}},
                       layout=SEG)
    with pytest.raises(ValueError, match="one cell's sums"):
        pooled_release(np.zeros(16), {"a": {**clear, "sums-std": [1.0]}}, layout=SEG)


def test_the_run_directory_entry_reads_back_as_one_release_and_each_sites_clear_metrics():
    hist = ReportLayout(n_hist=2, n_sums=0, n_explain=1)
    clear = {"x": {"hist-std": 1.0, "explain-std": 2.0, "sums-std": [], "test-epsilon": 0.3},
             "y": {"hist-std": 1.0, "explain-std": 2.0, "sums-std": [], "test-epsilon": 0.4}}
    raw = secure_entry(pooled_release(np.array([1.0, 2.0, 3.0]) / REPORT_SCALE, clear,
                                      layout=hist), clear)
    releases, sites = site_releases(raw)
    assert list(releases) == [SECURE_SUM_KEY] and sites == ["x", "y"]
    assert releases[SECURE_SUM_KEY]["hist"] == [1.0, 2.0]
    assert releases[SECURE_SUM_KEY]["hist-std"] == pytest.approx(math.sqrt(2))
    assert site_report_metrics(raw) == clear
    plain = {"x": {"hist": [1.0]}}
    assert site_releases(plain) == (plain, None) and site_report_metrics(plain) == plain
