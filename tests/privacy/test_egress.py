"""The egress guard: a reply that breaks the contract never leaves the site."""

from __future__ import annotations

import ast

import numpy as np
import pytest
from conftest import ROOT, run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.clientapp import ClientApp

from bench.inprocess import InProcessGrid
from medfl import federation as fed
from medfl.evaluation.histograms import N_BINS
from medfl.privacy.egress import check_reply
from medfl.wire import ReplyBounds

GLOBAL = {"0.weight": np.zeros((1, 13), np.float32), "0.bias": np.zeros(1, np.float32)}
GOOD_TRAIN = {"num-examples": 199, "steps": 70, "epsilon": 2.9, "delta": 1e-3,
              "noise-multiplier": 1.6, "sample-rate": 0.14, "max-grad-norm": 1.0,
              "prior-noise-multipliers": [], "epsilon-lifetime": 2.9, "site-weight": 1.0}
RAW_ROW = {"age": 63.0, "sex": 1.0, "trestbps": 145.0, "chol": 233.0}
PREDICTIONS = [0.91, 0.12, 0.77, 0.05, 0.64]
#: a heart-disease run: 5 cells (all, 2 sexes, 2 age bands), 13 features
HEART = ReplyBounds(k=10, n_numeric=5, n_cells=5, n_explain=13, n_hist=5 * 2 * N_BINS,
                    n_monitor_hist=2 * N_BINS)
#: a segmentation run with the same cells: 8 sums per cell, no explanation
SEGMENTATION = ReplyBounds(k=10, n_numeric=0, n_cells=5, n_sums=5 * 8, n_seg=8,
                           n_monitor_sums=3)


def _check(kind="train", metrics=None, arrays=None, records=None, site=None, k=10):
    shapes = {n: a.shape for n, a in GLOBAL.items()}
    return check_reply(
        kind, records=records or {"metrics": "metrics", "site": "config", "arrays": "arrays"},
        metrics=GOOD_TRAIN if metrics is None else metrics, site_record=site or {"name": "va"},
        arrays=shapes if arrays is None else arrays, expected_arrays=shapes,
        bounds=ReplyBounds(k=k, n_numeric=5))


def _release(kind, metrics, bounds=HEART):
    return check_reply(kind, records={"metrics": "metrics", "site": "config"},
                       metrics=metrics, site_record={"name": "va"}, arrays=None,
                       expected_arrays=None, bounds=bounds)


def test_a_well_formed_train_reply_passes():
    assert _check() == []


@pytest.mark.parametrize(("change", "named"), [
    ({"metrics": {**GOOD_TRAIN, **RAW_ROW}}, "metric 'age' is not declared"),
    ({"metrics": {**GOOD_TRAIN, "scores": PREDICTIONS}}, "metric 'scores' is not declared"),
    ({"metrics": {**GOOD_TRAIN, "num-examples": 4}}, "'num-examples' holds a count below k=10"),
    ({"metrics": {**GOOD_TRAIN, "epsilon": [2.9]}}, "'epsilon' must be a scalar"),
    ({"metrics": {**GOOD_TRAIN, "prior-noise-multipliers": PREDICTIONS * 4}},
     "'prior-noise-multipliers' may have at most 8 entries"),
    ({"arrays": {"0.weight": (1, 13), "0.bias": (1,), "row": (13,)}}, "arrays differ"),
    ({"arrays": {"0.weight": (303, 13), "0.bias": (1,)}}, "arrays differ"),
    ({"site": {"name": "va", "note": "patient 4711 had a reaction"}}, "only the site's name"),
    ({"records": {"metrics": "metrics", "site": "config", "arrays": "arrays",
                  "debug": "config"}}, "record 'debug' (config) is not allowed"),
])
def test_leaks_are_named_by_key_never_by_value(change, named):
    violations = _check(**change)
    assert any(named in v for v in violations), violations
    text = " ".join(violations)
    assert "63.0" not in text and "0.91" not in text and "4711" not in text


def _monitor(**change):
    hist = [float(v) for v in np.random.default_rng(0).normal(5, 3, 2 * N_BINS)]
    return {"hist": hist, "sums": [], "hist-std": 2.5, "sums-std": 0.0,
            "test-epsilon": 0.3, **change}


