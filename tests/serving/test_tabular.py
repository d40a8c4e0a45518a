"""Tabular inference from a bundle: validation, predictions, SHAP, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from medfl.data.heart import FEATURE_NAMES, load_heart_site
from medfl.serving import InputError, TabularModel, load_bundle

RECORD = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}


@pytest.fixture(scope="module")
def model(run_dir):
    return TabularModel.from_bundle(load_bundle(run_dir))


def _by_hand(model, record):
    """Encode, standardise and apply the logistic regression with numpy only."""
    m = model.bundle.manifest
    std = m["preprocessing"]["standardizer"]
    cp = [record["cp"] == v for v in (2, 3, 4)]
    restecg = [record["restecg"] == v for v in (1, 2)]
    x = np.array([record[c] for c in ("age", "trestbps", "chol", "thalach", "oldpeak",
                                      "sex", "fbs", "exang")] + cp + restecg, dtype=np.float64)
    x[std["columns"]] = (x[std["columns"]] - std["mean"]) / np.array(std["std"])
    w = model.bundle.weights["0.weight"].numpy().ravel()
    b = float(model.bundle.weights["0.bias"].numpy()[0])
    return x, w, b


def test_prediction_equals_the_model_computed_by_hand(model):
    x, w, b = _by_hand(model, RECORD)
    p = 1 / (1 + np.exp(-(x @ w + b)))
    out = model.predict([RECORD, RECORD])
    assert len(out) == 2
    assert out[0]["probabilities"]["disease"] == pytest.approx(p, rel=1e-5)
    assert out[0]["probabilities"]["no disease"] == pytest.approx(1 - p, rel=1e-5)
    assert out[0]["label"] == ("disease" if p >= 0.5 else "no disease")


def test_served_predictions_match_the_summary_accuracy(model, run_dir):
    import json

    from medfl.data.heart import INPUT_COLUMNS, load_site_frame

    summary = json.loads((run_dir / "summary.json").read_text())
    data = load_heart_site("va")
    frame = load_site_frame("va").drop(columns=["slope", "ca", "thal"]).dropna()
    frame = frame.reset_index(drop=True)
    # rebuild the raw test records of VA from the same split the sites use
    from sklearn.model_selection import train_test_split

    y = (frame["num"] > 0).astype(int).to_numpy()
    _, test_idx = train_test_split(np.arange(len(y)), test_size=0.34, random_state=43,
                                   shuffle=True, stratify=y)
    records = frame.iloc[test_idx][list(INPUT_COLUMNS)].to_dict("records")
    labels = [p["label"] == "disease" for p in model.predict(records)]
    right = np.array(labels) == data.y_test.astype(bool)
    va = next(s for s in summary["sites"] if s["name"] == "va")
    # the run released exact test-set figures (test-epsilon 0): nothing withheld at k
    assert right.mean() == pytest.approx(va["metrics"]["accuracy"])


def test_shap_of_a_linear_model_is_weight_times_distance_to_the_reference(model):
    x, w, b = _by_hand(model, RECORD)
    exp = model.explain([RECORD])[0]
    assert exp["base_value"] == pytest.approx(b, abs=1e-5)
    for j, name in enumerate(FEATURE_NAMES):
        assert exp["shap_values"][name] == pytest.approx(w[j] * x[j], abs=1e-4), name
    assert sum(exp["shap_values"].values()) + exp["base_value"] == pytest.approx(x @ w + b,
                                                                                abs=1e-4)


@pytest.mark.parametrize(("change", "field", "message"), [
    ({"age": 250}, "records[0].age", "between 18.0 and 100.0"),
    ({"cp": 9}, "records[0].cp", r"one of \[1, 2, 3, 4\]"),
    ({"sex": True}, "records[0].sex", "finite number"),
    ({"chol": "high"}, "records[0].chol", "finite number"),
    ({"chol": float("nan")}, "records[0].chol", "finite number"),
    ({"name": "Jane Doe"}, "records[0].name", "unknown column"),
])
def test_bad_records_name_the_field_and_what_is_valid(model, change, field, message):
    with pytest.raises(InputError, match=message) as err:
        model.predict([{**RECORD, **change}])
    assert err.value.field == field


def test_missing_column_is_named(model):
    rec = dict(RECORD)
    del rec["thalach"]
    with pytest.raises(InputError, match=r"records\[0\].thalach: is missing"):
        model.predict([rec])
