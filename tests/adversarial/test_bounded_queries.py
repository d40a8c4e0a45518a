"""A hostile coordinator asking a deployed site the same thing again (issue 18, points 5, 6
and 9): each one-off query is answered once per run, ``evaluate`` once per round, and no
count under k leaves, neither from the site's statistics nor past its egress guard.

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
SUPPRESSED = -1.0
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


def test_evaluate_is_answered_once_per_round_and_only_for_the_runs_rounds(tmp_path):
    raw = quick_run()  # 3 rounds
    grid = deployed_grid(tmp_path, raw)
    assert not ask(grid, raw, "evaluate", server_round=1).has_error()
    again = ask(grid, raw, "evaluate", server_round=1)
    assert again.has_error() and "once per round" in again.error.reason
    assert not ask(grid, raw, "evaluate", server_round=2).has_error()
    beyond = ask(grid, raw, "evaluate", server_round=4)
    assert beyond.has_error() and "num-server-rounds=3" in beyond.error.reason


def test_n_correct_is_withheld_when_the_incorrect_are_under_k(tmp_path):
    # Switzerland's test set: 15 patients with heart disease and 1 without. At a threshold
    # of 1e-9 every prediction is positive, so n - n-correct would be that 1 patient,
    # which the suppressed AUROC and score groups hide.
    raw = quick_run(evaluation__threshold=1e-9, evaluation__personal_epochs=1)
    y = np.asarray(load_site(parse_run_config(raw), "switzerland").y_test)
    assert (len(y), int(y.sum())) == (16, 15)
    reply = ask(deployed_grid(tmp_path, raw, "switzerland"), raw, "evaluate")
    assert not reply.has_error(), reply.error
    m = dict(reply.content["metrics"])
    assert m["num-examples"] == 16 and m["auroc"] == SUPPRESSED
    assert m["n-correct"] == SUPPRESSED
    assert m["personal-num-examples"] == 16 and m["personal-n-correct"] == SUPPRESSED


def _forgetful(leak):
    """The site's evaluation with a count it forgot to suppress put back in."""
    real = site_module.evaluation.evaluation_metrics

    def evaluation_metrics(*args, **kwargs):
        return {**real(*args, **kwargs), **leak(real(*args, **kwargs))}
    return evaluation_metrics


LEAKS = {
    # all but one patient correct: the one wrong is a count under k
    "n-correct": lambda m: {"n-correct": m["num-examples"] - 1},
    "personal-n-correct": lambda m: {"personal-num-examples": m["num-examples"],
                                     "personal-n-correct": m["num-examples"] - 1},
    # one class's score groups beside the test-set size reveal the other class's size
    "personal-groups": lambda m: {"personal-num-examples": m["num-examples"],
                                  "personal-neg-n": [m["num-examples"] - 3.0],
                                  "personal-neg-mean": [0.0], "personal-neg-var": [1.0]},
}


@pytest.mark.parametrize("leak", list(LEAKS))
def test_the_egress_guard_holds_every_evaluate_count_to_k(tmp_path, monkeypatch, leak):
    raw = quick_run()
    monkeypatch.setattr(site_module.evaluation, "evaluation_metrics", _forgetful(LEAKS[leak]))
    reply = ask(deployed_grid(tmp_path, raw), raw, "evaluate")
    assert reply.has_error() and reply.error.code == EGRESS_BLOCKED
    assert "EgressBlocked" in reply.error.reason