def _report(**change):
    hist = [float(v) for v in np.random.default_rng(1).normal(3, 4, 5 * 2 * N_BINS)]
    return {"hist": hist, "sums": [], "sums-std": [], "hist-std": 3.1,
            "explain": [0.5] * 13, "explain-std": 12.4, "test-epsilon": 0.8, **change}


def test_noisy_releases_pass_though_their_counts_are_small_or_negative():
    # nothing noisy is a count: a bin of -3.2 or 1.4 "patients" leaves, as the noise made it
    monitor = _monitor(hist=[-3.2, 1.4] * N_BINS)
    personal = {f"personal-{k}": v for k, v in _monitor().items()}
    assert _release("evaluate", {**monitor, **personal}) == []
    assert _release("query.report", _report()) == []
    seg = {"hist": [], "sums": [float(v) for v in range(40)], "hist-std": 0.0,
           "sums-std": [1.7] * 8, "explain": [], "explain-std": 0.0, "test-epsilon": 0.8}
    assert _release("query.report", seg, SEGMENTATION) == []
    assert _release("evaluate", _monitor(hist=[], sums=[12.3, 9.1, 7.7], **{"sums-std": 1.0}),
                    SEGMENTATION) == []


@pytest.mark.parametrize(("kind", "metrics", "named"), [
    ("evaluate", _monitor(hist=[1.0] * (2 * N_BINS + 1)), "'hist' must have 16 entries"),
    ("evaluate", _monitor(sums=[3.0, 2.0, 1.0]), "'sums' must have 0 entries"),
    ("query.report", _report(hist=[1.0] * 16), "'hist' must have 80 entries"),
    ("query.report", _report(explain=[]), "'explain' must have 13 entries"),
    ("query.report", _report(explain=PREDICTIONS), "'explain' must have 13 entries"),
    ("evaluate", _monitor(**{"hist-std": 0.0}), "'hist-std' must be positive"),
    ("evaluate", {k: v for k, v in _monitor().items() if k != "hist-std"},
     "'hist-std' must be positive"),
    ("query.report", _report(**{"explain-std": 0.0}), "'explain-std' must be positive"),
    ("query.report", _report(**{"hist-std": -1.0}), "'hist-std' must be positive"),
    ("query.report", _report(hist=[float("nan")] * 80), "'hist' holds a value that is not "
     "finite"),
    ("evaluate", _monitor(**{"test-epsilon": float("inf")}), "'test-epsilon' holds a value "
     "that is not finite"),
    ("evaluate", _monitor(scores=PREDICTIONS), "'scores' is not declared"),
    ("query.report", _report(**{"cell-n": [104.0] * 5}), "'cell-n' is not declared"),
])
def test_a_release_of_the_wrong_size_or_without_noise_is_blocked(kind, metrics, named):
    violations = _release(kind, metrics)
    assert any(named in v for v in violations), violations


def test_zero_noise_passes_only_in_a_run_that_asked_for_exact_figures():
    exact = _monitor(**{"hist-std": 0.0})
    assert _release("evaluate", exact, ReplyBounds(**{**vars(HEART), "exact": True})) == []
    # after an exact release the site states an infinite test ε: only in an exact run
    stated = _monitor(**{"hist-std": 0.0, "test-epsilon": float("inf")})
    assert _release("evaluate", stated, ReplyBounds(**{**vars(HEART), "exact": True})) == []
    assert any("'hist-std' must be positive" in v for v in _release("evaluate", exact))


def _leaky_app(metrics: dict, *, guarded: bool) -> ClientApp:
    app = ClientApp()

    @app.train(mods=[fed.egress_guard] if guarded else [])
    def train(msg, context):
        return fed.reply(msg, site="va", metrics=metrics,
                         weights={k: v.clone() for k, v in
                                  msg.content["arrays"].to_torch_state_dict().items()})

    return app


def _send(app) -> Message:
    grid = InProcessGrid(app, run_config(), num_nodes=1)
    ins = Message(RecordDict({"arrays": ArrayRecord({n: Array(a) for n, a in GLOBAL.items()}),
                              "config": ConfigRecord({"server-round": 1})}),
                  dst_node_id=grid.get_node_ids()[0], message_type="train")
    return grid.send_and_receive([ins])[0]


