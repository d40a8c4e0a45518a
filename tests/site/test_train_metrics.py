"""A train reply's metrics: typed at the site, byte-for-byte the keys it always sent."""

from __future__ import annotations

import math

from flwr.app import MetricRecord

from medfl.privacy.egress import DECLARED
from medfl.site import TrainMetrics

#: A DP site's train reply metrics, in the order sites send them.
SENT = {"num-examples": 199, "site-weight": 1.0, "epsilon": 2.9, "delta": 1e-3,
        "noise-multiplier": 1.6, "sample-rate": 0.14, "max-grad-norm": 1.0, "steps": 70,
        "prior-noise-multipliers": [5.0], "epsilon-lifetime": 3.2}


def test_the_wire_form_round_trips_with_keys_order_and_types():
    parsed = TrainMetrics.from_metrics(SENT)
    assert parsed.num_examples == 199 and parsed.steps == 70
    assert parsed.prior_noise_multipliers == (5.0,) and parsed.epsilon_lifetime == 3.2
    out = parsed.to_metrics()
    assert out == SENT and list(out) == list(SENT)
    assert [type(v) for v in out.values()] == [type(v) for v in SENT.values()]


def test_int8_scales_are_optional_and_come_last():
    scaled = {**SENT, "int8-scales": [0.01, 0.02]}
    parsed = TrainMetrics.from_metrics(MetricRecord(scaled))  # as the server receives it
    assert parsed.int8_scales == (0.01, 0.02)
    assert list(parsed.to_metrics()) == list(scaled)
    assert TrainMetrics.from_metrics(SENT).int8_scales is None


def test_a_round_without_the_ledger_or_dp_sends_what_it_always_sent():
    no_dp = TrainMetrics(num_examples=30, epsilon=math.inf, delta=0.0, noise_multiplier=0.0,
                         sample_rate=0.0, max_grad_norm=0.0, steps=12)
    assert no_dp.to_metrics() == {
        "num-examples": 30, "site-weight": 1.0, "epsilon": math.inf, "delta": 0.0,
        "noise-multiplier": 0.0, "sample-rate": 0.0, "max-grad-norm": 0.0, "steps": 12,
        "prior-noise-multipliers": []}


def test_the_distributed_unconditional_epsilon_is_optional_and_comes_last():
    distributed = {**SENT, "epsilon-local": 7.5}
    parsed = TrainMetrics.from_metrics(MetricRecord(distributed))
    assert parsed.epsilon_local == 7.5
    assert list(parsed.to_metrics()) == list(distributed)
    assert TrainMetrics.from_metrics(SENT).epsilon_local is None
    assert "epsilon-local" not in TrainMetrics.from_metrics(SENT).to_metrics()


def test_every_key_a_site_can_send_is_declared_for_train_replies():
    full = TrainMetrics.from_metrics({**SENT, "int8-scales": [0.5],
                                      "epsilon-local": 7.5}).to_metrics()
    assert set(full) == set(DECLARED["train"])
