"""summary.json and report.json as dataclasses: what a run wrote loads and dumps back
unchanged, and a schema this version does not read is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medfl.errors import ConfigError, DataError
from medfl.reporting.population_schema import Gap, ImageFigure
from medfl.reporting.report_schema import Report
from medfl.reporting.summary_schema import Summary

from .conftest import classification_report, segmentation_report

PINNED = Path(__file__).parents[1] / "apps" / "data" / "pinned_summary.json"


def test_a_summary_written_by_a_run_loads_and_dumps_back_to_the_same_dict(tmp_path):
    written = json.loads(PINNED.read_text())  # a seeded run's summary.json
    (tmp_path / "summary.json").write_text(json.dumps(written))

    summary = Summary.load(tmp_path / "summary.json")

    assert summary.to_dict() == written
    assert summary.schema_version == 1
    assert summary.site("cleveland") is summary.sites[0]
    assert summary.pooled.metrics.value("auroc") == written["global"]["metrics"]["auroc"]
    assert summary.personal is not None and summary.personal.epochs == 1
    assert summary.segmentation is False


def test_keys_written_only_in_some_runs_stay_out_when_absent():
    written = json.loads(PINNED.read_text())
    for key in ("personal",):
        written.pop(key)
    for site in written["sites"]:
        site.pop("personal_metrics")

    summary = Summary.from_dict(written)

    assert summary.personal is None and summary.sites[0].personal_metrics is None
    assert summary.to_dict() == written
    assert "mean_site_dice" not in summary.to_dict()


def test_a_summary_from_before_schema_version_reads_as_version_1():
    written = json.loads(PINNED.read_text())
    del written["schema_version"]

    assert Summary.from_dict(written).schema_version == 1


@pytest.mark.parametrize("version", [2, 0, "1", None, True])
def test_an_unknown_summary_schema_is_refused_naming_the_file_and_versions(tmp_path, version):
    written = {**json.loads(PINNED.read_text()), "schema_version": version}
    (tmp_path / "summary.json").write_text(json.dumps(written))

    with pytest.raises(DataError, match=rf"summary\.json: schema_version {version!r} is not "
                                        r"supported; expected 1"):
        Summary.load(tmp_path / "summary.json")


def test_a_missing_or_broken_summary_is_a_config_error_naming_the_file(tmp_path):
    with pytest.raises(ConfigError, match="summary.json is missing"):
        Summary.load(tmp_path / "summary.json")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json in the run directory is not valid"):
        Summary.load(tmp_path / "summary.json")


def test_a_summary_without_a_required_key_names_it():
    written = json.loads(PINNED.read_text())
    del written["sites"][0]["metrics"]

    with pytest.raises(DataError, match="'metrics' is missing"):
        Summary.from_dict(written)


@pytest.mark.parametrize("make", [classification_report, segmentation_report])
def test_a_report_dumps_back_to_what_it_read(make):
    first = Report.from_dict(make()).to_dict()

    assert Report.from_dict(first).to_dict() == first
    assert [p["metrics"] for p in first["populations"]] == [
        p["metrics"] for p in make()["populations"]]
    assert first["limitations"] == make()["limitations"]


def test_report_figures_keep_their_kind():
    report = Report.from_dict(segmentation_report())
    pooled = report.pooled
    assert pooled is not None and report.populations[0] is pooled
    gap = pooled.fairness[0].gaps["dice"]
    assert isinstance(gap, Gap) and gap.flagged is False
    hd95 = {"value": 6.4, "ci": [4.9, 7.9], "suppressed": False, "estimated": False,
            "images": 37}
    figure = Report.from_dict({**segmentation_report(), "populations": [
        {**segmentation_report()["populations"][0], "metrics": {"hd95": hd95}}]}
    ).populations[0].metrics["hd95"]
    assert isinstance(figure, ImageFigure) and figure.to_dict() == hd95


@pytest.mark.parametrize("version", [2, None])
def test_an_unknown_report_schema_is_refused(version):
    data = {**classification_report(), "schema_version": version}
    with pytest.raises(DataError, match=rf"report\.json: schema_version {version!r} is not "
                                        r"supported; expected 1"):
        Report.from_dict(data)
