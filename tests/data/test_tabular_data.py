"""A consortium's own table: schema validation, encoding, a site's CSV, a federated run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from medfl.data import heart
from medfl.data.tabular import (
    TabularSchema,
    encode_columns,
    load_schema,
    load_tabular_site,
    table_sites,
)
from medfl.errors import ConfigError, DataError

SCHEMA = {
    "label": {"column": "outcome", "names": ["no event", "event"], "negative": "0",
              "positive": "1"},
    "features": [
        {"name": "age", "type": "numeric", "bounds": [18, 100]},
        {"name": "smoker", "type": "binary"},
        {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4]},
    ],
    "sensitive": ["sex"],
}
SITES = ("alpha", "beta", "gamma")
N_PER_SITE, N_TRAIN = 60, 42


def _table(seed: int = 0) -> pd.DataFrame:
    """3 sites x 60 patients; the outcome depends on age, smoking and chest-pain type.
    The first 42 rows of each site are its training rows (a ``split`` column)."""
    rng = np.random.default_rng(seed)
    n = N_PER_SITE * len(SITES)
    age = rng.integers(25, 90, n)
    smoker = rng.integers(0, 2, n)
    cp = rng.integers(1, 5, n)
    logit = 0.08 * (age - 57) + 1.5 * smoker + 1.2 * (cp == 4) - 0.7
    outcome = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    split = np.tile(["train"] * N_TRAIN + ["test"] * (N_PER_SITE - N_TRAIN), len(SITES))
    return pd.DataFrame({"site": np.repeat(SITES, N_PER_SITE), "age": age, "smoker": smoker,
                         "cp": cp, "sex": rng.choice(["F", "M"], n), "outcome": outcome,
                         "split": split})


@pytest.fixture
def files(tmp_path):
    frame = _table()
    csv, schema = tmp_path / "patients.csv", tmp_path / "schema.json"
    frame.to_csv(csv, index=False)
    schema.write_text(json.dumps(SCHEMA))
    return frame, csv, schema


def _schema(**changes) -> TabularSchema:
    return TabularSchema.from_dict({**SCHEMA, **changes})


# --- encoding --------------------------------------------------------------------------------

def test_encoding_is_numeric_binary_then_one_hot_without_the_first_level():
    schema = _schema()
    frame = pd.DataFrame({"age": [30, 70, 50], "smoker": [1, 0, 1], "cp": [1, 3, 4]})
    expected = np.array([[30, 1, 0, 0, 0],
                         [70, 0, 0, 1, 0],
                         [50, 1, 0, 0, 1]], dtype=np.float32)
    assert schema.feature_names == ("age", "smoker", "cp_2", "cp_3", "cp_4")
    assert schema.numeric_idx == (0,)
    np.testing.assert_array_equal(schema.bounds, [[18.0, 100.0]])
    np.testing.assert_array_equal(schema.encode(frame), expected)
    # text cells, as read from a CSV, encode the same
    np.testing.assert_array_equal(schema.encode(frame.astype(str)), expected)


def test_string_levels_encode_by_name():
    schema = _schema(features=[{"name": "ward", "type": "categorical",
                                "levels": ["icu", "surgery", "medicine"]}])
    x = schema.encode(pd.DataFrame({"ward": ["medicine", "icu"]}))
    np.testing.assert_array_equal(x, [[0, 1], [0, 0]])


def test_the_generic_encoder_reproduces_heart_disease_encoding():
    frame = heart.load_site_frame("cleveland").dropna().reset_index(drop=True)
    x = encode_columns(frame, heart.input_schema()["columns"])
    np.testing.assert_array_equal(x, heart.encode_features(frame))


def test_input_schema_has_the_serving_shape():
    s = _schema().input_schema()
    assert s["features"] == ["age", "smoker", "cp_2", "cp_3", "cp_4"]
    assert s["sensitive_attributes"] == ["sex"]
    assert s["columns"] == [
        {"name": "age", "type": "numeric", "bounds": [18.0, 100.0]},
        {"name": "smoker", "type": "binary", "levels": [0, 1]},
        {"name": "cp", "type": "categorical", "levels": [1, 2, 3, 4]},
    ]


# --- schema errors ---------------------------------------------------------------------------

@pytest.mark.parametrize("changes, match", [
    ({"extra": 1}, r"unknown key 'schema.extra'"),
    ({"features": [{"name": "age", "type": "numeric"}]}, r"features\[0\]\.bounds"),
    ({"features": [{"name": "age", "type": "numeric", "bounds": [90, 18]}]},
     r"low < high"),
    ({"features": [{"name": "age", "type": "numerc", "bounds": [0, 1]}]},
     r"did you mean 'numeric'"),
    ({"features": [{"name": "cp", "type": "categorical", "levels": [1]}]},
     r"features\[0\]\.levels.*at least 2"),
    ({"features": [{"name": "smoker", "type": "binary", "levels": [0, 1]}]},
     r"'features\[0\]\.levels' does not apply to a binary feature"),
    ({"features": [{"name": "a", "type": "binary"}, {"name": "a", "type": "binary"}]},
     r"features\[1\]\.name.*unique"),
    ({"features": []}, r"'features'.*non-empty"),
    ({"label": {"column": "outcome", "names": ["only"], "negative": "0", "positive": "1"}},
     r"label\.names"),
    ({"label": {"column": "outcome", "names": ["a", "b"], "negative": "0", "positive": "1",
                "x": 0}}, r"unknown key 'label\.x'"),
    ({"label": {"column": "outcome", "names": ["a", "b"], "negative": "1", "positive": "1"}},
     r"label\.negative"),
    ({"sensitive": ["outcome"]}, r"'sensitive'"),
])
def test_schema_errors_name_the_key_and_what_is_valid(changes, match):
    with pytest.raises(ConfigError, match=match):
        _schema(**changes)


def test_schema_file_must_be_json(tmp_path):
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match=r"not valid JSON \(line 1"):
        load_schema(bad)
    with pytest.raises(ConfigError, match="readable"):
        load_schema(tmp_path / "absent.json")


# --- a site's CSV ----------------------------------------------------------------------------

def test_site_rows_split_and_labels(files):
    frame, csv, _ = files
    data = load_tabular_site(csv, _schema(), "beta", test_fraction=0.3, seed=0)
    rows = frame[frame["site"] == "beta"]
    train = rows[rows["split"] == "train"]
    assert (data.n_train, data.n_test) == (N_TRAIN, N_PER_SITE - N_TRAIN)
    np.testing.assert_array_equal(data.y_train, train["outcome"].to_numpy())
    np.testing.assert_array_equal(data.x_train[:, 0], train["age"].to_numpy())
    assert list(data.sensitive_test["sex"]) == list(rows[rows["split"] == "test"]["sex"])
    assert table_sites(csv) == SITES


def test_without_split_or_site_columns_all_rows_are_split_stratified(tmp_path):
    rows = _table().query("site == 'alpha'").drop(columns=["site", "split"])
    csv = tmp_path / "own.csv"
    rows.to_csv(csv, index=False)
    data = load_tabular_site(csv, _schema(), "alpha", test_fraction=0.3, seed=43)
    assert data.n_train + data.n_test == N_PER_SITE
    assert data.n_test == 18  # ceil(0.3 * 60), as sklearn's train_test_split
    y = rows["outcome"].to_numpy()
    assert abs(data.y_test.mean() - y.mean()) < 0.06  # stratified


def _write(tmp_path, frame: pd.DataFrame):
    csv = tmp_path / "bad.csv"
    frame.to_csv(csv, index=False)
    return csv


@pytest.mark.parametrize("edit, match", [
    (lambda f: f.drop(columns=["cp"]), r"lacks column\(s\) \['cp'\]"),
    (lambda f: f.assign(cp=f["cp"].where(f.index != 3, 7)),
     r"line 5, column 'cp': value outside its levels \[1, 2, 3, 4\]"),
    (lambda f: f.assign(age=f["age"].where(f.index != 6, np.nan)),
     r"line 8, column 'age': missing value"),
    (lambda f: f.assign(age=f["age"].where(f.index != 0, 150)),
     r"line 2, column 'age': value must be between 18.0 and 100.0"),
    (lambda f: f.assign(smoker=f["smoker"].where(f.index != 1, 2)),
     r"line 3, column 'smoker': value must be 0 or 1"),
    (lambda f: f.assign(split=f["split"].where(f.index != 2, "validation")),
     r"line 4, column 'split'"),
    (lambda f: f.assign(outcome=0), r"site 'alpha' has only class 'no event'"),
])
def test_csv_errors_name_line_and_column_never_values_or_paths(tmp_path, edit, match):
    csv = _write(tmp_path, edit(_table().query("site == 'alpha'").reset_index(drop=True)))
    with pytest.raises(DataError, match=match) as err:
        load_tabular_site(csv, _schema(), "alpha", test_fraction=0.3, seed=0)
    assert str(tmp_path) not in str(err.value)
    assert "150" not in str(err.value) and "validation" not in str(err.value)


def test_a_site_without_rows_is_refused(files):
    with pytest.raises(DataError, match="site 'delta' has no rows"):
        load_tabular_site(files[1], _schema(), "delta", test_fraction=0.3, seed=0)


# --- the federated path ----------------------------------------------------------------------

def test_a_table_needs_a_schema_and_simulated_sites_need_a_table(files):
    from conftest import run_config

    from medfl import tasks
    from medfl.config import parse_run_config

    with pytest.raises(ConfigError, match="with data.manifest needs data.schema"):
        parse_run_config(run_config(task="tabular", data__manifest="t.csv"))
    # a schema alone is a deployment's config (each site names its CSV in data-path) ...
    deployed = parse_run_config(run_config(task="tabular", data__schema=str(files[2])))
    assert tasks.task_for(deployed).schema().label_column == "outcome"
    # ... and simulated sites cannot be made from it
    with pytest.raises(ConfigError, match="needs data.manifest .* beside data.schema"):
        tasks.task_for(deployed).sites()
    # neither: the built-in synthetic cohort
    assert parse_run_config(run_config(task="tabular")).data.manifest == ""
    with pytest.raises(ConfigError, match="does not apply to task='heart-disease'"):
        parse_run_config(run_config(data__partition="dirichlet-mix"))
    with pytest.raises(ConfigError, match="central-noise-multiplier > 0 needs strategy"):
        parse_run_config(run_config(privacy__central_noise_multiplier=1.0,
                                    strategy__fraction_train=0.5))


def test_federated_run_on_a_consortium_table_serves_the_same_model(files, run_inprocess):
    from medfl.serving import TabularModel, load_bundle

    frame, csv, schema = files
    run_path, _ = run_inprocess(num_nodes=3, task="tabular", data__manifest=str(csv),
                                data__schema=str(schema), strategy__min_nodes=3,
                                num_server_rounds=2, privacy__secure_noise=False,
                                preprocessing__stats_noise_multiplier=0.0)  # exact moments
    summary = json.loads((run_path / "summary.json").read_text())
    assert sorted(s["name"] for s in summary["sites"]) == list(SITES)
    assert summary["task"] == "tabular"

    bundle = load_bundle(run_path)
    m = bundle.manifest
    assert m["label_names"] == ["no event", "event"]
    assert m["input_schema"]["features"] == ["age", "smoker", "cp_2", "cp_3", "cp_4"]
    # The consortium standardiser: pooled mean / population std of every site's training
    # ages (no noise, all within the public bounds).
    std = m["preprocessing"]["standardizer"]
    ages = frame.loc[frame["split"] == "train", "age"].to_numpy(dtype=np.float64)
    assert std["columns"] == [0]
    assert std["mean"][0] == pytest.approx(ages.mean(), rel=1e-7)
    assert std["std"][0] == pytest.approx(ages.std(), rel=1e-7)

    # Raw records of one site's test rows, encoded and scaled by hand, through the weights.
    test = frame[(frame["site"] == "gamma") & (frame["split"] == "test")]
    x = np.column_stack([test["age"], test["smoker"],
                         *(test["cp"] == lvl for lvl in (2, 3, 4))]).astype(np.float64)
    x[:, 0] = (x[:, 0] - std["mean"][0]) / std["std"][0]
    w = bundle.weights["0.weight"].numpy().ravel().astype(np.float64)
    b = float(bundle.weights["0.bias"].numpy()[0])
    expected = 1 / (1 + np.exp(-(x @ w + b)))

    model = TabularModel.from_bundle(bundle)
    records = test[["age", "smoker", "cp"]].to_dict("records")
    served = [p["probabilities"]["event"] for p in model.predict(records)]
    np.testing.assert_allclose(served, expected, rtol=1e-5)


def test_a_label_that_is_neither_class_is_refused_not_made_negative(files, tmp_path):
    frame, _, schema = files
    bad = frame.copy()
    bad["outcome"] = bad["outcome"].astype(str)
    bad.loc[7, "outcome"] = "unknown"  # data row 7 is CSV line 9
    csv = tmp_path / "bad.csv"
    bad.to_csv(csv, index=False)
    with pytest.raises(DataError, match=r"line 9, column 'outcome'.*neither") as err:
        load_tabular_site(csv, load_schema(schema), "alpha", test_fraction=0.3, seed=0)
    assert "unknown" not in str(err.value) and str(tmp_path) not in str(err.value)


def test_a_deployed_site_reads_only_its_own_node_config_paths(files):
    """The run config's data.schema / data.manifest are the server's choice: a deployed
    site ignores them and needs its own data-path and schema-path."""
    from conftest import run_config

    from medfl import site as site_lib
    from medfl.config import parse_run_config

    frame, csv, schema = files
    cfg = parse_run_config(run_config(task="tabular", data__manifest="/server/side.csv",
                                      data__schema="/server/side.json"))
    with pytest.raises(ConfigError, match="schema-path"):
        site_lib.site_config(cfg, {"site": "alpha", "data-path": str(csv)})
    with pytest.raises(ConfigError, match="data-path"):
        site_lib.site_config(cfg, {"site": "alpha"})
    local = site_lib.site_config(cfg, {"site": "alpha", "data-path": str(csv),
                                       "schema-path": str(schema)})
    assert local.data.schema == str(schema) and local.data.manifest == ""
    data = site_lib.load_site(local, "alpha", data_path=str(csv))
    assert data.n_train + data.n_test == N_PER_SITE
    # simulation (partition-id, no site) keeps the run config as it is
    assert site_lib.site_config(cfg, {"partition-id": 0}) is cfg
