"""The server refuses updates with NaN, wrong names/shapes or a bad example count."""

from __future__ import annotations

import re

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from medfl.federation import RecordingFedAvg, check_update
from medfl.site.metrics import TrainMetrics

EXPECTED = {"0.weight": (1, 3), "0.bias": (1,)}


def _content(weight, n=10):
    # A train reply as a site sends it: its arrays and its TrainMetrics' wire form.
    bias = np.zeros(1, np.float32)
    metrics = TrainMetrics(num_examples=n, epsilon=1.0, delta=1e-3, noise_multiplier=1.2,
                           sample_rate=0.5, max_grad_norm=1.0, steps=2)
    return RecordDict({
        "arrays": ArrayRecord({"0.weight": Array(weight), "0.bias": Array(bias)}),
        "metrics": MetricRecord(metrics.to_metrics()),
        "site": ConfigRecord({"name": "x"}),
    })


def test_good_update_passes():
    assert check_update(_content(np.ones((1, 3), np.float32)), EXPECTED) is None


@pytest.mark.parametrize(("content", "reason"), [
    (_content(np.array([[1.0, np.nan, 0.0]], np.float32)), "'0.weight' holds non-finite"),
    (_content(np.array([[1.0, np.inf, 0.0]], np.float32)), "'0.weight' holds non-finite"),
    (_content(np.ones((3, 1), np.float32)), r"'0.weight' has shape \(3, 1\), expected \(1, 3\)"),
    (_content(np.ones((1, 3), np.float32), n=0), "num-examples"),
])
def test_bad_updates_are_named(content, reason):
    assert re.search(reason, check_update(content, EXPECTED) or "")


def _replies(contents):
    replies = []
    for node, content in enumerate(contents):
        ins = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node + 1,
                      message_type="train")
        content["site"] = ConfigRecord({"name": f"site{node}"})
        replies.append(Message(content, reply_to=ins))
    return replies


def test_strategy_aggregates_only_the_valid_updates():
    rounds = []
    strategy = RecordingFedAvg(on_round=rounds.append, min_available_nodes=1)
    strategy._expected = EXPECTED
    replies = _replies([_content(np.full((1, 3), 1.0, np.float32), n=10),
                        _content(np.full((1, 3), 3.0, np.float32), n=30),
                        _content(np.full((1, 3), np.nan, np.float32), n=10)])
    arrays, _ = strategy.aggregate_train(1, replies)
    # FedAvg of the two valid sites: (1 * 10 + 3 * 30) / 40 = 2.5
    np.testing.assert_allclose(arrays["0.weight"].numpy(), np.full((1, 3), 2.5))
    assert strategy._current["train_problems"] == [
        {"site": "site2", "status": "rejected",
         "reason": "array '0.weight' holds non-finite values (NaN or infinity)",
         "epsilon": 1.0}]  # the rejected update still cost site2 its ε
    assert sorted(strategy._current["train"]) == ["site0", "site1"]
    assert strategy.final_train["site2"].epsilon == 1.0


def test_an_update_whose_train_metrics_do_not_parse_is_rejected_not_fatal():
    # A hostile or broken site leaves out a declared key: its update is rejected with a
    # reason, the valid one is aggregated alone, and nothing of the bad one is recorded.
    strategy = RecordingFedAvg(on_round=[].append, min_available_nodes=1)
    strategy._expected = EXPECTED
    bad = _content(np.full((1, 3), 5.0, np.float32), n=10)
    bad["metrics"] = MetricRecord({"num-examples": 10, "epsilon": 1.0})
    replies = _replies([_content(np.full((1, 3), 1.0, np.float32), n=10), bad])
    arrays, _ = strategy.aggregate_train(1, replies)
    np.testing.assert_allclose(arrays["0.weight"].numpy(), np.full((1, 3), 1.0))
    [problem] = strategy._current["train_problems"]
    assert problem["site"] == "site1" and problem["status"] == "rejected"
    assert "train metrics" in problem["reason"] and problem["epsilon"] is None
    assert sorted(strategy.final_train) == ["site0"]
