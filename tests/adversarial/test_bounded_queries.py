"""A hostile coordinator asking a deployed site the same thing again (issue 18, points 5, 6
and 9; issue 19): each one-off query is answered once per run, ``evaluate`` once per
planned monitoring round and at no other, and no test-set release leaves without its
noise, neither from the site's statistics nor past its egress guard.

The real ClientApp (egress guard on) at a node configured as deploy/start-site.sh does,
with the releases under test allowed by the site (see test_site_policy.py for the gates).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import InProcessGrid, run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

import medfl.site.site as site_module
from client.app import app
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.heart import data_dir
from medfl.site import load_site

CONFIG_ERROR, EGRESS_BLOCKED = 1001, 1010  # medfl.federation's error codes
ALLOW_ALL = {"allow-personal-eval": True, "allow-audit": True, "allow-exact-moments": True}


def deployed_grid(tmp_path, raw, site: str = "cleveland"):
    node = {"site": site, "data-path": str(data_dir()), "site-dir": str(tmp_path / site),
            "max-epsilon": 3.0, "min-k": 10, "lifetime-epsilon": 10.0, **ALLOW_ALL}
    return InProcessGrid(app, raw, node_configs=[node])


def ask(grid, raw, kind: str, *, server_round: int = 1):
    """One ``kind`` message carrying the run's initial model; returns the reply."""
    model = tasks.task_for(parse_run_config(raw)).build_model()
    arrays = {k: Array(np.asarray(v.detach().numpy())) for k, v in model.state_dict().items()}
    msg = Message(RecordDict({"arrays": ArrayRecord(arrays),
                              "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=grid.get_node_ids()[0], message_type=kind)
    return grid.send_and_receive([msg])[0]


def quick_run(**overrides):
    settings = {"evaluation__personal_epochs": 0, "privacy__audit": True,
                "preprocessing__scaling": "none", "num_server_rounds": 3, **overrides}
    return run_config(**settings)


@pytest.mark.parametrize("kind", ["query.audit", "query.moments"])
def test_a_one_off_query_is_answered_once_per_run(tmp_path, kind):
    raw = quick_run(preprocessing__scaling="federated") if kind == "query.moments" \
        else quick_run()
    grid = deployed_grid(tmp_path, raw)
    first = ask(grid, raw, kind)
    assert not first.has_error(), first.error
    again = ask(grid, raw, kind)
    assert again.has_error() and again.error.code == CONFIG_ERROR
    assert "once per run" in again.error.reason


def test_evaluate_is_answered_once_per_round_and_only_at_the_monitoring_rounds(tmp_path):
    raw = quick_run(evaluation__monitor_every=1)  # 3 rounds, each monitored
    grid = deployed_grid(tmp_path, raw)
    assert not ask(grid, raw, "evaluate", server_round=1).has_error()
    again = ask(grid, raw, "evaluate", server_round=1)
    assert again.has_error() and "once per round" in again.error.reason
    assert not ask(grid, raw, "evaluate", server_round=2).has_error()
    beyond = ask(grid, raw, "evaluate", server_round=4)
    assert beyond.has_error() and "monitoring rounds are [1, 2, 3]" in beyond.error.reason
    sparse = quick_run(evaluation__monitor_every=2)  # rounds 2 and 3 (the last)
    grid = deployed_grid(tmp_path / "sparse", sparse)
    unplanned = ask(grid, sparse, "evaluate", server_round=1)
    assert unplanned.has_error() and unplanned.error.code == CONFIG_ERROR
    assert not ask(grid, sparse, "evaluate", server_round=3).has_error()


def test_a_tiny_test_set_is_released_noisy_not_suppressed(tmp_path):
    # Switzerland's test set: 15 patients with heart disease and 1 without. Nothing is
    # withheld any more; the one negative patient is hidden by the noise, not by k.
    raw = quick_run(evaluation__threshold=1e-9, evaluation__personal_epochs=1)
    y = np.asarray(load_site(parse_run_config(raw), "switzerland").y_test)
    assert (len(y), int(y.sum())) == (16, 15)
    reply = ask(deployed_grid(tmp_path, raw, "switzerland"), raw, "evaluate", server_round=3)
    assert not reply.has_error(), reply.error
    m = dict(reply.content["metrics"])
    assert len(m["hist"]) == len(m["personal-hist"]) == 16
    assert m["hist-std"] > 1.0 and m["personal-hist-std"] == m["hist-std"]
    assert not np.allclose(m["hist"], np.round(m["hist"]))  # no exact count leaves


def _forgetful(leak):
    """The site's evaluation with its noise forgotten, or a value it should not send."""
    real = site_module.evaluation.evaluation_metrics

    def evaluation_metrics(*args, **kwargs):
        return {**real(*args, **kwargs), **leak(real(*args, **kwargs))}
    return evaluation_metrics


LEAKS = {
    # the exact histogram with a std of 0: an exact release the run did not ask for
    "hist-std": lambda m: {"hist-std": 0.0},
    "personal-hist-std": lambda m: {"personal-hist": m["hist"], "personal-hist-std": 0.0},
    # per-patient scores beside the histogram
    "scores": lambda m: {"hist": m["hist"] + [0.91, 0.12]},
    "not finite": lambda m: {"sums": [float("nan")] * 3},
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_the_egress_guard_blocks_an_evaluate_reply_without_its_noise(tmp_path, monkeypatch,
                                                                     leak):
    raw = quick_run()
    monkeypatch.setattr(site_module.evaluation, "evaluation_metrics", _forgetful(LEAKS[leak]))
    reply = ask(deployed_grid(tmp_path, raw), raw, "evaluate", server_round=3)
    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED
    assert "EgressBlocked" in reply.error.reason
