"""A rare outcome and a refusing site, through the real apps in-process.

Point 6 of issue 22: on a table with a 10% outcome prevalence the default run
(``train.pos-weight = "auto"``: weighted from the consortium's released prevalence) finds
positives at the declared threshold, where the unweighted model predicts none. Point 7: a
site that refuses to take part (one class) ends the run with one line naming it and what to
do, no traceback, and a run folder marked failed that ``medfl show`` reports as such.
"""

from __future__ import annotations

import json
import logging

import pandas as pd
import pytest
from typer.testing import CliRunner

from medfl.cli import app
from medfl.data.synthetic_tabular import generate_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """(folder, schema path, rows) of a small synthetic cohort, four hospitals."""
    root = tmp_path_factory.mktemp("cohort")
    csv, schema = generate_cohort(root / "cohort", seed=3, patients_per_site=600)
    return root, schema, pd.read_csv(csv)


@pytest.fixture(scope="module")
def rare_table(cohort):
    """The cohort with positives dropped at random to a 10% prevalence at every site."""
    root, schema, rows = cohort
    negatives = rows[rows.event == 0]
    keep = rows[rows.event == 1].sample(n=len(negatives) // 9, random_state=0)
    table = pd.concat([negatives, keep]).sample(frac=1.0, random_state=1)
    path = root / "rare.csv"
    table.to_csv(path, index=False)
    return path, schema, float(table.event.mean())


def _run(run_inprocess, path, schema, name, **overrides):
    # no DP and exact test figures: the test is about the class weight, not the noise
    run_path, grid = run_inprocess(
        task="tabular", data__manifest=str(path), data__schema=str(schema),
        privacy__enabled=False, privacy__test_epsilon=0.0, privacy__audit=False,
        evaluation__personal_epochs=0, num_server_rounds=3, run_name=name, **overrides)
    return run_path, grid


def test_a_rare_outcome_is_found_by_default_and_missed_unweighted(run_inprocess, rare_table):
    path, schema, prevalence = rare_table
    assert prevalence == pytest.approx(0.1, abs=0.01)
    auto, grid = _run(run_inprocess, path, schema, "auto")
    summary = json.loads((auto / "summary.json").read_text())
    weight = summary["class_weight"]
    # without DP the sites' label counts are exact: the pooled training prevalence
    train = [m for m in grid.replies if m.metadata.message_type == "query.moments"]
    counts = [m.content.metric_records["metrics"] for m in train]
    expected = sum(c["positives"] for c in counts) / sum(c["count"] for c in counts)
    assert weight["setting"] == "auto"
    assert weight["prevalence"] == pytest.approx(expected)
    assert weight["pos_weight"] == pytest.approx((1 - expected) / expected)
    assert summary["global"]["metrics"]["sensitivity"] > 0.3
    report = json.loads((auto / "report.json").read_text())
    second = report["operating_threshold"]["second"]
    assert second["target"] == 0.8 and second["sensitivity"] >= 0.8
    assert "train.pos-weight auto" in report["operating_threshold"]["class_weight"]
    assert "Second operating point" in (auto / "MODEL_CARD.md").read_text()

    fixed, _ = _run(run_inprocess, path, schema, "fixed", train__pos_weight=1.0)
    unweighted = json.loads((fixed / "summary.json").read_text())
    assert unweighted["class_weight"]["setting"] == "fixed"
    assert unweighted["global"]["metrics"]["sensitivity"] < 0.05


def test_a_one_class_site_stops_the_run_with_one_line_and_a_failed_folder(
        run_inprocess, cohort, caplog):
    root, schema, rows = cohort
    table = rows.copy()
    table.loc[table.site == "west", "event"] = 0  # west has only negatives
    path = root / "one-class.csv"
    table.to_csv(path, index=False)
    with caplog.at_level(logging.ERROR):
        run_path, grid = _run(run_inprocess, path, schema, "refused")
    errors = [r for r in caplog.records if r.name == "medfl.orchestration"]
    assert len(errors) == 1 and errors[0].exc_info is None  # one line, no traceback
    line = errors[0].getMessage()
    assert "site 'west' has only class 'no event'" in line
    assert "only 3 of 4 sites shared feature statistics" in line
    for fix in ("drop that site", "merge its patients", "strategy.min-nodes"):
        assert fix in line
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    assert not (run_path / "summary.json").exists()
    assert not (run_path.parent / "latest").exists()
    assert "only 3 of 4" in json.loads((run_path / "failed.json").read_text())["reason"]
    shown = CliRunner().invoke(app, ["show", str(run_path)])
    assert shown.exit_code == 1
    assert "failed before it finished" in shown.output and "'west'" in shown.output
