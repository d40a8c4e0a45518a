"""Refusals, drop-outs, site policy, and what an exception may say to the server."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from conftest import run_config
from flwr.app import ConfigRecord, Context, Message, RecordDict
from opacus.accountants import create_accountant

from bench.inprocess import InProcessGrid
from client.app import app as client_app
from medfl import federation as fed
from medfl.config import parse_run_config
from medfl.errors import ConfigError
from medfl.site import enforce_site_policy
from server.app import main


class DroppingGrid(InProcessGrid):
    """Loses every reply of one node in the chosen train rounds (a site that went away)."""

    def __init__(self, *args, drop_node: int, drop_rounds: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.drop_node, self.drop_rounds = drop_node, drop_rounds

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        return [r for m, r in zip(messages, replies, strict=True)
                if not (m.metadata.dst_node_id == self.drop_node
                        and m.metadata.message_type == "train"
                        and int(m.content["config"]["server-round"]) in self.drop_rounds)]


def test_a_dropped_site_is_recorded_and_the_round_completes(tmp_path):
    cfg = run_config(num_server_rounds=2, privacy__enabled=False, output_dir=str(tmp_path),
                     run_name="drop")
    grid = DroppingGrid(client_app, cfg, drop_node=1002, drop_rounds={2})  # switzerland
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    rounds = [json.loads(x) for x in (tmp_path / "drop" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[0]["train_problems"] == []
    assert rounds[1]["train_problems"] == [
        {"site": "switzerland", "status": "dropped",
         "reason": "no reply within the round timeout (600 s)"}]
    assert sorted(rounds[1]["train"]) == ["cleveland", "hungarian", "va"]
    s = json.loads((tmp_path / "drop" / "summary.json").read_text())
    swiss = s["sites"][2]
    assert (swiss["rounds_trained"], swiss["last_round_trained"]) == (1, 1)
    assert s["sites"][0]["rounds_trained"] == 2


def test_noised_feature_moments_are_in_the_recomputable_epsilon(tmp_path):
    cfg = run_config(num_server_rounds=2, output_dir=str(tmp_path), run_name="noised",
                     preprocessing__stats_noise_multiplier=5.0)
    main(InProcessGrid(client_app, cfg), Context(1, 0, {}, RecordDict(), cfg))
    s = json.loads((tmp_path / "noised" / "summary.json").read_text())
    for site in s["sites"]:
        assert site["other_releases"][0]["noise_multiplier"] == 5.0
        assert site["accountant"] == "prv"
        acc = create_accountant(site["accountant"])
        for sigma, rate, steps in site["accountant_history"]:
            for _ in range(steps):
                acc.step(noise_multiplier=sigma, sample_rate=rate)
        assert acc.get_epsilon(delta=site["delta"]) == pytest.approx(site["epsilon"], rel=1e-9)
        assert site["epsilon"] <= 3.0
    assert "clipped sums" not in " ".join(s["privacy"]["non_dp_releases"])
    # the release was recorded in each site's ledger before the moments left
    from medfl.privacy.ledger import Ledger

    ledger = Ledger.open(Path(cfg["state-dir"]) / "va", "va")
    assert [e["status"] for e in ledger.entries][:1] == ["released"]
    assert ledger.entries[0]["history"] == [[5.0, 1.0, 1]]


@pytest.mark.parametrize(("node", "overrides", "message"), [
    ({"max-epsilon": 1.0}, {}, "target-epsilon=3.0 exceeds this site's max-epsilon=1.0"),
    ({"min-k": 20}, {}, "k-threshold=10 is below this site's min-k=20"),
    ({"min-k": 5}, {"privacy__enabled": False}, "requires DP-SGD with secure noise"),
    ({"min-k": 5}, {"privacy__secure_noise": False}, "requires DP-SGD with secure noise"),
])
def test_site_policy_refuses_weaker_settings(node, overrides, message):
    with pytest.raises(ConfigError, match=message):
        enforce_site_policy(parse_run_config(run_config(**overrides)), node)


def test_site_policy_accepts_the_defaults_and_simulation_has_none():
    cfg = parse_run_config(run_config())
    enforce_site_policy(cfg, {"max-epsilon": 3.0, "min-k": 10})
    enforce_site_policy(parse_run_config(run_config(privacy__enabled=False)),
                        {"partition-id": 0})


def test_refusal_by_policy_reaches_the_server_as_a_named_error(tmp_path):
    cfg = run_config(num_server_rounds=1, output_dir=str(tmp_path), run_name="pol")
    nodes = [{"site": s, "max-epsilon": 1.0, "lifetime-epsilon": 10.0,
              "site-dir": str(tmp_path / s)} for s in
             ("cleveland", "hungarian", "switzerland", "va")]
    grid = InProcessGrid(client_app, cfg, node_configs=nodes)
    main(grid, Context(1, 0, {}, RecordDict(), cfg))  # stops in one line, no exception
    failed = json.loads((tmp_path / "pol" / "failed.json").read_text())
    assert "only 0 of 4 sites" in failed["reason"] and "max-epsilon=1.0" in failed["reason"]
    assert not (tmp_path / "pol" / "summary.json").exists()
    assert all(r.error.code == 1001 and "max-epsilon=1.0" in r.error.reason
               for r in grid.replies)


@pytest.mark.parametrize("debug", [False, True], ids=["default", "MEDFL_DEBUG=1"])
def test_unexpected_exception_text_never_leaves_the_site(caplog, monkeypatch, debug):
    """The reply names only the exception's type; the full traceback (with the text) goes
    to the site's own log only when the site sets MEDFL_DEBUG=1."""
    secret = "/hospital/data/patient-4711.csv"
    if debug:
        monkeypatch.setenv("MEDFL_DEBUG", "1")
    else:
        monkeypatch.delenv("MEDFL_DEBUG", raising=False)

    @fed.guarded
    def handler(msg, context):
        raise FileNotFoundError(f"No such file: {secret}")

    ins = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")
    with caplog.at_level(logging.ERROR, logger="medfl.federation.client"):
        reply = handler(ins, Context(1, 1, {}, RecordDict(), {}))
    assert reply.has_error()
    assert reply.error.reason == "FileNotFoundError at the site (details withheld)"
    assert secret not in reply.error.reason
    tracebacks = [r for r in caplog.records if r.exc_info]
    if debug:  # the site's own traceback: the exception, its text, the raising frame
        (record,) = tracebacks
        assert record.exc_info[0] is FileNotFoundError
        assert secret in caplog.text and "in handler" in caplog.text
    else:
        assert tracebacks == [] and secret not in caplog.text


