"""Distributed DP at a site: one DP-SGD step a round at σ_eff/√m, two guarantees recorded,
and the site's consent (trust-secure-aggregation, max-local-epsilon)."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_config
from opacus.accountants import create_accountant
from opacus.accountants.utils import get_noise_multiplier
from torch import nn

from medfl import site as site_lib
from medfl.config import parse_run_config
from medfl.errors import ConfigError
from medfl.models import state_arrays
from medfl.privacy.distributed import noise_share
from medfl.privacy.dp import DPPlan
from medfl.privacy.ledger import Ledger
from medfl.site import DictMemory, SiteAccountant, training
from medfl.site.identity import enforce_site_policy
from medfl.site.policy import SitePolicy
from medfl.tasks import task_for
from medfl.training import make_loader, resolve_device

ROUNDS, M, DELTA = 5, 4, 1e-4
OLD_LEDGER = Path(__file__).parents[1] / "privacy" / "ledger_before_budgets.json"


def _cfg(tmp_path, **kw):
    return parse_run_config(run_config(**{
        "state_dir": str(tmp_path), "num_server_rounds": ROUNDS, "privacy__mode": "distributed",
        "privacy__accountant": "rdp", "privacy__audit": False, "privacy__target_delta": DELTA,
        "strategy__min_round_nodes": M, "preprocessing__scaling": "site",
        "secure-aggregation.enabled": True, **kw}))


def _opacus_eps(sigma: float, q: float, steps: int) -> float:
    acc = create_accountant("rdp")
    acc.history = [(sigma, q, steps)]
    return acc.get_epsilon(delta=DELTA)


def _rounds(cfg, site: str, rounds: int, node_config=None):
    data = task_for(cfg).load_site(site)
    accountant = SiteAccountant.open(cfg, site=site, node_config=node_config or {}, run_key=3,
                                     memory=DictMemory())
    torch.manual_seed(0)
    weights = state_arrays(task_for(cfg).build_model())
    results = []
    for r in range(1, rounds + 1):
        res = site_lib.train_round(cfg, data, accountant, server_round=r, weights=weights,
                                   scaler=site_lib.site_scaler(cfg, data, None), seed=r)
        weights = res.weights
        results.append(res)
    return data, results


def test_the_share_is_one_over_root_m():
    assert noise_share(4) == 0.5 and noise_share(1) == 1.0
    assert noise_share(3) == pytest.approx(1 / math.sqrt(3), rel=1e-15)


def test_distributed_rounds_spend_sigma_eff_bindingly_and_report_sigma_local(tmp_path):
    cfg = _cfg(tmp_path, train__local_epochs=3)
    data, results = _rounds(cfg, "hungarian", 2)
    q = 1 / math.ceil(data.n_train / cfg.train.batch_size)
    plan = results[-1].plan
    sigma_eff = get_noise_multiplier(target_epsilon=3.0, target_delta=DELTA, sample_rate=q,
                                     steps=ROUNDS, accountant="rdp", epsilon_tolerance=0.01)
    assert (plan.noise_multiplier, plan.sample_rate, plan.steps_per_round) == (sigma_eff, q, 1)
    assert 3.0 - 0.02 <= _opacus_eps(sigma_eff, q, ROUNDS) <= 3.0  # the whole run, binding
    for r, res in enumerate(results, start=1):
        m = res.metrics.to_metrics()  # what leaves the site
        assert m["steps"] == r and m["noise-multiplier"] == sigma_eff
        assert m["epsilon"] == pytest.approx(_opacus_eps(sigma_eff, q, r), rel=1e-9)
        assert m["epsilon-local"] == pytest.approx(_opacus_eps(sigma_eff / 2, q, r), rel=1e-9)
    entries = [e for e in Ledger.open(tmp_path / "hungarian", "hungarian").entries
               if e["status"] == "reserved"]
    assert [e["spend"] for e in entries] == [[[sigma_eff, q, 1]]] * 2
    assert [e["spend_local"] for e in entries] == [[[sigma_eff / 2, q, 1]]] * 2
    assert [e["noise_share"] for e in entries] == [0.5, 0.5]
    assert entries[-1]["history"] == [[sigma_eff, q, 2]]
    assert entries[-1]["epsilon_run"] == results[-1].metrics.epsilon
    assert entries[-1]["epsilon_local"] == results[-1].metrics.epsilon_local


def test_an_old_ledger_still_verifies_beside_a_distributed_round(tmp_path):
    cfg = _cfg(tmp_path)
    (tmp_path / "va").mkdir()
    shutil.copy(OLD_LEDGER, tmp_path / "va" / "privacy-ledger.json")
    old = Ledger.open(tmp_path / "va", "va").entries
    _, results = _rounds(cfg, "va", 1)
    entries = Ledger.open(tmp_path / "va", "va").entries  # the whole chain verifies
    assert entries[:len(old)] == old
    last = entries[-1]
    assert last["status"] == "reserved" and "epsilon_local" not in old[-1]
    assert last["epsilon_local"] == results[0].metrics.epsilon_local > last["epsilon_run"]


class _Probe(nn.Module):
    """A logistic regression beside a wide layer that the output multiplies by zero: that
    layer's data gradients are exactly zero, so its update is the DP noise alone."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.head, self.idle = nn.Linear(d, 1), nn.Linear(d, 2048)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x) + 0.0 * self.idle(x).sum(-1, keepdim=True)


