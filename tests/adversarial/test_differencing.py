"""A differencing attack on the monitoring release (issue 19).

A hostile coordinator sends one site two crafted logistic models that differ only in
their bias, by just enough that one target patient's score crosses a bin edge of the
public grid and nobody else's does. Without noise, the difference of the two released
histograms is that patient, exactly: +1 in the bin it moved into, -1 in the one it left.
Through the Gaussian mechanism the attacker's estimate of that +1 carries the noise of
both releases (variance 2·std²), whatever the models: the test replays the attack over
many independent runs (fresh node memory and ledger each, so the site answers every
one) and checks the estimates' spread against a chi-square band.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_config
from scipy.stats import chi2

from medfl.evaluation.histograms import N_BINS, score_edges
from medfl.evaluation.stats import SiteEvalStats
from medfl.site import DictMemory, ModelRequest, Site

RUNS = 300
GAP = 1e-3  # how far the bias moves: the target crosses logit 0, nobody else an edge


def _open(tmp_path, i: int, test_epsilon: float) -> Site:
    raw = run_config(preprocessing__scaling="none", evaluation__personal_epochs=0,
                     num_server_rounds=2, evaluation__monitor_every=1,
                     privacy__test_epsilon=test_epsilon, state_dir=str(tmp_path / f"run-{i}"))
    return Site.open(raw, {"partition-id": 0, "num-partitions": 4}, run_id=i, run_key=i,
                     memory=DictMemory())


def _crafted_models(site: Site) -> tuple[dict, dict, int, int]:
    """Two models that differ only in bias, the target patient, and the bin it enters."""
    x = site.data.x_test.astype(np.float32)
    w = torch.as_tensor(np.random.default_rng(0).normal(0, 0.5, (1, x.shape[1])),
                        dtype=torch.float32)
    s = (torch.as_tensor(x) @ w.T).reshape(-1).double().numpy()
    target = int(np.argmin(np.abs(s - np.median(s))))
    bias = -float(s[target]) - GAP / 2  # the target sits just under logit 0
    # nobody else within GAP under an edge: only the target crosses one
    z = s + bias
    edges = score_edges(0.5)
    others = np.delete(z, target)
    assert not any(((e - GAP <= others) & (others < e)).any() for e in edges)
    before = {"0.weight": w, "0.bias": torch.tensor([bias], dtype=torch.float32)}
    after = {"0.weight": w, "0.bias": torch.tensor([bias + GAP], dtype=torch.float32)}
    entered = int(np.searchsorted(edges, 0.0, side="right"))
    return before, after, target, entered


def _attack(site: Site, before: dict, after: dict) -> tuple[np.ndarray, float]:
    """The difference of the two released histograms, and one release's noise std."""
    first = site.evaluate(ModelRequest(weights=before, server_round=1))
    second = site.evaluate(ModelRequest(weights=after, server_round=2))
    a = SiteEvalStats.from_metrics(first, threshold=0.5)
    b = SiteEvalStats.from_metrics(second, threshold=0.5)
    assert a.hist_std == b.hist_std
    return b.hist - a.hist, a.hist_std


def test_without_noise_the_difference_is_the_target_patient(tmp_path):
    site = _open(tmp_path, 0, test_epsilon=0.0)
    before, after, target, entered = _crafted_models(site)
    diff, std = _attack(site, before, after)
    label = int(np.asarray(site.data.y_test)[target])
    expected = np.zeros((2, N_BINS))
    expected[label, entered], expected[label, entered - 1] = 1.0, -1.0
    np.testing.assert_array_equal(diff, expected)  # the attack works on exact figures
    assert std == 0.0


def test_with_noise_the_attackers_estimate_has_the_mechanisms_variance(tmp_path):
    probe = _open(tmp_path, 0, test_epsilon=1.0)
    before, after, target, entered = _crafted_models(probe)
    label = int(np.asarray(probe.data.y_test)[target])
    estimates, stds = [], set()
    for i in range(RUNS):
        diff, std = _attack(_open(tmp_path, i + 1, test_epsilon=1.0), before, after)
        estimates.append(diff[label, entered])
        stds.add(std)
    assert len(stds) == 1 and (std := stds.pop()) > 0.5  # one planned σ, far from exact
    e = np.asarray(estimates)
    # (n - 1) s² / (2 std²) is chi-square with n - 1 degrees of freedom
    stat = (RUNS - 1) * float(e.var(ddof=1)) / (2 * std ** 2)
    assert chi2.ppf(0.0005, RUNS - 1) < stat < chi2.ppf(0.9995, RUNS - 1)
    assert float(e.mean()) == pytest.approx(1.0, abs=4 * np.sqrt(2 / RUNS) * std)
