"""A site's test-set budget: the release plan, and the accountant's reservations in the
ledger's test budget.

Expected values come from Opacus (``get_noise_multiplier``, its RDP accountant stepped
over every release), never from the plan itself.
"""

from __future__ import annotations

import math

import pytest
from conftest import run_config
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from medfl.config import parse_run_config
from medfl.errors import ConfigError, PrivacyBudgetExceeded
from medfl.privacy.ledger import TEST, Ledger
from medfl.privacy.mechanisms import MONITOR, REPORT
from medfl.site import DictMemory, SiteAccountant

N_TEST = 100
DELTA = 1e-4  # the default run's δ, below 1/(10·N_TEST)


def _rdp(releases, delta=DELTA):
    acc = RDPAccountant()
    for sigma, rate, steps in releases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=rate)
    return acc.get_epsilon(delta=delta)


def _cfg(tmp_path, **overrides):
    settings = {"privacy__accountant": "rdp", "num_server_rounds": 10, **overrides}
    return parse_run_config(run_config(state_dir=str(tmp_path), **settings))


def _open(cfg, node=None, run_key=7):
    return SiteAccountant.open(cfg, site="va", node_config=node or {}, run_key=run_key,
                               memory=DictMemory())


def _test_entries(tmp_path):
    return Ledger.open(tmp_path / "va", "va").of(TEST)


@pytest.mark.parametrize(("epsilon", "accountant"), [(1.0, "rdp"), (0.5, "prv"),
                                                      (2.0, "prv")])
def test_a_single_report_release_gets_opacus_noise_multiplier(tmp_path, epsilon, accountant):
    cfg = _cfg(tmp_path, privacy__test_epsilon=epsilon, privacy__report_share=1.0,
               evaluation__monitor_every=0, privacy__accountant=accountant,
               privacy__audit=False)  # the audit would share the test budget
    plan = _open(cfg).test_plan()
    reference = get_noise_multiplier(target_epsilon=epsilon, target_delta=DELTA,
                                     sample_rate=1.0, steps=1, accountant=accountant)
    # Opacus stops within epsilon_tolerance=0.01 below the target: the same σ within it
    assert plan.monitor_rounds == ()
    assert plan.report_sigma == pytest.approx(reference, rel=0.02)
    reference_acc = create_accountant(accountant)
    reference_acc.step(noise_multiplier=plan.report_sigma, sample_rate=1.0)
    assert epsilon - 0.01 <= reference_acc.get_epsilon(delta=DELTA) <= epsilon


def test_the_default_plan_spends_at_most_the_test_epsilon_and_the_ledger_knows(tmp_path):
    """Ten rounds, monitoring at 5 and 10, then the report: the releases the site makes,
    stepped by Opacus' RDP accountant, spend at most privacy.test-epsilon = 1."""
    accountant = _open(_cfg(tmp_path))
    plan = accountant.test_plan()
    assert plan.monitor_rounds == (5, 10)
    sigmas = [accountant.reserve_test(MONITOR, server_round=5, n_test=N_TEST),
              accountant.reserve_test(MONITOR, server_round=10, n_test=N_TEST),
              accountant.reserve_test(REPORT, server_round=10, n_test=N_TEST)]
    assert sigmas[0] == sigmas[1] > sigmas[2] > 0  # the report gets the larger share
    spent = _rdp([(s, 1.0, 1) for s in sigmas])
    assert spent <= 1.0 + 1e-9
    assert accountant.test_spent() == pytest.approx(spent, rel=1e-6)
    assert [(e["release"], e["round"], e["status"]) for e in _test_entries(tmp_path)] == [
        ("monitor", 5, "released"), ("monitor", 10, "released"), ("report", 10, "released")]


def test_nothing_spent_means_no_test_epsilon(tmp_path):
    assert _open(_cfg(tmp_path)).test_spent() == 0.0


@pytest.mark.parametrize("server_round", [1, 4, 7, 11])
def test_a_monitoring_release_at_an_unplanned_round_is_refused(tmp_path, server_round):
    accountant = _open(_cfg(tmp_path))
    with pytest.raises(ConfigError, match=rf"server-round={server_round}.*\[5, 10\]"):
        accountant.reserve_test(MONITOR, server_round=server_round, n_test=N_TEST)
    assert not (tmp_path / "va" / "privacy-ledger.json").exists()


