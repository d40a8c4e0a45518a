"""`medfl show` prints the run table from summary.json."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from medfl.cli import app


def _summary():
    site = {"name": "cleveland", "n_train": 199, "n_test": 104, "epsilon": 2.5, "delta": 1e-3,
            "metrics": {"accuracy": 0.75, "auroc": 0.8125}}
    swiss = {"name": "switzerland", "n_train": 30, "n_test": 16, "epsilon": 2.9, "delta": 1e-3,
             "metrics": {"accuracy": 0.875, "auroc": None}}
    return {"run_name": "r1", "task": "heart-disease", "strategy": "fedavg", "rounds": 3,
            "sites": [site, swiss], "privacy": {"k_threshold": 10},
            "global": {"metrics": {"accuracy": 0.7667, "auroc": 0.8}, "n_test": 120},
            "mean_site_accuracy": 0.8125}


def test_show_prints_sites_and_headline(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    result = CliRunner().invoke(app, ["show", str(tmp_path)], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    assert "cleveland" in result.output and "switzerland" in result.output
    assert "0.812" in result.output  # the headline is printed
    assert "suppressed" in result.output
    assert "229" in result.output  # 199 + 30 training rows
    assert "not for clinical use" in result.output


def test_show_on_a_folder_without_summary_says_so(tmp_path):
    result = CliRunner().invoke(app, ["show", str(tmp_path)])
    assert result.exit_code != 0
    assert "summary.json not found" in result.output
