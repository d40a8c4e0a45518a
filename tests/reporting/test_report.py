"""report.json from the sites' noisy report releases: every pooled row is the sum of the
same sites' releases (its n too), figures under the floor are suppressed with their
reason, summary.json's per-site headline comes from the report."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import run_config

from medfl import tasks
from medfl.config import parse_run_config
from medfl.errors import DataError
from medfl.evaluation.histograms import N_BINS, histogram, point_metrics
from medfl.evaluation.release import CellRelease, ReportStats
from medfl.privacy.mechanisms import gaussian_release
from medfl.reporting.files import merge_into_summary, write_reports
from medfl.reporting.report import build_report
from medfl.reporting.summary_schema import Summary

PINNED = Path(__file__).parents[1] / "apps" / "data" / "pinned_summary.json"
SITES = {"cleveland": 104, "hungarian": 89, "switzerland": 16, "va": 45}  # as pinned
SIGMA = 2.0


def _release(rng: np.random.Generator, n: int, sigma: float) -> ReportStats:
    """A site's report release of the heart task's 5 cells, built as a site builds it."""
    y = (rng.random(n) < 0.5).astype(int)
    male, young = rng.random(n) < 0.7, rng.random(n) < 0.5
    p = 1 / (1 + np.exp(-(rng.normal(-1.0, 1.0, n) + 2.0 * y)))
    masks = [np.ones(n, bool), male, ~male, young, ~young]
    hist = np.stack([histogram(y[m], p[m], threshold=0.5) for m in masks])
    rel = gaussian_release(hist, 1.0, sensitivity=math.sqrt(3), sigma=sigma, rng=rng)
    explain = gaussian_release(np.full(13, 0.1 * n), 4.0, sensitivity=1.0, sigma=sigma, rng=rng)
    return ReportStats(tuple(CellRelease(hist=h) for h in rel.values),
                       hist_std=float(rel.std.flat[0]), explain=tuple(explain.values),
                       explain_std=float(explain.std[0]), test_epsilon=1.0)


@pytest.fixture(scope="module")
def heart():
    raw = run_config()
    cfg = parse_run_config(raw)
    rng = np.random.default_rng(7)
    stats = {s: _release(rng, n, SIGMA) for s, n in SITES.items()}
    # through the wire form, as the server receives it
    stats = {s: ReportStats.from_metrics(st.to_metrics(), n_cells=5) for s, st in stats.items()}
    summary = Summary.from_dict(json.loads(PINNED.read_text()))
    report = build_report(cfg, summary=summary, rounds=[], site_stats=stats, created_utc="t")
    return raw, cfg, stats, report


def test_the_heart_task_has_the_five_cells_the_releases_hold(heart):
    _, cfg, _, _ = heart
    assert len(tasks.task_for(cfg).cells()) == 5


def test_every_pooled_row_lists_its_sites_and_n_is_the_sum_of_their_noisy_counts(heart):
    _, _, stats, report = heart
    pooled = report.pooled
    assert pooled is not None and pooled.sites_included == list(SITES)
    total = sum(float(np.sum(st.cells[0].hist)) for st in stats.values())
    assert pooled.n_test == round(total)
    std = 2.0 * math.sqrt(3)  # sigma times the sensitivity, per count and site
    assert pooled.n_test_noise_sd == pytest.approx(math.sqrt(len(SITES) * 2 * N_BINS) * std)
    for i, sub in enumerate(pooled.subgroups, start=1):
        assert sub.sites_included == list(SITES)
        noisy = sum(float(np.sum(st.cells[i].hist)) for st in stats.values())
        assert sub.n == max(round(noisy), 0)
        assert sub.n_noise_sd == pytest.approx(pooled.n_test_noise_sd)
    assert [d.n for d in pooled.demographics] == [s.n for s in pooled.subgroups]


def test_pooled_figures_are_those_of_the_summed_noisy_histograms(heart):
    _, _, stats, report = heart
    summed = sum(np.asarray(st.cells[0].hist) for st in stats.values())
    # the figures of the summed histogram with its noisy negative counts set to 0
    expected = point_metrics(np.clip(summed, 0.0, None), threshold=0.5)
    pooled = report.pooled
    assert pooled is not None
    for name in ("auroc", "sensitivity", "specificity", "brier"):
        figure = pooled.metrics[name]
        assert figure.value == pytest.approx(expected[name])
        assert figure.ci is not None and 0.0 <= figure.ci[0] <= figure.ci[1] <= 1.0
    # a site's population is its own release alone
    site = next(p for p in report.site_populations if p.name == "cleveland")
    assert site.sites_included == ["cleveland"]
    assert site.n_test == round(float(np.sum(stats["cleveland"].cells[0].hist)))


def test_a_cell_under_k_by_its_noisy_count_is_suppressed_with_its_reason(heart):
    _, _, _, report = heart
    swiss = next(p for p in report.site_populations if p.name == "switzerland")
    under = [s for s in swiss.subgroups if s.suppressed]
    assert under, "16 patients at noise sd 3.5 per count: some cell is under k=10"
    for s in under:
        assert s.reason is not None and "k=10" in s.reason and "noisy" in s.reason
        assert all(m.suppressed and m.value is None for m in s.metrics.values())
        assert s.n is not None  # the noisy count itself is shown


def test_limitations_and_methods_say_the_figures_carry_dp_noise(heart):
    _, _, _, report = heart
    text = " ".join(report.limitations)
    assert "Gaussian noise" in text and "include both the sampling error and that noise" in text
    assert "suppressed at the site" not in text
    assert "1000 replicates" in report.methods["ci"]
    assert "one half" in report.methods["metrics"]
    assert "cleveland: 3.46 (test-set ε 1.00)" in report.methods["statistics"]


def test_pooled_explanations_are_summed_noisy_sums_over_summed_noisy_counts(heart):
    _, _, stats, report = heart
    ex = report.explanations
    assert ex is not None and ex.kind == "shap"
    n = {s: float(np.sum(st.cells[0].hist)) for s, st in stats.items()}
    first = ex.features[0]
    j = tasks.task_for(heart[1]).feature_spec().feature_names.index(first.name)
    expected = sum(st.explain[j] for st in stats.values()) / sum(n.values())
    assert first.mean_abs_shap == pytest.approx(max(expected, 0.0))
    assert first.per_site["va"] == pytest.approx(max(stats["va"].explain[j] / n["va"], 0.0))


def test_summary_headline_comes_from_the_reports_per_site_figures(heart):
    _, _, _, report = heart
    summary = merge_into_summary(Summary.from_dict(json.loads(PINNED.read_text())), report)
    shown = [p.metrics["accuracy"].value for p in report.site_populations
             if p.metrics["accuracy"].value is not None]
    assert shown
    assert summary.mean_site_accuracy == pytest.approx(sum(shown) / len(shown))
    for site in summary.sites:
        pop = next(p for p in report.site_populations if p.name == site.name)
        assert site.metrics.value("accuracy") == pop.metrics["accuracy"].value
    assert summary.pooled.n_test == report.pooled.n_test  # type: ignore[union-attr]


def test_a_site_under_the_floor_is_left_out_of_the_mean(heart):
    _, _, _, report = heart
    swiss = next(p for p in report.site_populations if p.name == "switzerland")
    swiss.metrics["accuracy"].value = None
    swiss.metrics["accuracy"].suppressed = True
    summary = merge_into_summary(Summary.from_dict(json.loads(PINNED.read_text())), report)
    others = [p.metrics["accuracy"].value for p in report.site_populations
              if p.name != "switzerland" and p.metrics["accuracy"].value is not None]
    assert summary.mean_site_accuracy == pytest.approx(sum(others) / len(others))


def test_write_reports_reads_the_releases_of_the_runs_cells(heart, tmp_path):
    raw, _, stats, _ = heart
    (tmp_path / "config.json").write_text(json.dumps({"run_config": raw}))
    (tmp_path / "summary.json").write_text(PINNED.read_text())
    (tmp_path / "evaluation.json").write_text(
        json.dumps({s: st.to_metrics() for s, st in stats.items()}))

    content = write_reports(tmp_path)

    assert content["populations"][0]["sites_included"] == list(SITES)
    assert (tmp_path / "report.html").is_file() and (tmp_path / "MODEL_CARD.md").is_file()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mean_site_accuracy"] is not None
    broken = {s: {**st.to_metrics(), "hist": [1.0, 2.0]} for s, st in stats.items()}
    (tmp_path / "evaluation.json").write_text(json.dumps(broken))
    with pytest.raises(DataError, match="release of site 'cleveland' does not hold this "
                                        "run's 5 cells"):
        write_reports(tmp_path)
