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
    """The default scenario (DP-SGD on, ε = 3), 3 rounds to keep the test short, with
    exact test-set figures (privacy.test-epsilon = 0, which a simulation may ask) so that
    the report can be checked against sklearn; the noisy default is checked below."""
    from conftest import run_config

    from bench import inprocess

    out = tmp_path_factory.mktemp("report-run")
    # seeded DP noise: the model, and so the 8-bin grid's cost against sklearn's exact
    # AUROC, is the same every run (with OS noise it varied and once passed 0.02)
    cfg = run_config(num_server_rounds=3, output_dir=str(out), run_name="rep",
                     privacy__audit=False, privacy__test_epsilon=0.0,
                     privacy__secure_noise=False)
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


def _binned_auroc(y: np.ndarray, p: np.ndarray) -> float:
    """AUROC of the scores binned on the report's public grid (logit edges -3..3 around
    the threshold 0.5), a pair in one bin counting one half: sklearn on the bin index."""
    z = np.log(p) - np.log1p(-p)
    return float(roc_auc_score(y, np.searchsorted(np.arange(-3.0, 4.0), z, side="right")))


def test_pooled_auroc_is_sklearns_on_the_binned_scores_of_every_site(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    pooled = report["populations"][0]
    scores = _served_scores(path)
    # nothing is withheld at a site any more: the pooled figures sum every site's cells
    assert pooled["sites_included"] == SITES
    y = np.concatenate([scores[s][0] for s in SITES])
    p = np.concatenate([scores[s][1] for s in SITES])
    m = pooled["metrics"]["auroc"]
    assert m["value"] == pytest.approx(_binned_auroc(y, p), abs=1e-9)
    assert m["value"] == pytest.approx(roc_auc_score(y, p), abs=0.02)  # the grid's cost
    assert m["ci"][0] < m["value"] < m["ci"][1]
    assert pooled["n_test"] == len(y)


def test_site_figures_match_sklearn_on_the_binned_scores(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    scores = _served_scores(path)
    for p in report["populations"][1:]:
        y, prob = scores[p["name"]]
        m = p["metrics"]
        if p["name"] == "switzerland":  # one patient without disease: under the floor
            assert m["auroc"]["suppressed"] and m["auroc"]["value"] is None
            continue
        assert m["auroc"]["value"] == pytest.approx(_binned_auroc(y, prob), abs=1e-9)
        # the threshold is a bin edge: the confusion counts are exact
        assert m["sensitivity"]["value"] == pytest.approx(recall_score(y, prob >= 0.5))
        assert m["specificity"]["value"] == pytest.approx(recall_score(1 - y, prob < 0.5))


def test_summary_gains_the_report_figures(heart_run):
    path, _ = heart_run
    s = json.loads((path / "summary.json").read_text())
    for block in [x["metrics"] for x in s["sites"]] + [s["global"]["metrics"]]:
        assert {"sensitivity", "specificity", "ppv", "npv", "brier", "ece", "ci",
                "subgroups"} <= set(block)
    g = s["global"]["metrics"]
    assert g["ci"]["auroc"][0] < g["auroc"] < g["ci"]["auroc"][1]
    assert set(g["subgroups"]) == {"sex", "age band"}
    assert s["sites"][2]["metrics"]["sensitivity"] is None  # Switzerland, under the floor


def test_suppressed_cells_are_reported_as_suppressed_never_zero(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    hidden = [sg for p in report["populations"] for sg in p["subgroups"] if sg["suppressed"]]
    assert hidden  # exact counts: Switzerland's small cells are under k
    for sg in hidden:
        assert "k=10" in sg["reason"]
        assert all(m["value"] is None for m in sg["metrics"].values())


def test_pooled_sex_cells_and_gaps_have_values_and_cis_and_name_their_sites(heart_run):
    path, _ = heart_run
    pooled = json.loads((path / "report.json").read_text())["populations"][0]
    sex = {sg["level"]: sg for sg in pooled["subgroups"] if sg["attribute"] == "sex"}
    assert set(sex) == {"female", "male"}
    for sg in sex.values():
        assert not sg["suppressed"] and sg["metrics"]["auroc"]["ci"] is not None
        assert sg["sites_included"] == SITES
    gaps = next(f for f in pooled["fairness"] if f["attribute"] == "sex")["gaps"]
    for name in ("auroc", "tpr", "fpr", "calibration"):
        assert gaps[name]["value"] is not None and gaps[name]["ci"] is not None, name


def test_the_default_noisy_report_shows_the_pooled_sex_cells(run_inprocess):
    # the default: test-set ε = 1 per site; the sites' noisy cells summed at the server
    path, _ = run_inprocess(num_server_rounds=1, run_name="noisy-report", privacy__audit=False)
    report = json.loads((path / "report.json").read_text())
    pooled = report["populations"][0]
    sex = {sg["level"]: sg for sg in pooled["subgroups"] if sg["attribute"] == "sex"}
    assert set(sex) == {"female", "male"}
    for sg in sex.values():
        assert sg["sites_included"] == SITES and sg["n_noise_sd"] > 0
    # ~200 men on the test rows, most of them positive: far above the noise (a class count's
    # sd is about 40 here), so the cell is shown with every figure defined
    male = sex["male"]
    assert not male["suppressed"] and male["reason"] is None
    assert all(male["metrics"][m]["value"] is not None and male["metrics"][m]["ci"] is not None
               for m in ("auroc", "accuracy", "sensitivity", "specificity"))
    # ~55 women, a quarter positive: the noise decides. Shown (most runs), a figure may still be
    # undefined where a class's noisy bins are all at most 0; hidden (about 1 run in 40 in
    # CI) only by the noise-aware floor, which must then say so
    female = sex["female"]
    if female["suppressed"]:
        assert "k=10" in female["reason"] and "allowing for the noise" in female["reason"]
        assert all(m["value"] is None for m in female["metrics"].values())
    else:
        accuracy = female["metrics"]["accuracy"]  # defined wherever the cell has any mass
        assert accuracy["value"] is not None and 0 <= accuracy["ci"][0] <= accuracy["ci"][1] <= 1
        gaps = next(f for f in pooled["fairness"] if f["attribute"] == "sex")["gaps"]
        assert not any(gaps[g]["suppressed"] for g in ("auroc", "tpr", "fpr", "calibration"))
        assert gaps["calibration"]["ci"] is not None  # defined on the whole cell


def test_evaluation_file_holds_only_declared_report_keys(heart_run):
    path, _ = heart_run
    raw = json.loads((path / "evaluation.json").read_text())
    assert sorted(raw) == SITES
    for metrics in raw.values():
        assert set(metrics) <= set(DECLARED["query.report"])
        # one release over 5 cells' (2, 8) histograms and 13 SHAP sums; exact here
        # (test-epsilon 0: no finite test ε); the noisy default is checked in
        # test_inprocess_run.py::test_a_noisy_run_releases_every_test_statistic_with_its_noise
        release = ReportStats.from_metrics(metrics, n_cells=5)
        assert len(metrics["hist"]) == 5 * 16 and len(release.explain) == 13
        assert release.hist_std == release.explain_std == 0.0
        assert release.test_epsilon == float("inf")


def test_shap_importances_are_aggregated_over_sites(heart_run):
    path, _ = heart_run
    report = json.loads((path / "report.json").read_text())
    ex = report["explanations"]
    assert ex["kind"] == "shap" and len(ex["features"]) == 13
    raw = json.loads((path / "evaluation.json").read_text())
    # pooled = the sites' summed clipped |SHAP| over their summed test counts (cell 0's
    # histogram: the first 16 values), by hand from the shared values
    from medfl.data.heart import FEATURE_NAMES

    first = ex["features"][0]
    col = list(FEATURE_NAMES).index(first["name"])
    num = sum(m["explain"][col] for m in raw.values())
    den = sum(sum(m["hist"][:16]) for m in raw.values())
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
