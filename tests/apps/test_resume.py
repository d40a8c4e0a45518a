"""The server's per-round checkpoint and ``resume-from``, in process (the real apps).

A "killed" server is a grid that raises in the middle of a round, as the ServerApp's
process dies; the resumed run must end where an uninterrupted run ends.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_config
from flwr.app import Context, RecordDict
from flwr.common.config import parse_config_args
from safetensors.numpy import load_file

from bench.inprocess import InProcessGrid, set_task_identity
from client.app import app as client_app
from medfl.errors import ConfigError
from medfl.federation import checkpoint as ckpt
from server.app import main


class Killed(RuntimeError):
    """The ServerApp's process died."""


class KillingGrid(InProcessGrid):
    """Dies when the server sends the train messages of ``kill_round``: before the sites
    see them, or (``after_training``) once the sites have trained and replied."""

    def __init__(self, *args, kill_round: int, after_training: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.kill_round, self.after_training = kill_round, after_training

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type == "train"
               and int(m.content["config"]["server-round"]) == self.kill_round
               for m in messages):
            if self.after_training:
                super().send_and_receive(messages, timeout=timeout)
            raise Killed(f"server killed in round {self.kill_round}")
        return super().send_and_receive(messages, timeout=timeout)


class KilledAfterRounds(InProcessGrid):
    """Dies at the first message after the last round (the audit or report query)."""

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        if any(m.metadata.message_type in ("query.audit", "query.report") for m in messages):
            raise Killed("server killed after its last round")
        return super().send_and_receive(messages, timeout=timeout)


def _run(grid, cfg, run_id):
    main(grid, Context(run_id, 0, {}, RecordDict(), cfg))


def _weights(run):
    return load_file(str(run / "model" / "weights.safetensors"))


