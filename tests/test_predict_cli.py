"""`medfl predict`: offline batch inference from a CSV."""

from __future__ import annotations

import pandas as pd
import pytest
from typer.testing import CliRunner

from medfl.cli import app
from medfl.serving import TabularModel, load_bundle

RECORD = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}


def test_csv_in_csv_out(run_dir, tmp_path):
    rows = [RECORD, {**RECORD, "age": 40, "cp": 1}]
    pd.DataFrame(rows).to_csv(tmp_path / "in.csv", index=False)
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "in.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert r.exit_code == 0, r.output
    out = pd.read_csv(tmp_path / "out.csv")
    expected = TabularModel.from_bundle(load_bundle(run_dir)).predict(rows)
    assert list(out["p_disease"]) == pytest.approx([p["probabilities"]["disease"]
                                                    for p in expected])


def test_bad_row_names_the_field_and_writes_nothing(run_dir, tmp_path):
    pd.DataFrame([RECORD, {**RECORD, "age": 500}]).to_csv(tmp_path / "in.csv", index=False)
    r = CliRunner().invoke(app, ["predict", str(run_dir), str(tmp_path / "in.csv"),
                                 "-o", str(tmp_path / "out.csv")])
    assert r.exit_code == 2 and "records[1].age" in r.output
    assert not (tmp_path / "out.csv").exists()