class LostNodeGrid(InProcessGrid):
    """Flower's SuperLink answers for a node that stopped sending heartbeats: an error
    reply (code NODE_UNAVAILABLE) whose sender is the SuperLink (node 1), not the node."""

    def __init__(self, *args, lost: set[int], rounds: set[int], **kwargs):
        super().__init__(*args, **kwargs)
        self.lost, self.rounds = lost, rounds

    def send_and_receive(self, messages, *, timeout=None):
        from flwr.app import Error
        from flwr.common.constant import ErrorCode

        messages = list(messages)
        replies = super().send_and_receive(messages, timeout=timeout)
        out = []
        for m, r in zip(messages, replies, strict=True):
            if (m.metadata.dst_node_id in self.lost and "server-round" in m.content["config"]
                    and int(m.content["config"]["server-round"]) in self.rounds):
                r = Message(Error(code=ErrorCode.NODE_UNAVAILABLE, reason="Node Unavailable"),
                            reply_to=m)
                r.metadata.__dict__["_src_node_id"] = 1  # the SuperLink
            out.append(r)
        return out


def test_a_node_the_superlink_reports_unavailable_is_named_and_dropped(tmp_path):
    cfg = run_config(num_server_rounds=2, privacy__enabled=False, output_dir=str(tmp_path),
                     run_name="lost")
    grid = LostNodeGrid(client_app, cfg, lost={1003}, rounds={2})  # va
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    rounds = [json.loads(x) for x in (tmp_path / "lost" / "rounds.jsonl").read_text().splitlines()]
    for kind in ("train_problems", "evaluate_problems"):
        assert [(p["site"], p["status"], p["error_code"]) for p in rounds[1][kind]] == [
            ("va", "dropped", 5)]
    assert sorted(rounds[1]["train"]) == ["cleveland", "hungarian", "switzerland"]


def test_a_round_with_fewer_valid_updates_than_the_minimum_is_not_aggregated(tmp_path):
    """Round 2 loses three of four sites: with strategy.min-round-nodes=2 the global model
    stays as it was after round 1 (equal to a one-round run's model; training without DP
    is seeded per round)."""
    from safetensors.numpy import load_file

    cfg = run_config(num_server_rounds=2, privacy__enabled=False, output_dir=str(tmp_path),
                     run_name="few", strategy__min_round_nodes=2)
    grid = LostNodeGrid(client_app, cfg, lost={1001, 1002, 1003}, rounds={2})
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    rounds = [json.loads(x) for x in (tmp_path / "few" / "rounds.jsonl").read_text().splitlines()]
    assert "fewer than strategy.min-round-nodes=2" in rounds[1]["not_aggregated"]
    s = json.loads((tmp_path / "few" / "summary.json").read_text())
    assert [x["rounds_trained"] for x in s["sites"]] == [1, 1, 1, 1]  # round 2 unused
    one = {**cfg, "num-server-rounds": 1, "run-name": "one"}
    main(InProcessGrid(client_app, one), Context(1, 0, {}, RecordDict(), one))
    saved = load_file(str(tmp_path / "few" / "model" / "weights.safetensors"))
    ref = load_file(str(tmp_path / "one" / "model" / "weights.safetensors"))
    assert saved.keys() == ref.keys()
    for k in ref:  # float32 sums in another order: equal to rounding
        np.testing.assert_allclose(saved[k], ref[k], rtol=0, atol=1e-6, err_msg=k)
