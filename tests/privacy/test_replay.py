"""A site's DP state across restarts, and the replay of its last released update."""

from __future__ import annotations

import pytest
import torch
from conftest import run_config

from medfl import site as site_lib
from medfl.config import parse_run_config
from medfl.privacy import replay
from medfl.privacy.dp import DPPlan
from medfl.privacy.ledger import Ledger
from medfl.site import DictMemory, SiteAccountant
from medfl.tasks import task_for


def _cfg(tmp_path, **kw):
    return parse_run_config(run_config(**{"num_server_rounds": 3, "state_dir": str(tmp_path),
                                          **kw}))


def test_the_dp_state_file_is_per_run_and_per_dp_settings(tmp_path):
    base = site_lib.dp_state_path(_cfg(tmp_path), "va", {}, 7)
    assert base.parent == tmp_path / "va" / "dp-state"
    assert base == site_lib.dp_state_path(_cfg(tmp_path, train__lr=0.01), "va", {}, 7)
    for other in (site_lib.dp_state_path(_cfg(tmp_path), "va", {}, 8),
                  site_lib.dp_state_path(_cfg(tmp_path), "cleveland", {}, 7),
                  site_lib.dp_state_path(_cfg(tmp_path, privacy__target_epsilon=1.0),
                                         "va", {}, 7),
                  site_lib.dp_state_path(_cfg(tmp_path, num_server_rounds=4), "va", {}, 7),
                  site_lib.dp_state_path(_cfg(tmp_path, seed=1), "va", {}, 7)):
        assert other != base


def test_keep_and_find_round_trip_and_refuse_another_request(tmp_path):
    base = tmp_path / "run-1-abc.json"
    w = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    plan = DPPlan(1.1, 0.05, 20, 3, 1.0, 1e-3, "prv", 3.0, ((5.0, 1.0, 1),))
    history = [(5.0, 1.0, 1), (1.1, 0.05, 40)]
    replay.keep(base, "d1", w, {"epsilon": 2.0}, plan=plan, history=history)
    got = replay.find(base, "d1")
    assert got is not None
    weights, metrics, plan2, history2 = got
    assert torch.equal(weights["w"], w["w"]) and metrics == {"epsilon": 2.0}
    assert plan2 == plan and history2 == history
    assert replay.find(base, "d2") is None
    base.with_name(base.stem + "-last-update.json").write_text("{broken")
    assert replay.find(base, "d1") is None


def test_the_digest_changes_with_the_model_the_round_and_the_settings():
    w = {"a": torch.zeros(3), "b": torch.ones(2)}
    d = replay.request_digest(2, w, {"seed": 1})
    assert d == replay.request_digest(2, {"b": torch.ones(2), "a": torch.zeros(3)}, {"seed": 1})
    assert d != replay.request_digest(3, w, {"seed": 1})
    assert d != replay.request_digest(2, {**w, "a": torch.tensor([0.0, 0.0, 1e-7])},
                                      {"seed": 1})
    assert d != replay.request_digest(2, w, {"seed": 2})


def _accountant(cfg, run_key=5):
    return SiteAccountant.open(cfg, site="va", node_config={}, run_key=run_key,
                               memory=DictMemory())


@pytest.mark.parametrize("crash_before_saving_state", [False, True])
def test_a_repeated_round_is_answered_from_the_kept_update_without_a_second_spend(
        tmp_path, crash_before_saving_state):
    """The same request twice (a resumed server): the second answer is the first update,
    with the history *after* that round, and the ledger holds one trained round. That
    holds even if the site died after keeping the update but before saving its DP state
    (the second call then starts from the pre-round state)."""
    cfg = _cfg(tmp_path, preprocessing__scaling="site")
    data = task_for(cfg).load_site("va")
    torch.manual_seed(0)
    from medfl import tasks
    from medfl.models import state_arrays

    weights = state_arrays(tasks.task_for(cfg).build_model())
    kwargs = {"server_round": 1, "weights": weights,
              "scaler": site_lib.site_scaler(cfg, data, None), "seed": 11}
    first = site_lib.train_round(cfg, data, _accountant(cfg), **kwargs)
    if crash_before_saving_state:  # the DP state file as it was before the round
        site_lib.dp_state_path(cfg, "va", {}, 5).unlink()
    second_accountant = _accountant(cfg)
    assert second_accountant.history == ([] if crash_before_saving_state else first.history)
    second = site_lib.train_round(cfg, data, second_accountant, **kwargs)
    for k in first.weights:
        assert torch.equal(first.weights[k], second.weights[k])
    assert second.history == first.history and second.plan == first.plan
    assert second.metrics == first.metrics
    assert (second_accountant.plan, second_accountant.history) == (first.plan, first.history)
    entries = Ledger.open(tmp_path / "va", "va").entries
    # one round, reserved (spent) before it trained
    assert [(e["round"], e["status"]) for e in entries] == [(1, "reserved")]
    # another model is another request: it trains (and spends) again
    other = {k: v + 0.01 for k, v in weights.items()}
    third = site_lib.train_round(cfg, data, _accountant(cfg), **{**kwargs, "weights": other})
    assert third.metrics.epsilon > first.metrics.epsilon
