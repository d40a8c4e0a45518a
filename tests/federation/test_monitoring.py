"""The server evaluates only at the plan's monitoring rounds and sums the sites' noisy
histograms; a report reply is kept only when it parses as a report release."""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord

from bench.inprocess import set_task_identity
from medfl.evaluation.histograms import N_BINS
from medfl.evaluation.stats import SiteEvalStats, pool_site_stats
from medfl.federation import RecordingFedAvg, query_report, reply
from medfl.federation.monitoring import parse_evaluations
from medfl.privacy.mechanisms import monitor_rounds


class _NoGrid:
    """A grid that must not be used: nothing is sent outside a monitoring round."""

    def __getattr__(self, name):
        raise AssertionError(f"the strategy used the grid ({name}) in a round it skips")


def _hist(seed: int) -> list[float]:
    return [float(v) for v in np.random.default_rng(seed).normal(6, 2, 2 * N_BINS)]


def test_an_unplanned_round_sends_nothing_and_records_no_evaluation():
    set_task_identity()
    rounds, checkpoints = [], []
    strategy = RecordingFedAvg(on_round=rounds.append, min_available_nodes=1,
                               monitor_rounds=monitor_rounds(6, 3),
                               on_checkpoint=lambda s, r, a: checkpoints.append(r))
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    assert monitor_rounds(6, 3) == (3, 6)
    assert list(strategy.configure_evaluate(2, arrays, ConfigRecord({}), _NoGrid())) == []
    assert strategy.aggregate_evaluate(2, []) is None
    [record] = rounds
    assert record["round"] == 2 and "evaluate" not in record and "global" not in record
    assert checkpoints == [2]  # the round still checkpoints
    assert strategy.monitors(3) and strategy.monitors(6) and not strategy.monitors(5)


def test_the_sites_noisy_histograms_are_summed_and_a_malformed_one_left_out():
    a, b = _hist(1), _hist(2)
    metrics = {"a": {"hist": a, "sums": [], "hist-std": 2.0, "sums-std": 0.0,
                     "test-epsilon": 0.4},
               "b": {"hist": b, "sums": [], "hist-std": 2.0, "sums-std": 0.0,
                     "test-epsilon": 0.4},
               "bad": {"hist": [1.0, 2.0], "hist-std": 2.0}}
    stats, personal = parse_evaluations(metrics, threshold=0.5)
    assert sorted(stats) == ["a", "b"] and personal == {}
    summed = SiteEvalStats(0.5, hist=np.add(a, b).reshape(2, N_BINS))
    pooled = pool_site_stats(list(stats.values()))
    assert pooled["accuracy"] == summed.accuracy and pooled["n"] == summed.n


class _ReportGrid:
    def __init__(self, metrics: dict[int, dict]) -> None:
        self.metrics = metrics

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"m{i}"
            node = msg.metadata.dst_node_id
            out.append(reply(msg, site=f"site{node}", metrics=self.metrics[node]))
        return out


def test_a_report_reply_that_is_not_a_release_over_the_runs_cells_is_left_out():
    set_task_identity()
    good = {"hist": [1.0] * (3 * 2 * N_BINS), "sums": [], "sums-std": [], "hist-std": 2.0,
            "explain": [], "explain-std": 0.0, "test-epsilon": 0.8}
    short = {**good, "hist": [1.0] * (2 * 2 * N_BINS)}  # two cells, not three
    grid = _ReportGrid({1: good, 2: short})
    out = query_report(grid, [1, 2], arrays=ArrayRecord(), config=ConfigRecord({}),
                       timeout=5.0, n_cells=3)
    assert list(out) == ["site1"] and out["site1"]["hist"] == good["hist"]
