"""`medfl show` prints the run table from summary.json."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from medfl.cli import app

PINNED = Path(__file__).parent / "apps" / "data" / "pinned_summary.json"


def _summary():
    # A real run's summary.json (the pinned seeded run), cut to two sites with set figures.
    s = json.loads(PINNED.read_text())
    cleveland, swiss = (next(x for x in s["sites"] if x["name"] == name)
                        for name in ("cleveland", "switzerland"))
    cleveland.update(n_train=199, n_test=104, epsilon=2.5,
                     metrics={"accuracy": 0.75, "auroc": 0.8125})
    swiss.update(n_train=30, n_test=16, epsilon=2.9, metrics={"accuracy": 0.875, "auroc": None})
    s.pop("personal")
    for site in (cleveland, swiss):
        site.pop("personal_metrics")
    s.update(run_name="r1", rounds=3, sites=[cleveland, swiss], mean_site_accuracy=0.8125)
    s["global"].update(metrics={"accuracy": 0.7667, "auroc": 0.8}, n_test=120)
    return s


def test_show_prints_sites_and_headline(tmp_path):
    (tmp_path / "summary.json").write_text(json.dumps(_summary()))
    result = CliRunner().invoke(app, ["show", str(tmp_path)], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    assert "cleveland" in result.output and "switzerland" in result.output
    assert "0.812" in result.output  # the headline is printed
    assert "suppressed" in result.output
    assert "229" in result.output  # 199 + 30 training rows
    assert "not for clinical use" in result.output


def test_show_names_the_suppressed_site_and_the_sites_behind_the_mean(tmp_path):
    s = _summary()
    swiss = next(x for x in s["sites"] if x["name"] == "switzerland")
    swiss["metrics"]["accuracy"] = None  # under k at the site: held back
    s.update(mean_site_accuracy=0.75, sites_reported=1)
    (tmp_path / "summary.json").write_text(json.dumps(s))
    result = CliRunner().invoke(app, ["show", str(tmp_path)], env={"COLUMNS": "150"})
    assert result.exit_code == 0, result.output
    assert "over 1 of 2 sites" in result.output and "0.750" in result.output
    assert "suppressed, left out of the mean: switzerland" in result.output


def test_show_names_a_summary_missing_a_key(tmp_path):
    s = _summary()
    del s["model"]
    (tmp_path / "summary.json").write_text(json.dumps(s))
    result = CliRunner().invoke(app, ["show", str(tmp_path)])
    assert result.exit_code == 2 and "'model'" in result.output


def test_show_on_a_folder_without_summary_says_so(tmp_path):
    result = CliRunner().invoke(app, ["show", str(tmp_path)])
    assert result.exit_code != 0
    assert "summary.json not found" in result.output
