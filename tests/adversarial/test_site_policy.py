"""A hostile coordinator against a deployed site's own policy (issue 18, point 7).

Each test drives the real ClientApp (egress guard on) at a node configured as
deploy/start-site.sh configures one: the site's name, its data (the embedded heart-disease
files), its own state folder and policy. Whatever the run config asks, the node config
decides: a node with no policy refuses, and every release outside DP is refused unless
the site allows it, with an error that names the node-config key that would allow it.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import InProcessGrid, run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict

from client.app import app
from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.heart import data_dir

CONFIG_ERROR = 1001  # medfl.federation.ERROR_CODES[ConfigError]


def deployed_node(tmp_path, site: str = "cleveland", **extra):
    """A node config as deploy/start-site.sh writes it (its defaults)."""
    return {"site": site, "data-path": str(data_dir()), "site-dir": str(tmp_path / site),
            "max-epsilon": 3.0, "min-k": 10, "lifetime-epsilon": 10.0, **extra}


def safe_run(**overrides):
    """A run config that asks no release outside DP, plus ``overrides``."""
    settings = {"evaluation__personal_epochs": 0, "privacy__audit": False,
                "preprocessing__scaling": "none", **overrides}
    return run_config(**settings)


def send(raw, node, kind: str, *, server_round: int = 1, grid=None):
    """Send one ``kind`` message with the run's initial model; returns (reply, grid)."""
    grid = grid or InProcessGrid(app, raw, node_configs=[node])
    model = tasks.task_for(parse_run_config(raw)).build_model()
    arrays = {k: Array(np.asarray(v.detach().numpy())) for k, v in model.state_dict().items()}
    msg = Message(RecordDict({"arrays": ArrayRecord(arrays),
                              "config": ConfigRecord({"server-round": server_round})}),
                  dst_node_id=grid.get_node_ids()[0], message_type=kind)
    return grid.send_and_receive([msg])[0], grid


def test_a_deployed_node_with_no_policy_refuses_to_train_and_says_why(tmp_path):
    node = {"site": "cleveland", "data-path": str(data_dir())}
    reply, _ = send(safe_run(), node, "train")
    assert reply.has_error() and reply.error.code == CONFIG_ERROR, reply.error
    reason = reply.error.reason
    assert "no explicit privacy policy" in reason
    assert all(key in reason for key in ("max-epsilon", "lifetime-epsilon", "site-dir"))
    assert str(data_dir()) not in reason and "/" not in reason.split("(")[0]


def test_a_deployed_node_without_site_dir_refuses_the_servers_state_dir(tmp_path):
    node = deployed_node(tmp_path)
    del node["site-dir"]
    server_chosen = tmp_path / "server-chosen"
    reply, _ = send(safe_run(state_dir=str(server_chosen)), node, "train")
    assert reply.has_error() and reply.error.code == CONFIG_ERROR
    assert "site-dir" in reply.error.reason
    assert not server_chosen.exists()  # no ledger was started where the server pointed


def test_a_deployed_site_floors_k_at_10_when_it_sets_no_min_k(tmp_path):
    node = deployed_node(tmp_path)
    del node["min-k"]
    reply, _ = send(safe_run(privacy__k_threshold=2), node, "evaluate")
    assert reply.has_error() and reply.error.code == CONFIG_ERROR
    assert "min-k=10" in reply.error.reason


# (what the run asks, the message that releases it, the node-config key that allows it);
# the evaluate message goes at round 1, a monitoring round with monitor-every = 1
GATES = [
    ({"evaluation__personal_epochs": 1, "evaluation__monitor_every": 1}, "evaluate",
     "allow-personal-eval"),
    ({"privacy__audit": True}, "query.audit", "allow-audit"),
    ({"preprocessing__scaling": "federated", "preprocessing__stats_noise_multiplier": 0.0},
     "query.moments", "allow-exact-moments"),
    ({"preprocessing__scaling": "site", "evaluation__monitor_every": 1}, "evaluate",
     "allow-site-scaling"),
]


@pytest.mark.parametrize(("asks", "kind", "key"), GATES, ids=[g[2] for g in GATES])
def test_each_release_needing_consent_is_refused_unless_the_site_allows_it(tmp_path, asks, kind,
                                                                      key):
    raw = safe_run(**asks)
    refused, _ = send(raw, deployed_node(tmp_path), kind)
    assert refused.has_error() and refused.error.code == CONFIG_ERROR, kind
    assert f"{key}=true" in refused.error.reason
    allowed, _ = send(raw, deployed_node(tmp_path / "allowed", **{key: True}), kind)
    assert not allowed.has_error(), allowed.error
    assert allowed.content["site"]["name"] == "cleveland"


def test_a_refused_release_is_refused_for_every_message_of_the_run(tmp_path):
    # the run asks for the audit: the site refuses it before training, not after spending
    reply, _ = send(safe_run(privacy__audit=True), deployed_node(tmp_path), "train")
    assert reply.has_error() and "allow-audit=true" in reply.error.reason
    assert not (tmp_path / "cleveland" / "privacy-ledger.json").exists()


def test_an_audit_the_run_did_not_ask_for_is_refused_even_where_allowed(tmp_path):
    node = deployed_node(tmp_path, **{"allow-audit": True})
    reply, _ = send(safe_run(privacy__audit=False), node, "query.audit")
    assert reply.has_error() and "privacy.audit" in reply.error.reason


# (what the run asks of the test rows, the node-config keys the refusal must name)
TEST_SET_ASKS = [
    ({"privacy__test_epsilon": 2.0}, {}, ("privacy.test-epsilon=2", "max-test-epsilon=1")),
    ({"privacy__test_epsilon": 1.5}, {"max-test-epsilon": 1.2},
     ("privacy.test-epsilon=1.5", "max-test-epsilon=1.2", "(0, 1.2]")),
    ({"privacy__test_epsilon": 0.0}, {}, ("privacy.test-epsilon=0",
                                          "allow-exact-evaluation=true", "(0, 1]")),
]


@pytest.mark.parametrize(("asks", "policy", "named"), TEST_SET_ASKS,
                         ids=["above-default-cap", "above-own-cap", "exact"])
def test_a_test_epsilon_the_site_does_not_accept_is_refused_before_reading(tmp_path, asks,
                                                                           policy, named):
    """A run asking more of the test rows than the site's max-test-epsilon (1.0 when it
    sets none), or exact test figures without allow-exact-evaluation, is refused at its
    first message, before any row is read or anything is reserved."""
    node = deployed_node(tmp_path, **policy)
    reply, _ = send(safe_run(**asks), node, "train")
    assert reply.has_error() and reply.error.code == CONFIG_ERROR, reply.error
    assert all(text in reply.error.reason for text in named), reply.error.reason
    assert not (tmp_path / "cleveland" / "privacy-ledger.json").exists()


@pytest.mark.parametrize(("asks", "policy"), [
    ({"privacy__test_epsilon": 2.0}, {"max-test-epsilon": 2.0}),
    ({"privacy__test_epsilon": 0.0}, {"allow-exact-evaluation": True}),
], ids=["own-cap", "exact-allowed"])
def test_a_test_epsilon_within_the_sites_policy_is_accepted(tmp_path, asks, policy):
    reply, _ = send(safe_run(**asks), deployed_node(tmp_path, **policy), "train")
    assert not reply.has_error(), reply.error
