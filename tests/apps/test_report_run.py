"""The default heart-disease run's reports: report.json against sklearn on the served model,
summary.json's new figures, the site views, the model card and ``medfl report``."""

from __future__ import annotations

import json
from html.parser import HTMLParser

import numpy as np
import pytest
from sklearn.metrics import recall_score, roc_auc_score
from typer.testing import CliRunner

from medfl.data.heart import load_heart_site
from medfl.evaluation.release import ReportStats
from medfl.privacy.egress import DECLARED
from medfl.serving import load_bundle
from medfl.serving.tabular import TabularModel

SITES = ["cleveland", "hungarian", "switzerland", "va"]


@pytest.fixture(scope="module")
def heart_run(tmp_path_factory):
    """The default scenario (DP on, ε = 3), 3 rounds to keep the test short."""
    from conftest import run_config

    from bench import inprocess

    out = tmp_path_factory.mktemp("report-run")
    cfg = run_config(num_server_rounds=3, output_dir=str(out), run_name="rep",
                     privacy__audit=False)
    inprocess.run(cfg)
    return out / "rep", cfg


def _served_scores(run_path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Each site's test labels and the *served* model's probabilities for its raw rows."""
    model = TabularModel.from_bundle(load_bundle(run_path))
    out = {}
    for site in SITES:
        y = load_heart_site(site).y_test
        records = _raw_test_records(site)
        assert len(records) == len(y)
        probs = np.array([r["probabilities"][model.labels[1]]
                          for r in model.predict(records)])
        out[site] = (y, probs)
    return out


def _raw_test_records(site: str) -> list[dict]:
    """The site's raw test rows, cut exactly as the loader cuts them (same split)."""
    from sklearn.model_selection import train_test_split

    from medfl.data.heart import (
        DROPPED_COLUMNS,
        INPUT_COLUMNS,
        SPLIT_SEED,
        TEST_SIZE,
        load_site_frame,
    )

    frame = load_site_frame(site).drop(columns=list(DROPPED_COLUMNS)).dropna()
    frame = frame.reset_index(drop=True)
    y = (frame["num"].to_numpy() > 0).astype(int)
    stratify = y if np.bincount(y, minlength=2).min() > 2 else None
    _, idx_test = train_test_split(np.arange(len(y)), test_size=TEST_SIZE,
                                   random_state=SPLIT_SEED, shuffle=True, stratify=stratify)
    return frame.iloc[idx_test][list(INPUT_COLUMNS)].to_dict(orient="records")


def test_every_report_file_is_written(heart_run):
    path, _ = heart_run
    for name in ("report.json", "report.html", "MODEL_CARD.md", "evaluation.json",
                 *(f"sites/{s}/report.html" for s in SITES)):
        assert (path / name).is_file(), name


def test_pooled_auroc_is_within_0_01_of_sklearn_on_the_served_model(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    pooled = report["populations"][0]
    scores = _served_scores(path)
    used = pooled["sites_included"]
    assert used == ["cleveland", "hungarian", "va"]  # Switzerland: a class under k
    exact = roc_auc_score(np.concatenate([scores[s][0] for s in used]),
                          np.concatenate([scores[s][1] for s in used]))
    m = pooled["metrics"]["auroc"]
    assert m["value"] == pytest.approx(exact, abs=0.01)
    assert m["ci"][0] < exact < m["ci"][1]


def test_site_figures_match_sklearn_where_they_are_exact(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    scores = _served_scores(path)
    for p in report["populations"][1:]:
        y, prob = scores[p["name"]]
        m = p["metrics"]
        if m["auroc"]["suppressed"]:
            assert p["name"] == "switzerland" and m["auroc"]["value"] is None
            continue
        assert m["auroc"]["value"] == pytest.approx(roc_auc_score(y, prob), abs=1e-6)
        for name, truth in (("sensitivity", recall_score(y, prob >= 0.5)),
                            ("specificity", recall_score(1 - y, prob < 0.5))):
            if not m[name]["estimated"]:
                assert m[name]["value"] == pytest.approx(truth), (p["name"], name)
            else:
                # A group straddling the threshold: its split is estimated, so the count is
                # off by less than that group's size (and the group is on both sides).
                cls = 1 if name == "sensitivity" else 0
                raw = json.loads((path / "evaluation.json").read_text())[p["name"]]
                mixed = sum(n for c, k, n, side in zip(raw["g-cell"], raw["g-class"],
                                                      raw["g-n"], raw["g-side"], strict=True)
                            if c == 0 and k == cls and side == -1)
                n_class = int((y == cls).sum())
                assert mixed >= 10
                assert abs(m[name]["value"] - truth) * n_class < mixed - 1, (p["name"], name)


def test_summary_gains_the_report_figures(heart_run):
    path, _ = heart_run
    s = json.loads((path / "summary.json").read_text())
    for block in [x["metrics"] for x in s["sites"]] + [s["global"]["metrics"]]:
        assert {"sensitivity", "specificity", "ppv", "npv", "brier", "ece", "ci",
                "subgroups"} <= set(block)
    g = s["global"]["metrics"]
    assert g["ci"]["auroc"][0] < g["auroc"] < g["ci"]["auroc"][1]
    assert set(g["subgroups"]) == {"sex", "age band"}
    swiss = s["sites"][2]["metrics"]
    assert swiss["sensitivity"] is None and swiss["brier"] is not None


def test_suppressed_cells_are_reported_as_suppressed_never_zero(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    k = report["k_threshold"]
    for p in report["populations"]:
        for sg in p["subgroups"]:
            if sg["suppressed"]:
                assert sg["reason"] and all(m["value"] in (None,) or name == "brier"
                                            for name, m in sg["metrics"].items())
            if sg["n"] is not None and p["scope"] == "site":
                assert sg["n"] >= k


def test_evaluation_file_holds_only_declared_report_keys(heart_run):
    path, _ = heart_run
    raw = json.loads((path / "evaluation.json").read_text())
    assert sorted(raw) == SITES
    for metrics in raw.values():
        assert set(metrics) <= set(DECLARED["query.report"])
        # one release over 5 cells' (2, 8) histograms and 13 SHAP sums, all noised
        release = ReportStats.from_metrics(metrics, n_cells=5)
        assert len(metrics["hist"]) == 5 * 16 and len(release.explain) == 13
        assert release.hist_std > 0 and release.explain_std == pytest.approx(
            4.0 * release.hist_std)  # SHAP_CLIP units; the same σ · sensitivity


def test_shap_importances_are_aggregated_over_sites(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    ex = report["explanations"]
    assert ex["kind"] == "shap" and len(ex["features"]) == 13
    raw = json.loads((path / "evaluation.json").read_text())
    # pooled = the sites' means weighted by their counts (by hand, from the shared values)
    from medfl.data.heart import FEATURE_NAMES

    first = ex["features"][0]
    col = list(FEATURE_NAMES).index(first["name"])
    num = sum(m["explain"][col] * m["explain-n"] for m in raw.values())
    den = sum(m["explain-n"] for m in raw.values())
    assert first["mean_abs_shap"] == pytest.approx(num / den)
    assert first["mean_abs_shap"] == max(f["mean_abs_shap"] for f in ex["features"])


def test_html_reports_are_self_contained_and_site_views_are_private(heart_run):
    path, _ = heart_run
    page = (path / "report.html").read_text()
    HTMLParser().feed(page)
    assert "not for clinical use" in page
    assert "src=\"http" not in page and "href=\"http" not in page
    site_page = (path / "sites" / "hungarian" / "report.html").read_text()
    assert "hungarian" in site_page
    assert "cleveland" not in site_page.lower()


def test_model_card_states_use_privacy_and_evaluation(heart_run):
    path, _ = heart_run
    card = (path / "MODEL_CARD.md").read_text()
    summary = json.loads((path / "summary.json").read_text())
    assert "not for clinical use" in card
    for site in summary["sites"]:  # each site's (ε, δ) from the run's own accounting
        assert f"| {site['name']} | (ε = {site['epsilon']:.2f}, δ = {site['delta']:g})" in card
    auroc = summary["global"]["metrics"]
    lo, hi = auroc["ci"]["auroc"]
    assert f"{auroc['auroc']:.3f} ({lo:.3f}–{hi:.3f})" in card  # pooled AUROC with its CI
    assert "auroc" in auroc["estimated"]  # pooled from pseudo-patients: marked


def test_medfl_report_rebuilds_the_same_figures(heart_run):
    from medfl.cli import app

    path, _ = heart_run
    before = json.loads((path / "report.json").read_text())
    (path / "report.html").unlink()
    (path / "MODEL_CARD.md").unlink()
    result = CliRunner().invoke(app, ["report", str(path)])
    assert result.exit_code == 0, result.output
    assert "pooled auroc" in result.output
    after = json.loads((path / "report.json").read_text())
    assert (path / "report.html").is_file() and (path / "MODEL_CARD.md").is_file()
    assert after["populations"] == before["populations"]


def test_medfl_report_names_a_missing_file(tmp_path):
    from medfl.cli import app

    (tmp_path / "summary.json").write_text("{}")
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "config.json" in result.output


def test_site_local_report_stays_in_the_site_state_dir(heart_run):
    path, cfg = heart_run
    from pathlib import Path

    local = Path(cfg["state-dir"]) / "cleveland" / "reports" / "rep" / "report.html"
    assert local.is_file()
    assert "Stays at this hospital" in local.read_text()
    for f in path.rglob("*"):  # nothing of it reached the server's run directory
        if f.is_file():
            data = f.read_bytes()
            assert b"Stays at this hospital" not in data and b"data:image/png" not in data, f


def test_a_site_answers_the_report_query_once_per_run():
    from flwr.app import RecordDict

    from medfl.errors import ConfigError
    from medfl.federation import StateMemory
    from medfl.site import answer_once

    state = RecordDict()
    answer_once(StateMemory(state), "report")
    with pytest.raises(ConfigError, match="once per run"):
        answer_once(StateMemory(state), "report")
