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
from medfl.privacy.egress import check_reply

GLOBAL = {"0.weight": np.zeros((1, 13), np.float32), "0.bias": np.zeros(1, np.float32)}
GOOD_TRAIN = {"num-examples": 199, "steps": 70, "epsilon": 2.9, "delta": 1e-3,
              "noise-multiplier": 1.6, "sample-rate": 0.14, "max-grad-norm": 1.0,
              "prior-noise-multipliers": [], "epsilon-lifetime": 2.9, "site-weight": 1.0}
RAW_ROW = {"age": 63.0, "sex": 1.0, "trestbps": 145.0, "chol": 233.0}
PREDICTIONS = [0.91, 0.12, 0.77, 0.05, 0.64]


def _check(kind="train", metrics=None, arrays=None, records=None, site=None, k=10):
    shapes = {n: a.shape for n, a in GLOBAL.items()}
    return check_reply(
        kind, records=records or {"metrics": "metrics", "site": "config", "arrays": "arrays"},
        metrics=GOOD_TRAIN if metrics is None else metrics, site_record=site or {"name": "va"},
        arrays=shapes if arrays is None else arrays, expected_arrays=shapes, k=k, n_numeric=5)


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


def test_evaluate_groups_may_not_describe_fewer_than_k_or_one_class_only():
    base = {"num-examples": 40, "n-correct": 30, "loss-sum": 9.0, "auroc": 0.8,
            "neg-n": [20.0], "neg-mean": [0.3], "neg-var": [0.01],
            "pos-n": [20.0], "pos-mean": [0.7], "pos-var": [0.01]}
    records = {"metrics": "metrics", "site": "config"}
    ok = check_reply("evaluate", records=records, metrics=base, site_record={"name": "va"},
                     arrays=None, expected_arrays=None, k=10, n_numeric=5)
    assert ok == []
    # per-patient scores smuggled as groups of one
    per_patient = {**base, "pos-n": [1.0] * 20, "pos-mean": [0.5] * 20, "pos-var": [0.0] * 20}
    one_class = {**base, "neg-n": [], "neg-mean": [], "neg-var": []}
    for metrics, named in ((per_patient, "'pos-n' holds a count below k=10"),
                           (one_class, "only one class")):
        v = check_reply("evaluate", records=records, metrics=metrics,
                        site_record={"name": "va"}, arrays=None, expected_arrays=None,
                        k=10, n_numeric=5)
        assert any(named in x for x in v), v


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


def test_segmentation_sums_need_a_test_set_of_at_least_k():
    sums = {"dice-sum": 3.0, "dice-sqsum": 2.0, "iou-sum": 2.5}

    def check(metrics):
        return check_reply("evaluate", records={"metrics": "metrics", "site": "config"},
                           metrics=metrics, site_record={"name": "va"}, arrays=None,
                           expected_arrays=None, k=10, n_numeric=5)

    assert check({"num-examples": 12, **sums}) == []
    assert any("at least k" in v for v in check({"num-examples": -1.0, **sums}))
    assert any("not declared" in v for v in check({"num-examples": 12,
                                                   "dice-per-image": [0.5] * 12}))


def test_the_contract_derived_from_the_wire_types_is_the_declared_table():
    # The table as it was typed by hand before it was derived from the wire types.
    from medfl.privacy.egress import COUNT_KEYS, DECLARED, FIXED_LENGTH, MAX_LENGTH

    s, li = "scalar", "list"
    evaluate = {"num-examples": s, "n-correct": s, "loss-sum": s, "auroc": s,
                "neg-n": li, "neg-mean": li, "neg-var": li, "pos-n": li, "pos-mean": li,
                "pos-var": li, "dice-sum": s, "dice-sqsum": s, "iou-sum": s}
    assert DECLARED == {
        "query.moments": {"count": s, "sums": li, "sumsq": li},
        "query.audit": {"attack-auc": s, "attack-tpr-at-fpr10": s, "members": s,
                        "non-members": s},
        "train": {"num-examples": s, "steps": s, "epsilon": s, "delta": s,
                  "noise-multiplier": s, "sample-rate": s, "max-grad-norm": s,
                  "prior-noise-multipliers": li, "epsilon-lifetime": s, "site-weight": s,
                  "int8-scales": li},
        "evaluate": {**evaluate, **{"personal-" + k: v for k, v in evaluate.items()}},
        "query.report": {
            "cell-n": li, "cell-loss-sum": li, "cell-brier-sum": li, "cell-auroc": li,
            "g-cell": li, "g-class": li, "g-n": li, "g-mean": li, "g-var": li, "g-side": li,
            "cell-dice-sum": li, "cell-dice-sqsum": li, "cell-iou-sum": li,
            "cell-iou-sqsum": li, "cell-hd-n": li, "cell-hd-sum": li, "cell-hd-sqsum": li,
            "explain": li, "explain-n": s},
    }
    assert COUNT_KEYS == {"count", "num-examples", "n-correct", "neg-n", "pos-n", "members",
                          "non-members", "cell-n", "g-n", "cell-hd-n", "explain-n",
                          "personal-num-examples", "personal-n-correct", "personal-neg-n",
                          "personal-pos-n"}
    cells = ("n", "loss-sum", "brier-sum", "auroc", "dice-sum", "dice-sqsum", "iou-sum",
             "iou-sqsum", "hd-n", "hd-sum", "hd-sqsum")
    assert FIXED_LENGTH == {"sums": "n_numeric", "sumsq": "n_numeric", "explain": "n_explain",
                            **{f"cell-{x}": "n_cells" for x in cells},
                            "int8-scales": "n_arrays"}
    assert MAX_LENGTH == {"prior-noise-multipliers": 8}
