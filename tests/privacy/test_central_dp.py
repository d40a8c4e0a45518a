"""Central DP with Flower's server-side fixed clipping, and its site-level ε."""

from __future__ import annotations

import json

import numpy as np
import pytest
from opacus.accountants import create_accountant


def _clipped_mean(replies, current: dict, clip: float) -> dict:
    # Flower's server-side clipping: each update (reply - current) scaled to norm <= clip
    deltas = []
    for r in replies:
        arrays = r.content["arrays"]
        d = {k: arrays[k].numpy() - current[k] for k in current}
        norm = np.sqrt(sum(float(np.sum(v ** 2)) for v in d.values()))
        deltas.append({k: v * min(1.0, clip / norm) for k, v in d.items()})
    return {k: current[k] + np.mean([d[k] for d in deltas], axis=0) for k in current}


def test_central_dp_adds_noise_to_a_uniform_clipped_average(run_inprocess):
    z, clip = 1.0, 0.5
    # norm-ratio off: an honest update rejected as an outlier (Switzerland's, whose data
    # differ most, often lands over 3x the median under DP) would leave the round
    # unaggregated, which is the next tests' subject
    path, grid = run_inprocess(num_server_rounds=2, privacy__central_noise_multiplier=z,
                               privacy__central_clipping_norm=clip, strategy__norm_ratio=0.0)
    s = json.loads((path / "summary.json").read_text())
    central = s["privacy"]["central_dp"]
    acc = create_accountant(central["accountant"])
    for _ in range(2):
        acc.step(noise_multiplier=z, sample_rate=1.0)
    assert central["rounds"] == 2
    assert central["epsilon"] == pytest.approx(acc.get_epsilon(delta=central["delta"]))
    assert "central DP" in " ".join(s["privacy"]["mechanisms"])

    train_sent = [m for m in grid.sent if m.metadata.message_type == "train"]
    current = {k: v.numpy() for k, v in train_sent[-1].content["arrays"].items()}
    last_train = [r for r in grid.replies if r.metadata.message_type == "train"][-4:]
    expected = _clipped_mean(last_train, current, clip)
    final = {k: v.numpy() for k, v in
             [m for m in grid.sent if m.metadata.message_type == "evaluate"][-1]
             .content["arrays"].items()}
    noise = np.concatenate([(final[k] - expected[k]).ravel() for k in final])
    # noise std per coordinate is z * clip / 4 sites = 0.125; 14 coordinates
    assert 0.05 < noise.std() < 0.3


def test_central_dp_off_by_default(run_inprocess):
    path, _ = run_inprocess(num_server_rounds=1, privacy__enabled=False)
    s = json.loads((path / "summary.json").read_text())
    assert s["privacy"]["central_dp"] is None


def test_a_round_with_a_missing_site_is_recorded_and_not_aggregated(tmp_path):
    # central DP's noise is calibrated to all four sites: with one dropped, the round must
    # not be aggregated (less noise per site than accounted), and it must say so
    from conftest import run_config
    from flwr.app import Context, RecordDict

    from client.app import app as client_app
    from server.app import main
    from tests.apps.test_faults_and_policy import DroppingGrid

    # norm-ratio off: round 1 must be complete. With it on, an honest site's update over
    # 3x the median also left round 1 unaggregated (seen in a full run: Switzerland's at
    # 3.4x; its data differ most, and the default run rejects it in 3-10 of 10 rounds)
    cfg = run_config(num_server_rounds=2, privacy__central_noise_multiplier=1.0,
                     output_dir=str(tmp_path), run_name="c", strategy__norm_ratio=0.0)
    grid = DroppingGrid(client_app, cfg, drop_node=1002, drop_rounds={2})
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    rounds = [json.loads(x) for x in (tmp_path / "c" / "rounds.jsonl").read_text().splitlines()]
    assert "not_aggregated" not in rounds[0]
    assert rounds[1]["not_aggregated"].startswith("central DP needs every site's valid update")
    assert rounds[1]["train_problems"][0]["status"] == "dropped"
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    assert s["privacy"]["central_dp"]["rounds"] == 1  # only the complete round is accounted
