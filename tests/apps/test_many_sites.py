"""Many simulated sites with a fraction sampled per round (the many-sites scenario, small):
only the sampled sites are asked anything, and the final figures describe the same sites."""

from __future__ import annotations

import json
from collections import Counter

import pytest


@pytest.fixture(scope="module")
def many(tmp_path_factory):
    from conftest import run_config

    from bench import inprocess

    out = tmp_path_factory.mktemp("outputs")
    cfg = run_config(task="tabular", data__partition="dirichlet-mix", num_server_rounds=2,
                     strategy__fraction_train=0.02, strategy__fraction_evaluate=0.02,
                     evaluation__monitor_every=1, privacy__test_epsilon=0.0,  # exact sizes
                     output_dir=str(out), run_name="many")
    grid = inprocess.run(cfg, num_nodes=200)
    return out / "many", grid


def test_only_the_sampled_fiftieth_of_200_sites_is_asked_anything(many):
    _, grid = many
    kinds = Counter(m.metadata.message_type for m in grid.sent)
    # int(0.02 * 200) = 4 sites per round and per one-off query
    assert kinds == {"query.moments": 4, "train": 8, "evaluate": 8, "query.audit": 4,
                     "query.report": 4}
    evaluate = [m.metadata.dst_node_id for m in grid.sent
                if m.metadata.message_type == "evaluate"]
    last_eval = set(evaluate[-4:])  # round 2's sample
    for kind in ("query.audit", "query.report"):
        asked = {m.metadata.dst_node_id for m in grid.sent if m.metadata.message_type == kind}
        assert asked == last_eval, kind
    assert all(not r.has_error() for r in grid.replies)


def test_the_summary_means_the_sites_that_evaluated_the_final_model(many):
    path, _ = many
    summary = json.loads((path / "summary.json").read_text())
    rounds = [json.loads(line) for line in (path / "rounds.jsonl").read_text().splitlines()]
    final = rounds[-1]["evaluate"]
    assert len(final) == 4 and all(name.startswith("part-") for name in final)
    assert summary["sites_evaluated"] == 4
    evaluated = [s for s in summary["sites"] if s["name"] in final]
    # the headline is the mean of the report's per-site accuracies, over the sites whose
    # cell passes the utility floor (both classes >= k); each equals the final round's
    # exact accuracy of the same model at that site (the threshold is a bin edge)
    pops = json.loads((path / "report.json").read_text())["populations"][1:]
    shown = {p["name"]: p["metrics"]["accuracy"]["value"] for p in pops
             if p["metrics"]["accuracy"]["value"] is not None}
    assert shown and all(v == pytest.approx(final[n]["accuracy"]) for n, v in shown.items())
    assert summary["mean_site_accuracy"] == pytest.approx(sum(shown.values()) / len(shown))
    # each partition holds 100,000 / 200 synthetic patients, split 70/30
    assert all(s["n_test"] == 150 for s in evaluated)
    assert {s["n_train"] for s in summary["sites"] if s["n_train"] is not None} == {350}
    assert summary["dataset"] == "synthetic-cohort"
    report = json.loads((path / "report.json").read_text())
    assert "no real patients" in report["dataset"]["provenance"]
    assert sorted(p["name"] for p in report["populations"]) == sorted(["pooled", *final])
    assert sorted(summary["privacy"]["audit"]["sites"]) == sorted(final)
