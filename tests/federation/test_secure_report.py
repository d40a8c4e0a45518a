"""The egress contract of a report's SecAgg+ "collect masked vectors" reply: one vector of
the report's declared length (n_hist + n_sums + n_explain) beside the weight, and clear
metrics checked as a ``query.report`` release with no value lists."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarray_to_bytes, ndarrays_to_parameters
from flwr.compat.common import recorddict_compat as compat

from bench import inprocess
from medfl.federation.secure_client import protocol_violations
from medfl.wire import ReplyBounds

#: a classification report over 3 cells of 2 x 4 bins and a 5-feature explanation
BOUNDS = ReplyBounds(k=10, n_numeric=5, n_cells=3, n_explain=5, n_hist=24)
CLEAR = {"hist-std": 1.5, "explain-std": 0.5, "sums-std": [], "test-epsilon": 0.4}


@pytest.fixture(autouse=True)
def _identity():
    inprocess.set_task_identity()


def _request(**config) -> Message:
    return Message(RecordDict({"config": ConfigRecord({"server-round": 0, **config})}),
                   dst_node_id=1000, message_type="train")


def _collect_reply(request: Message, vector_length: int, metrics: dict) -> Message:
    """A collect-stage reply as Flower's mod builds it: the weight, then the vector."""
    masked = [ndarray_to_bytes(np.array([1])),
              ndarray_to_bytes(np.zeros(vector_length, dtype=np.int64))]
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([]), num_examples=1,
                    metrics={})
    content = compat.fitres_to_recorddict(fitres, keep_input=False)
    content["fitres.parameters"] = ArrayRecord()  # Flower's mod sends it empty
    content["secaggplus_configs"] = ConfigRecord({"masked_params": masked})
    content["metrics"] = MetricRecord(metrics)
    content["site"] = ConfigRecord({"name": "cleveland"})
    return Message(content, reply_to=request)


def _violations(vector_length: int, metrics: dict, **config) -> list[str]:
    request = _request(query="report", **config)
    return protocol_violations(request, {"stage": "collect_masked_vectors"},
                               _collect_reply(request, vector_length, metrics), BOUNDS)


def test_a_report_vector_of_the_declared_length_with_clear_stds_may_leave():
    assert _violations(24 + 5, CLEAR) == []


@pytest.mark.parametrize("length", [24, 24 + 5 + 1, 0])
def test_a_report_vector_of_another_length_is_blocked(length):
    out = _violations(length, CLEAR)
    assert any("'masked_params' must hold vectors of [29] values" in v for v in out), out


@pytest.mark.parametrize("key", ["hist", "explain"])
def test_report_values_in_the_clear_metrics_are_blocked(key):
    out = _violations(29, {**CLEAR, key: [0.0] * (24 if key == "hist" else 5)})
    assert any(f"metric {key!r} of the report may leave only masked" in v for v in out), out


def test_the_clear_metrics_are_checked_as_a_report_release():
    out = _violations(29, {**CLEAR, "loss": 0.3, "sums-std": [1.0]})
    assert "metric 'loss' is not declared for query.report replies" in out
    assert "metric 'sums-std' must have 0 entries" in out


def test_a_train_reply_is_not_held_to_the_report_length():
    """Without the report marker the collect reply is a model update: one vector per
    model array (none sent here), checked as training metrics."""
    request = _request()
    reply = _collect_reply(request, 29, {"num-examples": 20})
    out = protocol_violations(request, {"stage": "collect_masked_vectors"}, reply, BOUNDS)
    assert out == ["protocol key 'masked_params' must hold 1 vectors (the model's arrays "
                   "and the weight)"]
