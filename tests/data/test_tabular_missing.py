"""Missing cells a schema declares: parsing, encoding, the consortium's mean, serving."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from medfl.data.missing import check_received, pool_with_imputation, with_imputation
from medfl.data.scaling import Standardizer, moments_sensitivity, site_moments
from medfl.data.tabular import TabularSchema, encode_columns
from medfl.errors import ConfigError, DataError

LABEL = {"column": "outcome", "names": ["no", "yes"], "negative": "0", "positive": "1"}
FEATURES = [
    {"name": "age", "type": "numeric", "bounds": [18, 100]},
    {"name": "bmi", "type": "numeric", "bounds": [10, 60], "missing": "impute",
     "indicator": True},
    {"name": "smoker", "type": "binary", "missing": "impute"},
    {"name": "cp", "type": "categorical", "levels": [1, 2, 3], "missing": "level"},
]


def _schema(features=None) -> TabularSchema:
    return TabularSchema.from_dict({"label": LABEL, "features": features or FEATURES})


def _frame(cells: dict[str, list[str]]) -> pd.DataFrame:
    frame = pd.DataFrame(cells, dtype=str)
    frame.index = pd.RangeIndex(2, len(frame) + 2)
    return frame


# --- the schema ------------------------------------------------------------------------

def test_missing_modes_parse_and_reach_the_input_columns():
    schema = _schema()
    assert [(f.missing, f.indicator) for f in schema.features] == [
        ("refuse", False), ("impute", True), ("impute", False), ("level", False)]
    columns = schema.columns()
    assert "missing" not in columns[0]  # refuse is the default, left implicit
    assert columns[1]["missing"] == "impute" and columns[1]["indicator"] is True
    assert columns[3]["missing"] == "level"
    # numeric, binary, one-hot with the missing level last, then the indicator
    assert schema.feature_names == ("age", "bmi", "smoker", "cp_2", "cp_3", "cp_missing",
                                    "bmi_missing")
    spec = schema.spec()
    assert spec.impute_idx == (1, 2)
    assert spec.moment_idx == (0, 1, 2)  # the binary smoker joins the numeric moments
    np.testing.assert_array_equal(spec.moment_bounds, [[18, 100], [10, 60], [0, 1]])


@pytest.mark.parametrize(("index", "change", "match"), [
    (3, {"missing": "impute"}, r"'features\[3\].missing' has value 'impute'; expected for a "
                               r"categorical feature one of \['refuse', 'level'\]"),
    (0, {"missing": "level"}, r"'features\[0\].missing' .* for a numeric feature one of "
                              r"\['refuse', 'impute'\]"),
    (0, {"missing": "imput"}, r"one of refuse, impute, level \(did you mean 'impute'\?\)"),
    (0, {"indicator": True}, r"'features\[0\].indicator' .* true only with"),
    (1, {"indicator": "yes"}, r"'features\[1\].indicator' has value 'yes'"),
    (0, {"name": "bmi_missing"}, r"key 'features' has value \['bmi_missing'\]; expected "
                                 r"encoded feature names that are unique"),
])
def test_bad_missing_declarations_name_the_key_and_what_is_valid(index, change, match):
    features = [dict(f) for f in FEATURES]
    features[index] |= change
    with pytest.raises(ConfigError, match=match):
        _schema(features)


# --- the encoding, by hand -------------------------------------------------------------

def test_each_mode_encodes_missing_cells_as_declared():
    frame = _frame({"age": ["40", "50", "60"], "bmi": ["22.5", "", "NA"],
                    "smoker": ["1", "?", "0"], "cp": ["2", "", "1"]})
    x = _schema().encode(frame)
    nan = math.nan
    expected = np.array([  # age bmi smoker cp_2 cp_3 cp_missing bmi_missing
        [40, 22.5, 1, 1, 0, 0, 0],
        [50, nan, nan, 0, 0, 1, 1],
        [60, nan, 0, 0, 0, 0, 1]], dtype=np.float32)
    np.testing.assert_array_equal(x, expected)  # nan where the consortium value goes
    # With the values a bundle's input schema carries, the cells are filled.
    columns = _schema().columns()
    columns[1]["impute"], columns[2]["impute"] = 30.0, 0.25
    expected[1:, 1], expected[1, 2] = 30.0, 0.25
    np.testing.assert_array_equal(encode_columns(frame, columns), expected)


def test_a_refuse_feature_still_names_line_and_column_never_the_value():
    frame = _frame({"age": ["40", ""], "bmi": ["22", "7"], "smoker": ["1", "0"],
                    "cp": ["1", "1"]})
    with pytest.raises(DataError, match=r"^line 3, column 'age': missing value"):
        _schema().encode(frame)
    frame.loc[3, "age"] = "41"
    with pytest.raises(DataError, match=r"^line 3, column 'bmi': value must be between 10.0 "
                                        r"and 60.0$"):  # present cells keep their bounds
        _schema().encode(frame)
    frame.loc[3, "bmi"], frame.loc[2, "cp"] = "", "7"
    with pytest.raises(DataError, match=r"^line 2, column 'cp': value outside its levels"):
        _schema().encode(frame)


# --- the consortium's mean and its release ---------------------------------------------

def test_the_federated_mean_is_numpys_over_present_clipped_cells():
    spec = _schema().spec()
    rng = np.random.default_rng(0)
    sites = []
    for n in (30, 45):
        x = np.column_stack([rng.uniform(10, 110, n), rng.uniform(5, 70, n),
                             rng.integers(0, 2, n)]).astype(np.float64)
        x[rng.random((n, 3)) < [0, 0.3, 0.2]] = np.nan
        sites.append(x)
    moments = [site_moments(x, bounds=spec.moment_bounds, present=True) for x in sites]
    scaler = pool_with_imputation(moments, spec)
    pooled = np.vstack(sites)
    clipped = np.clip(pooled, spec.moment_bounds[:, 0], spec.moment_bounds[:, 1])
    assert scaler.columns == (0, 1)
    assert scaler.impute_columns == (1, 2)
    np.testing.assert_allclose(scaler.impute_values, np.nanmean(clipped[:, 1:], axis=0),
                               rtol=1e-12)
    np.testing.assert_allclose(scaler.mean, np.nanmean(clipped[:, :2], axis=0), rtol=1e-12)
    np.testing.assert_allclose(scaler.std, np.nanstd(clipped[:, :2], axis=0), rtol=1e-9)


def test_the_sensitivity_counts_the_present_cells():
    # By hand: d = 4 columns in [0, 1]; one patient adds at most 1 to each sum, sum of
    # squares and present count: sqrt(4 + 4 + 4) = sqrt(12); without counts sqrt(8).
    assert moments_sensitivity(4, present=True) == pytest.approx(math.sqrt(12))
    assert moments_sensitivity(4) == pytest.approx(math.sqrt(8))
    bounds = np.tile([0.0, 1.0], (4, 1))
    rest = np.array([[0.2, np.nan, 0.5, 0.9], [np.nan, 0.3, 0.1, 0.4]])
    extreme = np.vstack([rest, np.ones((1, 4))])

    def vector(x):
        m = site_moments(x, bounds=bounds, present=True)
        return np.concatenate([m.sums, m.sumsq, m.present])

    assert np.linalg.norm(vector(extreme) - vector(rest)) == pytest.approx(math.sqrt(12))

    class Recorder:
        scales: list[float] = []

        def normal(self, loc, scale, size):
            self.scales.append(scale)
            return np.zeros(size)

    rng = Recorder()
    site_moments(rest, bounds=bounds, noise_multiplier=2.0, rng=rng, present=True)
    assert rng.scales == [pytest.approx(2.0 * math.sqrt(12))] * 3  # sums, sumsq, present


# --- the values travel: to the sites, into the bundle -----------------------------------

def test_the_standardiser_fills_then_scales_and_round_trips():
    scaler = Standardizer((0,), (50.0,), (10.0,), (1,), (0.25,))
    x = np.array([[60, np.nan], [40, 1]], dtype=np.float32)
    np.testing.assert_array_equal(scaler.transform(x), [[1, 0.25], [-1, 1]])
    assert Standardizer.from_dict(json.loads(json.dumps(scaler.to_dict()))) == scaler
    assert "impute_columns" not in Standardizer((0,), (1.0,), (2.0,)).to_dict()


def test_the_message_to_the_sites_carries_the_values():
    from medfl.federation.records import scaler_from_config, scaler_to_config

    scaler = Standardizer((0, 1), (50.0, 25.0), (10.0, 4.0), (1, 2), (25.0, 0.25))
    assert scaler_from_config(scaler_to_config(scaler)) == scaler
    bad = scaler_to_config(scaler) | {"scaler-impute-values": [25.0]}
    with pytest.raises(ConfigError, match="differ in length"):
        scaler_from_config(bad)


@pytest.mark.parametrize(("columns", "values", "match"), [
    ((1,), (25.0,), r"scaler-impute-columns \[1\]; this site's schema imputes features at "
                    r"\[1, 2\]"),
    ((1, 2), (float("nan"), 0.5), r"scaler-impute-values entry for feature 'bmi' that is not "
                                  r"a finite number in its public bounds \[10.0, 60.0\]"),
    ((1, 2), (25.0, 1.5), r"for feature 'smoker' .* \[0.0, 1.0\]"),
    ((1, 2), (61.0, 0.5), r"for feature 'bmi'"),
])
def test_a_site_refuses_values_outside_the_public_bounds(columns, values, match):
    spec = _schema().spec()
    received = Standardizer((0, 1), (50.0, 25.0), (10.0, 4.0), columns, values)
    with pytest.raises(ConfigError, match=match):
        check_received(received, spec)
    ok = Standardizer((0, 1), (50.0, 25.0), (10.0, 4.0), (1, 2), (25.0, 0.5))
    assert check_received(ok, spec) is ok


def test_the_bundle_schema_carries_the_values():
    schema = _schema().input_schema()
    out = with_imputation(schema, Standardizer((0, 1), (1.0, 1.0), (1.0, 1.0), (1, 2),
                                               (25.0, 0.5)))
    assert [c.get("impute") for c in out["columns"]] == [None, 25.0, 0.5, None]
    assert "impute" not in schema["columns"][1]  # a copy


def test_impute_without_federated_scaling_is_a_config_error(tmp_path):
    from conftest import run_config as make

    from medfl import tasks
    from medfl.config import parse_run_config

    path = tmp_path / "schema.json"
    path.write_text(json.dumps({"label": LABEL, "features": FEATURES}))
    for scaling in ("site", "none"):
        cfg = parse_run_config(make(task="tabular", data__schema=str(path),
                                    data__manifest=str(tmp_path / "t.csv"),
                                    preprocessing__scaling=scaling))
        with pytest.raises(ConfigError, match=rf"preprocessing.scaling='{scaling}', but "
                           r"data.schema declares \"missing\": \"impute\" for \['bmi', "
                           r"'smoker'\].*needs preprocessing.scaling='federated'"):
            tasks.task_for(cfg).feature_spec()


# --- a federated run with missing cells, then serving a null ----------------------------

def test_a_run_with_missing_cells_imputes_the_consortium_mean_and_serves_null(
        tmp_path, run_inprocess):
    from medfl.serving import InputError, TabularModel, load_bundle

    rng = np.random.default_rng(0)
    n, sites = 60, ("alpha", "beta", "gamma")
    age, bmi = rng.integers(25, 90, 3 * n), rng.uniform(15, 45, 3 * n).round(1)
    smoker, cp = rng.integers(0, 2, 3 * n), rng.integers(1, 4, 3 * n)
    logit = 0.08 * (age - 57) + 0.1 * (bmi - 28) + 1.5 * smoker - 0.5
    frame = pd.DataFrame({"site": np.repeat(sites, n), "age": age, "bmi": bmi,
                          "smoker": smoker, "cp": cp,
                          "outcome": (rng.random(3 * n) < 1 / (1 + np.exp(-logit))).astype(int),
                          "split": np.tile(["train"] * 42 + ["test"] * 18, 3)}).astype(str)
    frame.loc[rng.random(3 * n) < 0.25, "bmi"] = ""
    frame.loc[rng.random(3 * n) < 0.1, "smoker"] = "NA"
    frame.loc[rng.random(3 * n) < 0.1, "cp"] = "?"
    csv, schema = tmp_path / "t.csv", tmp_path / "schema.json"
    frame.to_csv(csv, index=False)
    schema.write_text(json.dumps({"label": LABEL, "features": FEATURES}))
    run_path, _ = run_inprocess(num_nodes=3, task="tabular", data__manifest=str(csv),
                                data__schema=str(schema), strategy__min_nodes=3,
                                num_server_rounds=1, privacy__secure_noise=False,
                                privacy__audit=False,
                                preprocessing__stats_noise_multiplier=0.0)  # exact moments

    model = TabularModel.from_bundle(load_bundle(run_path))
    columns = model.bundle.manifest["input_schema"]["columns"]
    train = frame[frame["split"] == "train"]
    for i, name in ((1, "bmi"), (2, "smoker")):  # numpy's mean of the present train cells
        present = pd.to_numeric(train[name], errors="coerce").dropna()
        # (the site encodes float32: 1e-6 relative)
        assert columns[i]["impute"] == pytest.approx(present.mean(), rel=1e-6)
    std = model.bundle.manifest["preprocessing"]["standardizer"]
    assert std["impute_values"] == [columns[1]["impute"], columns[2]["impute"]]

    record = {"age": 60, "bmi": None, "smoker": None, "cp": None}
    x_null = model.validate([record])[0]
    # by hand: bmi filled then standardised, smoker (binary, not standardised) filled,
    # cp's own missing level and bmi's indicator set
    expected = model.validate([record | {"bmi": columns[1]["impute"], "smoker": 0,
                                         "cp": 1}])[0]
    expected[2], expected[-2:] = columns[2]["impute"], 1
    assert model.bundle.manifest["input_schema"]["features"][-2:] == ["cp_missing",
                                                                      "bmi_missing"]
    np.testing.assert_allclose(x_null, expected, rtol=1e-6)
    assert 0 < model.predict([record])[0]["probabilities"]["yes"] < 1
    with pytest.raises(InputError, match=r"records\[0\].age: is null, but this feature does "
                                         r"not accept a missing value"):
        model.predict([record | {"age": None}])

    # over HTTP: JSON null is accepted where declared, and named where it is not
    from fastapi.testclient import TestClient
    from pydantic import SecretStr

    from deploy.api import Settings, create_app

    key = "s3cret-0123456789"
    with TestClient(create_app(Settings(bundle=run_path, api_key=SecretStr(key)))) as client:
        headers = {"X-API-Key": key}
        r = client.post("/predict", json={"records": [record]}, headers=headers)
        assert r.status_code == 200
        assert r.json()["predictions"] == model.predict([record])
        r = client.post("/predict", json={"records": [record | {"age": None}]},
                        headers=headers)
        assert r.status_code == 422 and "records[0].age" in r.text


def test_a_column_with_fewer_than_k_present_cells_is_not_shared():
    from medfl.data.missing import require_present

    spec = _schema().spec()
    x = np.zeros((12, 3))
    x[:3, 2] = np.nan  # smoker: 9 present cells
    require_present(x, spec, k=9)
    with pytest.raises(DataError, match=r"^feature 'smoker' has fewer present training "
                                        r"cells than privacy.k-threshold=10"):
        require_present(x, spec, k=10)