@pytest.mark.parametrize(("leak", "key"), [
    (RAW_ROW, "age"), ({"scores": PREDICTIONS}, "scores"), ({"mood-index": 3.0}, "mood-index"),
])
def test_the_guard_blocks_a_leaking_client_and_would_not_without_it(leak, key):
    metrics = {**GOOD_TRAIN, **leak}
    unguarded = _send(_leaky_app(metrics, guarded=False))
    assert not unguarded.has_error() and key in unguarded.content["metrics"]  # the leak is real
    blocked = _send(_leaky_app(metrics, guarded=True))
    assert blocked.has_error() and blocked.error.code == fed.ERROR_EGRESS
    assert f"'{key}'" in blocked.error.reason
    assert not blocked.has_content()


def test_every_handler_of_the_real_client_app_is_guarded():
    tree = ast.parse((ROOT / "client" / "app.py").read_text())
    handlers = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any(isinstance(d, ast.Call) and getattr(d.func, "attr", "") in
                        ("train", "evaluate", "query") for d in f.decorator_list)]
    assert {f.name for f in handlers} == {"train", "evaluate", "moments", "audit", "report"}
    for f in handlers:
        call = next(d for d in f.decorator_list if isinstance(d, ast.Call))
        mods = next(kw.value for kw in call.keywords if kw.arg == "mods")
        assert "egress_guard" in ast.unparse(mods), f.name


def test_the_contract_derived_from_the_wire_types_is_the_declared_table():
    # The table as it was typed by hand before it was derived from the wire types.
    from medfl.privacy.egress import COUNT_KEYS, DECLARED, FIXED_LENGTH, MAX_LENGTH, NOISE

    s, li = "scalar", "list"
    evaluate = {"hist": li, "sums": li, "hist-std": s, "sums-std": s, "test-epsilon": s}
    assert DECLARED == {
        "query.moments": {"count": s, "positives": s, "sums": li, "sumsq": li, "present": li},
        "query.audit": {"member-hist": li, "non-member-hist": li, "member-std": s,
                        "non-member-std": s},
        "train": {"num-examples": s, "steps": s, "epsilon": s, "delta": s,
                  "noise-multiplier": s, "sample-rate": s, "max-grad-norm": s,
                  "prior-noise-multipliers": li, "epsilon-lifetime": s, "site-weight": s,
                  "int8-scales": li, "epsilon-local": s},
        "evaluate": {**evaluate, **{"personal-" + k: v for k, v in evaluate.items()}},
        "query.report": {"hist": li, "sums": li, "sums-std": li, "hist-std": s,
                         "explain": li, "explain-std": s, "test-epsilon": s},
    }
    # exact counts only: nothing in a test-set release is one
    assert COUNT_KEYS == {"query.moments": {"count"}, "query.audit": set(),
                          "train": {"num-examples"}, "evaluate": set(), "query.report": set()}
    assert FIXED_LENGTH == {
        "query.moments": {"sums": "n_numeric", "sumsq": "n_numeric", "present": "n_numeric"},
        "query.audit": {}, "train": {"int8-scales": "n_arrays"},
        "evaluate": {"hist": "n_monitor_hist", "sums": "n_monitor_sums",
                     "personal-hist": "n_monitor_hist", "personal-sums": "n_monitor_sums"},
        "query.report": {"hist": "n_hist", "sums": "n_sums", "sums-std": "n_seg",
                         "explain": "n_explain"}}
    assert MAX_LENGTH["train"] == {"prior-noise-multipliers": 8}
    assert NOISE["evaluate"] == {"hist-std": "hist", "sums-std": "sums",
                                 "personal-hist-std": "personal-hist",
                                 "personal-sums-std": "personal-sums"}
    assert NOISE["query.report"] == {"hist-std": "hist", "sums-std": "sums",
                                     "explain-std": "explain"}
    # the audit: the test rows' histogram's noise is checked (the training rows' is 0 in
    # a run without DP-SGD); each histogram at most the public loss grid's 11 bins
    assert NOISE["query.audit"] == {"non-member-std": "non-member-hist"}
    assert MAX_LENGTH["query.audit"] == {"member-hist": 11, "non-member-hist": 11}