def test_a_second_report_or_monitoring_release_in_the_same_run_is_refused(tmp_path):
    cfg = _cfg(tmp_path)
    _open(cfg).reserve_test(REPORT, server_round=10, n_test=N_TEST)
    _open(cfg).reserve_test(MONITOR, server_round=5, n_test=N_TEST)
    again = _open(cfg)  # a new message of the same run: the ledger remembers
    with pytest.raises(ConfigError, match="report release; each test-set release"):
        again.reserve_test(REPORT, server_round=9, n_test=N_TEST)
    with pytest.raises(ConfigError, match="monitor release of round 5"):
        again.reserve_test(MONITOR, server_round=5, n_test=N_TEST)
    again.reserve_test(MONITOR, server_round=10, n_test=N_TEST)  # another planned round
    assert len(_test_entries(tmp_path)) == 3
    # another run (run key) has its own test releases
    _open(cfg, run_key=8).reserve_test(REPORT, server_round=10, n_test=N_TEST)


def test_the_lifetime_test_limit_refuses_a_run_past_it(tmp_path):
    cfg = _cfg(tmp_path, evaluation__monitor_every=0, privacy__report_share=1.0)
    sigma = _open(cfg).test_plan().report_sigma
    one, two = _rdp([(sigma, 1.0, 1)], 1e-3), _rdp([(sigma, 1.0, 2)], 1e-3)
    limit = (one + two) / 2
    node = {"max-delta": 1e-3, "lifetime-test-epsilon": limit, "lifetime-epsilon": 100.0}
    _open(cfg, node, run_key=1).reserve_test(REPORT, server_round=10, n_test=N_TEST)
    with pytest.raises(PrivacyBudgetExceeded, match="lifetime-test-epsilon"):
        _open(cfg, node, run_key=2).reserve_test(REPORT, server_round=10, n_test=N_TEST)
    ledger = Ledger.open(tmp_path / "va", "va")
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp", budget=TEST) == \
        pytest.approx(one)
    assert [e["status"] for e in ledger.of(TEST)] == ["released", "refused"]
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp") == 0.0  # training: none


def test_the_test_limit_defaults_to_the_lifetime_limit_and_the_run_can_tighten_it(tmp_path):
    assert _open(_cfg(tmp_path), {"lifetime-epsilon": 4.0}).test_limit == 4.0
    assert _open(_cfg(tmp_path, privacy__lifetime_epsilon=2.0),
                 {"lifetime-epsilon": 4.0}).test_limit == 2.0
    assert _open(_cfg(tmp_path), {"lifetime-epsilon": 4.0,
                                  "lifetime-test-epsilon": 0}).test_limit == 0.0
    assert _open(_cfg(tmp_path)).test_limit == 0.0


def test_exact_figures_are_recorded_as_an_infinite_test_epsilon(tmp_path):
    cfg = _cfg(tmp_path, privacy__test_epsilon=0.0)
    accountant = _open(cfg)  # simulation: exact evaluation allowed
    assert accountant.reserve_test(REPORT, server_round=10, n_test=N_TEST) == 0.0
    assert accountant.test_spent() == math.inf
    [row] = Ledger.open(tmp_path / "va", "va").runs()
    assert row["test_epsilon"] == math.inf and row["epsilon"] == 0.0


def test_exact_figures_are_refused_without_the_policy_or_under_a_test_limit(tmp_path):
    cfg = _cfg(tmp_path, privacy__test_epsilon=0.0)
    with pytest.raises(ConfigError, match="allow-exact-evaluation=true"):
        _open(cfg, {"allow-exact-evaluation": False}).reserve_test(
            REPORT, server_round=10, n_test=N_TEST)
    with pytest.raises(PrivacyBudgetExceeded, match="no finite ε"):
        _open(cfg, {"lifetime-epsilon": 5.0}).reserve_test(REPORT, server_round=10,
                                                           n_test=N_TEST)
    assert [e["status"] for e in _test_entries(tmp_path)] == ["refused"]


@pytest.mark.parametrize(("node", "n_test"), [({"max-delta": 1e-5}, N_TEST),
                                              ({"site": "va", "max-epsilon": 3.0,
                                                "lifetime-epsilon": 10.0}, 2000)])
def test_a_run_delta_above_the_sites_test_delta_is_refused(tmp_path, node, n_test):
    node = {**node, "site-dir": str(tmp_path / "va")} if "site" in node else node
    # δ = 1e-4 against max-delta 1e-5, or 1/(10·2000) = 5e-5 test rows' δ when deployed
    with pytest.raises(ConfigError, match="test-set δ"):
        _open(_cfg(tmp_path), node).reserve_test(REPORT, server_round=10, n_test=n_test)
    assert not (tmp_path / "va" / "privacy-ledger.json").exists()


def test_a_run_without_monitoring_refuses_every_monitoring_release(tmp_path):
    accountant = _open(_cfg(tmp_path, evaluation__monitor_every=0))
    with pytest.raises(ConfigError, match=r"at no round \(evaluation.monitor-every=0\)"):
        accountant.reserve_test(MONITOR, server_round=10, n_test=N_TEST)
