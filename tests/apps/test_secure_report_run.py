"""The final report through SecAgg+: the real ServerApp and ClientApp in-process.

The reference is the plain report path on the same final model: fresh sites of the same
run without secure aggregation, asked ``query.report`` with exact test-set figures
(``privacy.test-epsilon = 0``, which a simulation may ask). The secure run's pooled
release must be the sum of those per-site releases, within Flower's quantisation (each
site's value moves by less than one step, REPORT_SCALE x 2 x 4 / 2^22 = 0.125, per
component), while the server keeps no site's values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message, RecordDict

from bench import inprocess
from medfl.evaluation.release_sum import REPORT_SCALE, SECURE_SUM_KEY, VALUE_KEYS
from medfl.reporting.files import write_reports
from medfl.reporting.report import SECURE_NOTE

SITES = ["cleveland", "hungarian", "switzerland", "va"]
#: Flower's quantisation step, in report units, per value and site.
STEP = REPORT_SCALE * 2 * 4.0 / 2 ** 22
#: One short round without DP-SGD or an audit (as tests/apps/test_secure_aggregation.py).
ROUND = {"num_server_rounds": 1, "privacy__enabled": False, "privacy__audit": False,
         "preprocessing__stats_noise_multiplier": 0.0, "evaluation__personal_epochs": 0}
SECURE = {"secure-aggregation.enabled": True, "strategy.min-round-nodes": 3}


def _run(tmp: Path, name: str, **overrides) -> tuple[Path, inprocess.InProcessGrid]:
    from conftest import run_config

    cfg = run_config(output_dir=str(tmp), run_name=name, **{**ROUND, **overrides})
    return tmp / name, inprocess.run(cfg, run_id=11)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("secure-report")
    return {
        "secure": _run(tmp, "secure", privacy__test_epsilon=0.0, **SECURE),
        "noisy": _run(tmp, "noisy", **SECURE),
    }


def _evaluation(path: Path) -> dict:
    return json.loads((path / "evaluation.json").read_text())


def _fresh_grid(**overrides) -> inprocess.InProcessGrid:
    from conftest import run_config

    from client.app import app as client_app

    inprocess.set_task_identity()
    return inprocess.InProcessGrid(client_app, run_config(**{**ROUND, **overrides}), run_id=5)


def _report_request(runs, name: str, message_type: str, node: int, **config) -> Message:
    """The final model and config of run ``name``'s report request, as ``message_type``
    (without the report marker unless ``config`` names it)."""
    _, grid = runs[name]
    sent = next(m for m in grid.sent if m.content.config_records.get("config", {})
                .get("query") == "report")
    plain = {k: v for k, v in sent.content["config"].items() if k != "query"}
    content = RecordDict({"arrays": sent.content.array_records["arrays"],
                          "config": ConfigRecord({**plain, **config})})
    return Message(content, dst_node_id=node, message_type=message_type)


def _exact_sum(runs, name: str, key: str) -> np.ndarray:
    """The sum over fresh plain sites of their exact ``query.report`` releases of the
    final model of run ``name``."""
    grid = _fresh_grid(privacy__test_epsilon=0.0)
    replies = grid.send_and_receive([_report_request(runs, name, "query.report", node)
                                     for node in grid.get_node_ids()])
    assert not any(r.has_error() for r in replies)
    assert sorted(r.content["site"]["name"] for r in replies) == sorted(SITES)
    return np.sum([np.asarray(r.content["metrics"][key], dtype=np.float64)
                   for r in replies], axis=0)


def test_the_secure_pooled_release_is_the_sum_of_the_sites_exact_releases(runs):
    entry = _evaluation(runs["secure"][0])[SECURE_SUM_KEY]
    assert sorted(entry["sites"]) == sorted(SITES)
    for key in ("hist", "explain"):
        expected = _exact_sum(runs, "secure", key)
        got = np.asarray(entry["release"][key])
        assert got.shape == expected.shape and expected.sum() > 100, key
        # each of the 4 sites' values moved by less than one step
        np.testing.assert_allclose(got, expected, rtol=0, atol=4 * STEP + 1e-9, err_msg=key)
    # exact releases: no noise, and the sum's test ε is the sites' (infinite after exact)
    assert entry["release"]["hist-std"] == 0.0


def test_the_noisy_sum_has_the_root_sum_of_the_sites_variances(runs):
    entry = _evaluation(runs["noisy"][0])[SECURE_SUM_KEY]
    stds = [entry["site-metrics"][s]["hist-std"] for s in SITES]
    assert all(s > 0 for s in stds)
    pooled = entry["release"]["hist-std"]
    assert pooled == pytest.approx(math.sqrt(sum(s * s for s in stds)), rel=1e-12)
    # the noisy sum lies around the exact sum for the same model
    deviation = np.asarray(entry["release"]["hist"]) - _exact_sum(runs, "noisy", "hist")
    assert np.abs(deviation).max() < 6 * pooled
    assert np.abs(deviation).max() > 4 * STEP  # it is noisy indeed


@pytest.mark.parametrize("name", ["secure", "noisy"])
def test_the_server_keeps_no_site_values_under_secure_aggregation(runs, name):
    path, grid = runs[name]
    evaluation = _evaluation(path)
    assert list(evaluation) == [SECURE_SUM_KEY]
    for site, clear in evaluation[SECURE_SUM_KEY]["site-metrics"].items():
        assert site in SITES and not set(VALUE_KEYS) & set(clear), site
    assert not any(m.metadata.message_type == "query.report" for m in grid.sent)
    # no protocol reply held a report value in the clear
    for reply in grid.replies:
        if reply.metadata.message_type == "train" and not reply.has_error():
            for record in reply.content.metric_records.values():
                assert not set(VALUE_KEYS) & set(record), reply.metadata.message_type


def test_the_reports_show_the_sum_as_the_consortium_and_no_site_figures(runs):
    path, _ = runs["noisy"]
    report = json.loads((path / "report.json").read_text())
    assert [p["name"] for p in report["populations"]] == ["pooled"]
    assert sorted(report["populations"][0]["sites_included"]) == sorted(SITES)
    assert SECURE_NOTE in report["limitations"]
    assert not (path / "sites").exists()
    assert "each site&#x27;s own figures stay at the site" in (path / "report.html").read_text()
    summary = json.loads((path / "summary.json").read_text())
    pooled = report["populations"][0]["metrics"]["auroc"]["value"]
    assert pooled is not None and summary["global"]["metrics"]["auroc"] == pooled
    assert summary["global"]["auroc_sites_excluded"] == 0
    assert {s["name"]: s["test_epsilon"] for s in summary["sites"]} == pytest.approx(
        {s: m["test-epsilon"] for s, m in
         _evaluation(path)[SECURE_SUM_KEY]["site-metrics"].items()})
    # `medfl report` rebuilds the same populations from the run directory
    rebuilt = write_reports(path)
    assert rebuilt["populations"][0]["metrics"] == report["populations"][0]["metrics"]


def test_a_report_marker_outside_secure_aggregation_is_refused(runs):
    grid = _fresh_grid()
    msg = _report_request(runs, "secure", "train", 1000, query="report")
    [reply] = grid.send_and_receive([msg])
    assert reply.has_error()
    assert "without secure-aggregation.enabled" in reply.error.reason


def test_a_plain_report_query_under_secure_aggregation_is_refused(runs):
    grid = _fresh_grid(**SECURE)
    [reply] = grid.send_and_receive([_report_request(runs, "secure", "query.report", 1000)])
    assert reply.has_error()
    assert "only inside the SecAgg+" in reply.error.reason
