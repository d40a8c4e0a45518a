"""A site's test-set releases: only at planned rounds, σ reserved before any test row is
read, and the monitoring release's noise over both models it describes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_config

import medfl.site.site as site_module
from medfl.errors import ConfigError, PrivacyBudgetExceeded
from medfl.evaluation.stats import PERSONAL, SiteEvalStats
from medfl.privacy.mechanisms import MONITOR, REPORT
from medfl.site import DictMemory, ModelRequest, Site
from medfl.site.accountant import SiteAccountant


def _site(**overrides) -> Site:
    raw = run_config(preprocessing__scaling="none", num_server_rounds=6,
                     evaluation__monitor_every=3, **overrides)
    return Site.open(raw, {"partition-id": 0, "num-partitions": 4}, run_id=1, run_key=1,
                     memory=DictMemory())


def _weights() -> dict[str, torch.Tensor]:
    return {"0.weight": torch.full((1, 13), 0.05), "0.bias": torch.zeros(1)}


def _never(*args, **kwargs):
    raise AssertionError("the site read its test rows")


@pytest.mark.parametrize("server_round", [1, 2, 4, 5])
def test_a_monitoring_request_at_an_unplanned_round_is_refused(monkeypatch, server_round):
    monkeypatch.setattr(site_module.evaluation, "evaluation_metrics", _never)
    site = _site(evaluation__personal_epochs=0)  # monitoring rounds 3 and 6
    with pytest.raises(ConfigError, match=r"monitoring rounds are \[3, 6\]"):
        site.evaluate(ModelRequest(weights=_weights(), server_round=server_round))


def test_the_planned_rounds_are_answered_once_each():
    site = _site(evaluation__personal_epochs=0)
    for r in (3, 6):
        assert site.evaluate(ModelRequest(weights=_weights(), server_round=r))["hist"]
    with pytest.raises(ConfigError, match="once per round"):
        site.evaluate(ModelRequest(weights=_weights(), server_round=6))


@pytest.mark.parametrize("kind", [MONITOR, REPORT])
def test_a_refused_reservation_reads_no_test_row(monkeypatch, kind):
    def refuse(self, release, *, server_round, n_test):
        assert release == kind
        raise PrivacyBudgetExceeded("test-set budget spent")

    monkeypatch.setattr(SiteAccountant, "reserve_test", refuse)
    monkeypatch.setattr(site_module.evaluation, "evaluation_metrics", _never)
    monkeypatch.setattr(site_module.report, "report", _never)
    site = _site(evaluation__personal_epochs=0)
    with pytest.raises(PrivacyBudgetExceeded):
        if kind == MONITOR:
            site.evaluate(ModelRequest(weights=_weights(), server_round=3))
        else:
            site.report(ModelRequest(weights=_weights(), run_name="t"))


def test_the_monitoring_release_covers_both_models_in_one_release(monkeypatch):
    # σ = 0.7 reserved; each patient adds 1 to one bin of each model's histogram: the
    # sensitivity over the global and the personalised model is sqrt(2)
    monkeypatch.setattr(SiteAccountant, "reserve_test",
                        lambda self, release, *, server_round, n_test: 0.7)
    site = _site(evaluation__personal_epochs=1)
    m = site.evaluate(ModelRequest(weights=_weights(), server_round=3))
    glob = SiteEvalStats.from_metrics(m, threshold=0.5)
    tuned = SiteEvalStats.from_metrics(m, PERSONAL, threshold=0.5)
    assert glob.hist_std == tuned.hist_std == pytest.approx(0.7 * math.sqrt(2))
    assert glob.hist.shape == tuned.hist.shape == (2, 8)
    assert not np.allclose(glob.hist, np.round(glob.hist))  # noisy, not counts