@pytest.mark.parametrize("mode", ["hooks", "ew"])
def test_a_distributed_round_is_one_step_with_noise_lr_sigma_local_c_over_b(tmp_path, mode):
    lr, c = 0.5, 2.0
    cfg = _cfg(tmp_path, train__local_epochs=3, train__lr=lr, privacy__max_grad_norm=c,
               privacy__grad_sample_mode=mode)
    rng = np.random.default_rng(0)
    n, d, b = 172, 13, cfg.train.batch_size  # Opacus' own divisor would be int(172/2) = 86
    x, y = rng.normal(size=(n, d)), rng.integers(0, 2, size=n).astype(np.float64)
    torch.manual_seed(0)
    probe = _Probe(d)
    before = probe.idle.weight.detach().clone()
    setup = training._Setup(probe, torch.optim.SGD(probe.parameters(), lr=lr),
                            make_loader(x, y, batch_size=b, shuffle=True, seed=0),
                            resolve_device("cpu"), noise_seed=123)
    plan = DPPlan.make(n_train=n, batch_size=b, local_epochs=3, rounds=ROUNDS, target_epsilon=3.0,
                       delta=DELTA, max_grad_norm=c, accountant="rdp", one_step=True)
    after = [(plan.noise_multiplier, plan.sample_rate, 1)]
    _, history, result = training._train_dp(cfg, setup, plan=plan, history=[], after=after,
                                            proximal_mu=0.0)
    assert result.steps == 1 and history == after
    update = (probe.idle.weight.detach() - before).numpy().ravel()
    expected = lr * plan.noise_multiplier / math.sqrt(M) * c / b
    assert np.std(update) == pytest.approx(expected, rel=0.03)  # ~0.4% standard error
    assert abs(np.mean(update)) < 4 * expected / math.sqrt(update.size)


def _deployed(tmp_path, **extra):
    return {"site": "cleveland", "site-dir": str(tmp_path), "max-epsilon": 3.0,
            "min-k": 10, "lifetime-epsilon": 10.0, **extra}


def test_a_site_that_does_not_trust_secure_aggregation_refuses_a_distributed_run(tmp_path):
    safe = {"preprocessing__scaling": "none", "evaluation__personal_epochs": 0}
    cfg = _cfg(tmp_path, **safe)
    with pytest.raises(ConfigError, match="trust-secure-aggregation=true"):
        enforce_site_policy(cfg, _deployed(tmp_path))
    with pytest.raises(ConfigError, match="trust-secure-aggregation=true"):
        enforce_site_policy(cfg, {"trust-secure-aggregation": "false"})
    enforce_site_policy(cfg, _deployed(tmp_path, **{"trust-secure-aggregation": True}))
    enforce_site_policy(cfg, {})  # simulation: the researcher runs every site
    local = parse_run_config(run_config(state_dir=str(tmp_path), privacy__audit=False, **safe))
    enforce_site_policy(local, _deployed(tmp_path))  # local mode: the key does not apply


def test_the_policy_defaults_are_conservative_when_deployed(tmp_path):
    deployed = SitePolicy.from_node_config(_deployed(tmp_path))
    assert (deployed.trust_secure_aggregation, deployed.max_local_epsilon) == (False, 10.0)
    simulated = SitePolicy.from_node_config({})
    assert (simulated.trust_secure_aggregation, simulated.max_local_epsilon) == (True, None)
    off = SitePolicy.from_node_config(_deployed(tmp_path, **{"max-local-epsilon": 0}))
    assert off.max_local_epsilon is None


def test_a_planned_unconditional_epsilon_over_the_cap_is_refused_before_any_spend(tmp_path):
    cfg = _cfg(tmp_path)
    q = 1 / math.ceil(172 / cfg.train.batch_size)  # Hungary: 172 training rows
    sigma_eff = get_noise_multiplier(target_epsilon=3.0, target_delta=DELTA, sample_rate=q,
                                     steps=ROUNDS, accountant="rdp", epsilon_tolerance=0.01)
    planned = _opacus_eps(sigma_eff / 2, q, ROUNDS)
    assert planned > 3.0
    with pytest.raises(ConfigError, match=rf"ε={planned:.3f} .* max-local-epsilon=3\b"):
        _rounds(cfg, "hungarian", 1, node_config={"max-local-epsilon": 3.0})
    ledger = Ledger.open(tmp_path / "hungarian", "hungarian").entries
    assert not [e for e in ledger if e["status"] == "reserved"]
    _, ok = _rounds(cfg, "hungarian", 1, node_config={"max-local-epsilon": planned + 0.01})
    assert ok[0].metrics.epsilon_local is not None