def _rounds(run):
    return [json.loads(x) for x in (run / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("strategy", ["fedavg", "fedadam"])
def test_a_resumed_run_ends_where_an_uninterrupted_run_ends(tmp_path, strategy):
    """Without DP the sites' training is seeded per round, so the resumed run's model must
    equal the uninterrupted one's exactly; FedAdam also needs its moments restored. Exact
    test-set figures (test-epsilon 0), so that the two runs' evaluations compare too."""
    set_task_identity()
    base = run_config(num_server_rounds=3, privacy__enabled=False, output_dir=str(tmp_path),
                      state_dir=str(tmp_path / "state"), strategy__name=strategy,
                      privacy__test_epsilon=0.0)
    _run(InProcessGrid(client_app, {**base, "run-name": "whole"}), {**base, "run-name": "whole"},
         run_id=1)

    cut = {**base, "run-name": "cut"}
    with pytest.raises(Killed):
        _run(KillingGrid(client_app, cut, kill_round=3), cut, run_id=2)
    run = tmp_path / "cut"
    assert (run / "checkpoint" / "LATEST").read_text().strip() == "round-0002"
    assert not (run / "summary.json").exists()
    if strategy == "fedadam":
        assert ckpt.load(run).strategy.keys() == {"m_t", "v_t"}

    # the run's resume.toml, parsed by Flower as `flwr run --run-config` does, is its
    # own config plus resume-from
    resumed = {**base, **parse_config_args([str(run / "resume.toml")])}
    assert resumed == {**cut, "resume-from": str(run)}
    other = {**resumed, "train.lr": 0.01}  # the sites would train with another config
    with pytest.raises(ConfigError, match=r"differs .*train\.lr.*resume\.toml"):
        _run(InProcessGrid(client_app, other), other, run_id=3)
    _run(InProcessGrid(client_app, resumed), resumed, run_id=3)
    summary = json.loads((run / "summary.json").read_text())
    whole = json.loads((tmp_path / "whole" / "summary.json").read_text())
    assert summary["rounds"] == 3
    assert [r["round"] for r in _rounds(run)] == [1, 2, 3]
    assert [r.get("resumed_after_round") for r in _rounds(run)] == [None, None, 2]
    assert [s["rounds_trained"] for s in summary["sites"]] == [3, 3, 3, 3]
    a, b = _weights(run), _weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    assert summary["mean_site_accuracy"] == pytest.approx(whole["mean_site_accuracy"])


@pytest.mark.parametrize("after_training", [False, True])
def test_resume_continues_each_sites_accountant(tmp_path, after_training):
    """With DP on, each site restores its plan and history from its own state folder (the
    resumed run is a new Flower run): ε equals an uninterrupted run's, and the site's ledger
    holds one run, not two. When the server died after the sites had trained round 2, the
    resumed server's identical request gets the kept update back instead of a second
    spend for the same round."""
    set_task_identity()
    state = tmp_path / "state"
    base = run_config(num_server_rounds=3, output_dir=str(tmp_path), state_dir=str(state))
    whole = {**base, "run-name": "whole", "state-dir": str(tmp_path / "state-whole")}
    _run(InProcessGrid(client_app, whole, run_id=1), whole, run_id=1)
    cut = {**base, "run-name": "cut"}
    with pytest.raises(Killed):
        _run(KillingGrid(client_app, cut, kill_round=2, run_id=7,
                         after_training=after_training), cut, run_id=7)
    resumed = {**cut, "resume-from": "cut"}  # a run name under the output folder
    _run(InProcessGrid(client_app, resumed, run_id=8), resumed, run_id=8)

    s = json.loads((tmp_path / "cut" / "summary.json").read_text())
    w = json.loads((tmp_path / "whole" / "summary.json").read_text())
    for site, ref in zip(s["sites"], w["sites"], strict=True):
        assert site["epsilon"] == pytest.approx(ref["epsilon"], rel=1e-9)
        assert site["epsilon"] <= 3.0
    from medfl.privacy.ledger import Ledger

    runs = Ledger.open(state / "va", "va").runs()
    assert [(r["run_id"], r["rounds_trained"]) for r in runs] == [(7, 3)]


def test_a_run_killed_after_its_last_round_finishes_with_the_checkpointed_model(tmp_path):
    set_task_identity()
    base = run_config(num_server_rounds=2, privacy__enabled=False, output_dir=str(tmp_path),
                      state_dir=str(tmp_path / "state"))
    whole = {**base, "run-name": "whole"}
    _run(InProcessGrid(client_app, whole), whole, run_id=1)
    cut = {**base, "run-name": "cut"}
    with pytest.raises(Killed):
        _run(KilledAfterRounds(client_app, cut), cut, run_id=2)
    resumed = {**cut, "resume-from": str(tmp_path / "cut")}
    _run(InProcessGrid(client_app, resumed), resumed, run_id=3)  # no round left to train
    summary = json.loads((tmp_path / "cut" / "summary.json").read_text())
    assert summary["rounds"] == 2 and len(_rounds(tmp_path / "cut")) == 2
    a, b = _weights(tmp_path / "cut"), _weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)


def test_resume_refuses_a_folder_without_a_checkpoint_or_a_finished_run(tmp_path):
    set_task_identity()
    cfg = run_config(num_server_rounds=1, privacy__enabled=False, output_dir=str(tmp_path),
                     state_dir=str(tmp_path / "state"), run_name="done")
    _run(InProcessGrid(client_app, cfg), cfg, run_id=1)
    with pytest.raises(ConfigError, match="already finished all 1 rounds"):
        _run(InProcessGrid(client_app, cfg), {**cfg, "resume-from": "done"}, run_id=2)
    assert len(_rounds(tmp_path / "done")) == 1  # nothing was touched
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="not a MedFL run folder"):
        _run(InProcessGrid(client_app, cfg), {**cfg, "resume-from": "empty"}, run_id=3)


def test_a_checkpoint_replaces_the_previous_one_atomically(tmp_path):
    weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for r in (1, 2):
        ckpt.save(tmp_path, ckpt.Checkpoint(round=r, run_key=5, weights=weights,
                                            strategy={"momentum_vector": [weights["w"] * r]},
                                            records={"final_train": {"va": {"epsilon":
                                                                            float("inf")}}}))
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir()) == ["LATEST",
                                                                          "round-0002"]
    back = ckpt.load(tmp_path)
    assert back.round == 2 and back.run_key == 5
    np.testing.assert_array_equal(back.weights["w"], weights["w"])
    np.testing.assert_array_equal(back.strategy["momentum_vector"][0], weights["w"] * 2)
    assert back.records["final_train"]["va"]["epsilon"] == float("inf")
    # a damaged newest checkpoint is an error naming it, not a silent restart from zero
    (tmp_path / "checkpoint" / "round-0002" / "global.npz").write_bytes(b"truncated")
    with pytest.raises(ConfigError, match="round-0002"):
        ckpt.load(tmp_path)
