"""Both budgets in the run's files: summary.json, report.html and MODEL_CARD.md show each
site's training ε, test ε and per-patient ε (the larger of the two)."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from conftest import run_config

from medfl.config import parse_run_config
from medfl.evaluation.stats import SiteEvalStats
from medfl.reporting.html import render_report_html
from medfl.reporting.model_card import render_model_card
from medfl.reporting.summary import build_summary, site_test_epsilon
from medfl.reporting.summary_schema import Summary
from medfl.site.metrics import TrainMetrics

from .conftest import classification_report
from .test_html import Page

PINNED = Path(__file__).parents[1] / "apps" / "data" / "pinned_summary.json"


def _train(epsilon: float) -> TrainMetrics:
    return TrainMetrics(num_examples=100, epsilon=epsilon, delta=1e-4, noise_multiplier=1.1,
                        sample_rate=0.5, max_grad_norm=1.0, steps=20)


def _evaluation(test_epsilon: float) -> SiteEvalStats:
    hist = np.array([[10.0, 8, 6, 4, 2, 0, 0, 0], [0.0, 0, 2, 4, 6, 8, 10, 0]])
    return SiteEvalStats(threshold=0.5, hist=hist, hist_std=3.0, test_epsilon=test_epsilon)


def test_a_sites_test_epsilon_is_the_largest_its_replies_state():
    assert site_test_epsilon(_evaluation(0.31), {"test-epsilon": 0.97}) == 0.97
    assert site_test_epsilon(_evaluation(0.31), None) == 0.31
    assert site_test_epsilon(SimpleNamespace(), {"hist": []}) is None
    assert site_test_epsilon(None, None) is None


def test_the_summary_states_both_budgets_and_the_per_patient_epsilon():
    cfg = parse_run_config(run_config(privacy__test_epsilon=1.0))
    summary = build_summary(
        cfg, site_order=["a", "b", "c"], train={"a": _train(2.5), "b": _train(0.6)},
        evaluation={"a": _evaluation(0.4), "b": _evaluation(0.4)},  # c: no reply
        rounds_trained={"a": [1], "b": [1]}, run_name="r",
        report_stats={"a": {"test-epsilon": 1.0}, "b": {"test-epsilon": 1.0}})
    data = json.loads(json.dumps(summary.to_dict()))
    assert [s.get("test_epsilon") for s in data["sites"]] == [1.0, 1.0, None]
    privacy = data["privacy"]
    assert privacy["test_epsilon_target"] == 1.0
    assert privacy["per_patient_epsilon"] == {"a": 2.5, "b": 1.0, "c": None}
    assert "parallel composition" in privacy["composition"]
    assert "larger of the site's training ε and test ε" in privacy["composition"]
    again = Summary.from_dict(data)
    assert again.to_dict() == data and again.sites[0].test_epsilon == 1.0


def test_a_summary_written_before_the_test_budget_reads_with_none():
    written = json.loads(PINNED.read_text())
    for key in ("test_epsilon_target", "per_patient_epsilon", "composition"):
        del written["privacy"][key]  # as files written before the test budget have it
    for site in written["sites"]:
        site.pop("test_epsilon", None)
    summary = Summary.from_dict(written)
    assert summary.to_dict() == written
    assert summary.privacy.per_patient_epsilon is None
    assert summary.privacy.test_epsilon_target is None
    assert all(s.test_epsilon is None for s in summary.sites)


def _with_test_budget() -> dict:
    report = copy.deepcopy(classification_report())
    privacy = report["privacy"]
    privacy |= {"test_epsilon_target": 1.0,
                "composition": "parallel composition: disjoint patients"}
    for site, test_eps in zip(privacy["sites"], (0.95, 1.0, math.inf, None), strict=True):
        site |= {"test_epsilon": test_eps,
                 "per_patient_epsilon": None if test_eps is None else max(site["epsilon"],
                                                                          test_eps)}
    return report


def test_report_html_shows_training_test_and_per_patient_epsilon_per_site():
    page = Page(render_report_html(_with_test_budget()))
    rows = page.table("privacy", "Site")
    assert (rows["cleveland"]["ε training rows"], rows["cleveland"]["ε test rows"],
            rows["cleveland"]["ε per patient"]) == ("2.87", "0.95", "2.87")
    assert (rows["switzerland"]["ε test rows"], rows["switzerland"]["ε per patient"]) == (
        "∞", "∞")
    assert rows["longbeach"]["ε test rows"] == "n/a"
    text = render_report_html(_with_test_budget())
    assert "Target ε per site, test rows" in text and "parallel composition" in text


def test_the_model_card_shows_both_budgets_per_site():
    card = render_model_card(_with_test_budget())
    assert "| Site | (ε, δ) training rows | ε test rows | ε per patient |" in card
    assert "| cleveland | (ε = 2.87, δ = 0.001) | 0.95 | 2.87 |" in card
    assert "1.00 on its test rows" in card and "Per patient: parallel composition" in card


def test_a_report_asking_exact_test_figures_says_so():
    report = _with_test_budget()
    report["privacy"]["test_epsilon_target"] = 0.0
    assert "exact figures (no DP) on its test rows" in render_model_card(report)


def test_test_set_statistics_are_listed_as_dp_unless_exact():
    from medfl.reporting.summary import mechanisms, non_dp_releases

    noised = parse_run_config(run_config(privacy__test_epsilon=0.5))
    # (the personalised evaluation, where asked, is listed apart)
    assert not any(x.startswith(("exact test-set", "test-set", "the final report's"))
                   for x in non_dp_releases(noised))
    assert any(x.startswith("Gaussian mechanism on every test-set statistic (monitoring "
                            "evaluations every 5 rounds") and "ε ≤ 0.5" in x
               for x in mechanisms(noised))
    exact = parse_run_config(run_config(privacy__test_epsilon=0.0))
    assert any(x.startswith("exact test-set statistics") for x in non_dp_releases(exact))
    assert not any("test-set" in x for x in mechanisms(exact))
