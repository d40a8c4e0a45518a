"""Invariants (Hypothesis): ε never decreases; averaging identical updates is the identity."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords
from hypothesis import given, settings
from hypothesis import strategies as st

from medfl.privacy.dp import epsilon_from_history, extend_history

steps_st = st.tuples(st.floats(0.5, 8.0), st.floats(0.01, 1.0), st.integers(1, 50))


@settings(max_examples=20, deadline=None)
@given(st.lists(steps_st, min_size=1, max_size=4))
def test_epsilon_never_decreases_as_releases_accumulate(entries):
    _check_monotone(entries, "rdp")


def test_prv_epsilon_never_decreases():
    # PRV is slow to evaluate: one fixed mixed sequence instead of a Hypothesis search.
    _check_monotone([(1.0, 0.1, 20), (5.0, 1.0, 1), (1.0, 0.1, 30)], "prv")


def _check_monotone(entries, accountant):
    history, previous = [], 0.0
    for sigma, rate, steps in entries:
        history = extend_history(history, sigma, rate, steps)
        eps = epsilon_from_history(history, delta=1e-3, accountant=accountant)
        assert eps >= previous - 1e-6
        previous = eps


def test_extend_history_merges_like_opacus():
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    ours = []
    for sigma, rate in [(1.0, 0.1), (1.0, 0.1), (2.0, 1.0), (1.0, 0.1)]:
        acc.step(noise_multiplier=sigma, sample_rate=rate)
        ours = extend_history(ours, sigma, rate, 1)
    assert ours == acc.history


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.lists(st.integers(1, 500), min_size=1, max_size=6))
def test_fedavg_of_identical_updates_is_the_identity(seed, weights):
    update = np.random.default_rng(seed).normal(size=(3, 4)).astype(np.float32)
    replies = [RecordDict({"arrays": ArrayRecord({"w": Array(update)}),
                           "metrics": MetricRecord({"num-examples": n})}) for n in weights]
    out = aggregate_arrayrecords(replies, "num-examples")
    np.testing.assert_allclose(out["w"].numpy(), update, rtol=1e-5, atol=1e-6)
