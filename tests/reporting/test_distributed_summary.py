"""summary.json under distributed DP: the mode, the share and assumption, and each site's
unconditional ε beside its binding one."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_config
from opacus.accountants import create_accountant

from medfl.config import parse_run_config
from medfl.evaluation.stats import SiteEvalStats
from medfl.privacy.audit import AUDIT_SIGMA, AuditResult
from medfl.reporting.summary import build_summary
from medfl.reporting.summary_schema import Summary
from medfl.site.metrics import TrainMetrics

SIGMA, Q, STEPS, DELTA = 1.1, 0.5, 5, 1e-4


def _train(epsilon_local: float | None) -> TrainMetrics:
    return TrainMetrics(num_examples=100, epsilon=2.0, delta=DELTA, noise_multiplier=SIGMA,
                        sample_rate=Q, max_grad_norm=1.0, steps=STEPS,
                        epsilon_local=epsilon_local)


def _summary(cfg, train, audits=None) -> dict:
    hist = np.array([[10.0, 8, 6, 4, 2, 0, 0, 0], [0.0, 0, 2, 4, 6, 8, 10, 0]])
    evaluation = {"a": SiteEvalStats(threshold=0.5, hist=hist, hist_std=3.0, test_epsilon=0.5)}
    summary = build_summary(cfg, site_order=["a"], train={"a": train}, evaluation=evaluation,
                            rounds_trained={"a": [1, 2]}, run_name="r", audits=audits)
    data = json.loads(json.dumps(summary.to_dict()))
    assert Summary.from_dict(data).to_dict() == data
    return data


def _opacus_eps(history, accountant: str) -> float:
    acc = create_accountant(accountant)
    acc.history = history
    return acc.get_epsilon(delta=DELTA)


def test_a_distributed_summary_states_the_share_the_assumption_and_epsilon_local():
    cfg = parse_run_config(run_config(**{
        "privacy__mode": "distributed", "strategy__min_round_nodes": 4,
        "secure-aggregation.enabled": True, "privacy__target_delta": DELTA}))
    data = _summary(cfg, _train(7.5))
    privacy = data["privacy"]
    assert privacy["mode"] == "distributed"
    block = privacy["distributed"]
    assert (block["noise_share"], block["min_sites"]) == (0.5, 4)
    assert "at least 4 sites' noise is in every aggregated sum" in block["assumes"]
    assert "epsilon_local" in block["epsilon_unconditional"]
    assert data["sites"][0]["epsilon_local"] == 7.5 and data["sites"][0]["epsilon"] == 2.0


def test_the_audit_joins_both_the_binding_and_the_unconditional_epsilon():
    cfg = parse_run_config(run_config(**{
        "privacy__mode": "distributed", "strategy__min_round_nodes": 4, "privacy__audit": True,
        "secure-aggregation.enabled": True, "privacy__target_delta": DELTA}))
    audit = AuditResult(attack_auc=0.5, tpr_at_low_fpr=0.1, members=50, non_members=50)
    site = _summary(cfg, _train(7.5), audits={"a": audit})["sites"][0]
    name = cfg.privacy.accountant
    assert site["epsilon"] == pytest.approx(
        _opacus_eps([(SIGMA, Q, STEPS), (AUDIT_SIGMA, 1.0, 1)], name), rel=1e-9)
    assert site["epsilon_local"] == pytest.approx(
        _opacus_eps([(SIGMA / 2, Q, STEPS), (AUDIT_SIGMA, 1.0, 1)], name), rel=1e-9)


def test_a_local_summary_has_mode_local_and_a_null_epsilon_local():
    data = _summary(parse_run_config(run_config()), _train(None))
    assert data["privacy"]["mode"] == "local" and "distributed" not in data["privacy"]
    assert data["sites"][0]["epsilon_local"] is None
