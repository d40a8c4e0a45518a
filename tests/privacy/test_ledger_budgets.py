"""The ledger's two budgets: training rows and test rows, composed and limited apart.

Expected ε values come from Opacus' RDP accountant stepped by hand over each release.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from opacus.accountants import RDPAccountant

from medfl.errors import DataError, PrivacyBudgetExceeded
from medfl.privacy.ledger import LEDGER_FILE, TEST, TRAIN, Attempt, Ledger

DELTA = 1e-3
SGD = [(1.2, 0.1, 50)]
SIGMA = 2.0  # one test-set Gaussian release: (σ, sample rate 1, one step)
OLD_LEDGER = Path(__file__).with_name("ledger_before_budgets.json")


def _eps(*releases, delta=DELTA):
    acc = RDPAccountant()
    for sigma, rate, steps in releases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=rate)
    return acc.get_epsilon(delta=delta)


def _attempt(budget, *, run=1, limit=0.0, release="", status=None, server_round=1):
    return Attempt(run_id=run, run_tag=f"run-{run}-abc" + ("-test" if budget == TEST else ""),
                   server_round=server_round,
                   status=status or ("released" if budget == TEST else "reserved"),
                   delta=DELTA, site_delta=DELTA, accountant="rdp", limit=limit,
                   budget=budget, release=release)


def _reserve(tmp_path, attempt, spend):
    return Ledger.open(tmp_path, "va").reserve(
        attempt, lambda before: (spend, _eps(*before, *spend) if spend or before else 0.0),
        fallback=[])


def test_each_budget_composes_only_its_own_releases(tmp_path):
    _reserve(tmp_path, _attempt(TRAIN), SGD)
    _reserve(tmp_path, _attempt(TEST, release="monitor"), [(SIGMA, 1.0, 1)])
    _reserve(tmp_path, _attempt(TEST, release="report"), [(SIGMA, 1.0, 1)])
    ledger = Ledger.open(tmp_path, "va")
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp") == pytest.approx(_eps(*SGD))
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp", budget=TEST) == \
        pytest.approx(_eps((SIGMA, 1.0, 2)))
    [row] = ledger.runs()
    assert row["rounds_trained"] == 1 and row["epsilon"] == pytest.approx(_eps(*SGD))
    assert row["test_releases"] == 2
    assert row["test_epsilon"] == pytest.approx(_eps((SIGMA, 1.0, 2)))
    assert [e["budget"] for e in ledger.entries] == ["train", "test", "test"]


def test_a_test_release_past_the_test_limit_is_refused_and_recorded(tmp_path):
    one, two = _eps((SIGMA, 1.0, 1)), _eps((SIGMA, 1.0, 2))
    limit = (one + two) / 2  # room for one release, not two
    _reserve(tmp_path, _attempt(TRAIN, limit=100.0), SGD * 3)  # the training budget is apart
    _reserve(tmp_path, _attempt(TEST, limit=limit, release="monitor"), [(SIGMA, 1.0, 1)])
    with pytest.raises(PrivacyBudgetExceeded,
                       match=rf"test rows.*spent ε={one:.3f}.*ε={two:.3f}.*"
                             rf"lifetime-test-epsilon={limit}"):
        _reserve(tmp_path, _attempt(TEST, run=2, limit=limit, release="report"),
                 [(SIGMA, 1.0, 1)])
    ledger = Ledger.open(tmp_path, "va")
    assert [(e["budget"], e["status"]) for e in ledger.entries] == [
        ("train", "reserved"), ("test", "released"), ("test", "refused")]
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp", budget=TEST) == \
        pytest.approx(one)
    assert [r["test_refused"] for r in ledger.runs()] == [0, 1]


def test_a_training_round_past_the_training_limit_is_refused_whatever_the_test_budget(
        tmp_path):
    limit = (_eps(*SGD) + _eps((1.2, 0.1, 100))) / 2  # room for one round of SGD, not two
    for release in ("monitor", "report"):  # a test budget far past the training limit
        _reserve(tmp_path, _attempt(TEST, release=release), [(0.6, 1.0, 1)])
    assert Ledger.open(tmp_path, "va").lifetime_epsilon(
        delta=DELTA, accountant="rdp", budget=TEST) > limit
    _reserve(tmp_path, _attempt(TRAIN, limit=limit), SGD)
    with pytest.raises(PrivacyBudgetExceeded, match=r"train rows.*limit "
                                                    r"privacy.lifetime-epsilon="):
        _reserve(tmp_path, _attempt(TRAIN, run=2, limit=limit), SGD)


def test_a_ledger_written_before_budgets_loads_and_counts_as_training(tmp_path):
    """A ledger as sites wrote it before this change (one entry in the format before
    spends were kept, one reserved round): it verifies, counts as training, and keeps its
    entries byte for byte when a test release is added."""
    shutil.copy(OLD_LEDGER, tmp_path / LEDGER_FILE)
    old = json.loads(OLD_LEDGER.read_text())["entries"]
    ledger = Ledger.open(tmp_path, "va")
    expected = _eps((1.2, 0.1, 50), (1.5, 0.2, 30))
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp") == pytest.approx(expected)
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp", budget=TEST) == 0.0
    assert [(r["rounds_trained"], r["test_releases"], r["test_epsilon"])
            for r in ledger.runs()] == [(1, 0, 0.0), (1, 0, 0.0)]
    _reserve(tmp_path, _attempt(TEST, run=3, release="report"), [(SIGMA, 1.0, 1)])
    again = Ledger.open(tmp_path, "va")
    assert again.entries[:2] == old
    assert again.lifetime_epsilon(delta=DELTA, accountant="rdp") == pytest.approx(expected)


def test_an_entry_of_a_budget_this_version_does_not_know_is_refused(tmp_path):
    _reserve(tmp_path, _attempt("holdout"), [(SIGMA, 1.0, 1)])
    with pytest.raises(DataError, match="budget 'holdout'"):
        Ledger.open(tmp_path, "va")


def test_exact_test_figures_make_the_test_budget_infinite_and_leave_training(tmp_path):
    _reserve(tmp_path, _attempt(TRAIN), SGD)
    _reserve(tmp_path, _attempt(TEST, release="report", status="exact"), [])
    ledger = Ledger.open(tmp_path, "va")
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp", budget=TEST) == math.inf
    assert ledger.lifetime_epsilon(delta=DELTA, accountant="rdp") == pytest.approx(_eps(*SGD))
    [row] = ledger.runs()
    assert row["test_epsilon"] == math.inf and row["epsilon"] == pytest.approx(_eps(*SGD))
    assert ledger.released("run-1-abc-test", "report", None)
    assert not ledger.released("run-1-abc-test", "monitor", None)


def test_budget_command_shows_both_budgets_their_limits_and_the_per_patient_epsilon(
        tmp_path):
    from typer.testing import CliRunner

    from medfl.cli import app as cli

    _reserve(tmp_path, _attempt(TRAIN, limit=5.0), SGD)
    test = Attempt(run_id=1, run_tag="run-1-abc-test", server_round=10, status="released",
                   delta=DELTA, site_delta=2e-3, accountant="rdp", limit=9.0, budget=TEST,
                   release="report")
    _reserve(tmp_path, test, [(0.8, 1.0, 1)])
    result = CliRunner().invoke(cli, ["budget", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    train_eps, test_eps = _eps(*SGD), _eps((0.8, 1.0, 1), delta=2e-3)
    assert data["lifetime_epsilon"] == pytest.approx(train_eps)
    assert (data["delta"], data["limit"]) == (DELTA, 5.0)
    assert data["test"]["lifetime_epsilon"] == pytest.approx(test_eps)
    assert (data["test"]["delta"], data["test"]["limit"]) == (2e-3, 9.0)
    assert data["test"]["remaining"] == pytest.approx(max(0.0, 9.0 - test_eps))
    assert data["per_patient_epsilon"] == pytest.approx(max(train_eps, test_eps))
    [run] = data["runs"]
    assert run["test_releases"] == 1
    assert run["test_epsilon"] == pytest.approx(_eps((0.8, 1.0, 1), delta=DELTA))
    table = CliRunner().invoke(cli, ["budget", str(tmp_path)], env={"COLUMNS": "200"})
    assert table.exit_code == 0, table.output
    assert "test rows" in table.output and "per-patient lifetime ε" in table.output
