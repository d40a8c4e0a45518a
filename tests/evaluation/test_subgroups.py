"""Declared subgroup cells: definitions per task, and the tabular schema's levels / cuts."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from conftest import run_config

from medfl.config import parse_run_config
from medfl.data.heart import load_heart_site
from medfl.data.tabular import TabularSchema
from medfl.errors import ConfigError
from medfl.evaluation.subgroups import attributes
from medfl.tasks import task_for

SCHEMA = {
    "label": {"column": "y", "names": ["no", "yes"], "negative": "0", "positive": "1"},
    "features": [{"name": "bmi", "type": "numeric", "bounds": [10, 60]}],
    "sensitive": ["ethnicity", {"name": "sex", "levels": ["M", "F"]},
                 {"name": "age", "cuts": [50, 65]}],
}


def test_heart_cells_count_the_uci_coding_by_hand():
    cfg = parse_run_config(run_config())
    cs = task_for(cfg).cells()
    assert [(c.attribute, c.level) for c in cs] == [
        ("all", "all"), ("sex", "male"), ("sex", "female"),
        ("age band", "under 55"), ("age band", "55 and over")]
    test = load_heart_site("cleveland").sensitive_test
    counts = [int(c.select(test).sum()) for c in cs]
    assert counts == [len(test), int((test["sex"] == 1).sum()), int((test["sex"] == 0).sum()),
                      int((test["age"] < 55).sum()), int((test["age"] >= 55).sum())]
    assert counts[1] + counts[2] == counts[0] == counts[3] + counts[4]
    assert attributes(cs) == {"sex": [1, 2], "age band": [3, 4]}


def test_imaging_cells_read_manifest_sex_and_age_and_tolerate_a_missing_column():
    cfg = parse_run_config(run_config(task="image-classification", model__name="resnet"))
    cs = task_for(cfg).cells()
    frame = pd.DataFrame({"sex": ["M", "f", "F", "m"], "age": [30, 64.9, 65, "n/a"]})
    picked = {c.level: c.select(frame).tolist() for c in cs[1:]}
    assert picked == {"male": [True, False, False, True], "female": [False, True, True, False],
                      "under 65": [True, True, False, False],
                      "65 and over": [False, False, True, False]}
    no_age = pd.DataFrame({"sex": ["M", "F"]})
    assert not cs[3].select(no_age).any() and not cs[4].select(no_age).any()


def test_tabular_schema_declares_levels_and_cuts_and_bare_names_are_not_reported(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    cfg = parse_run_config(run_config(task="tabular", model__name="logreg",
                                      data__schema=str(schema), data__manifest="t.csv"))
    cs = task_for(cfg).cells()
    assert [(c.attribute, c.level) for c in cs] == [
        ("all", "all"), ("sex", "M"), ("sex", "F"), ("age band", "under 50"),
        ("age band", "50 to under 65"), ("age band", "65 and over")]
    frame = pd.DataFrame({"sex": ["M", "F"], "age": [50, 80], "ethnicity": ["a", "b"]})
    assert [c.select(frame).tolist() for c in cs[3:]] == [[False, False], [True, False],
                                                          [False, True]]
    assert np.all(cs[0].select(frame))


@pytest.mark.parametrize("entry, match", [
    ({"name": "sex", "levels": ["M"]}, "levels"),
    ({"name": "age", "cuts": [65, 50]}, "cuts"),
    ({"name": "age", "cuts": [50], "levels": ["a", "b"]}, "not both"),
    ({"name": "age", "bands": [50]}, "bands"),
])
def test_bad_sensitive_entries_name_the_key(entry, match):
    with pytest.raises(ConfigError, match=match):
        TabularSchema.from_dict({**SCHEMA, "sensitive": [entry]})
