"""The per-site lifetime privacy ledger: composition, refusal, integrity, atomicity."""

from __future__ import annotations

import json
import math

import pytest
from conftest import run_config
from opacus.accountants import RDPAccountant
from typer.testing import CliRunner

from bench import inprocess
from medfl.cli import app as cli
from medfl.errors import DataError, PrivacyBudgetExceeded
from medfl.privacy.ledger import LEDGER_FILE, Ledger

H1 = [(1.2, 0.1, 50)]
H2 = [(5.0, 1.0, 1), (1.5, 0.2, 30)]


def _eps(*histories, delta=1e-3):
    acc = RDPAccountant()
    for hist in histories:
        for sigma, rate, steps in hist:
            for _ in range(steps):
                acc.step(noise_multiplier=sigma, sample_rate=rate)
    return acc.get_epsilon(delta=delta)


def _append(ledger, run_id, rnd, status, hist, limit=0.0):
    ledger.append(run_id=run_id, server_round=rnd, status=status, history=hist,
                  epsilon_run=_eps(hist) if hist else 0.0, delta=1e-3, accountant="rdp",
                  limit=limit)


def test_lifetime_composes_the_last_history_of_every_run(tmp_path):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", [(1.2, 0.1, 25)])
    _append(ledger, 1, 2, "trained", H1)  # cumulative: supersedes round 1
    _append(ledger, 2, 1, "trained", H2)
    again = Ledger.open(tmp_path, "va")
    assert again.lifetime_epsilon(delta=1e-3, accountant="rdp") == pytest.approx(_eps(H1, H2))
    runs = again.runs()
    assert [(r["run_id"], r["rounds_trained"]) for r in runs] == [(1, 2), (2, 1)]


def test_a_run_that_restarts_keeps_what_it_released_before(tmp_path):
    # a node lost its context.state mid-run: its history starts again from nothing, but
    # the first release already left the site and stays counted
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", [(1.2, 0.1, 25)])
    _append(ledger, 1, 2, "trained", [(1.2, 0.1, 10)])  # does not continue the first
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp") == pytest.approx(
        _eps([(1.2, 0.1, 25)], [(1.2, 0.1, 10)]))


def test_a_release_followed_by_a_refusal_still_counts(tmp_path):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 0, "released", [(5.0, 1.0, 1)])
    _append(ledger, 1, 1, "refused", [(5.0, 1.0, 1)])
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp") == pytest.approx(
        _eps([(5.0, 1.0, 1)]))
    # and a later round of the same run supersedes it rather than adding to it
    _append(ledger, 1, 2, "trained", [(5.0, 1.0, 1), (1.5, 0.2, 30)])
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp") == pytest.approx(_eps(H2))


def test_the_sites_own_limit_wins_over_a_looser_run_config():
    from conftest import run_config

    from medfl.config import parse_run_config
    from medfl.site import lifetime_limit

    loose = parse_run_config(run_config(privacy__lifetime_epsilon=0.0))
    tight = parse_run_config(run_config(privacy__lifetime_epsilon=2.0))
    assert lifetime_limit(loose, {"lifetime-epsilon": 5.0}) == 5.0
    assert lifetime_limit(tight, {"lifetime-epsilon": 5.0}) == 2.0
    assert lifetime_limit(parse_run_config(run_config(privacy__lifetime_epsilon=9.0)),
                          {"lifetime-epsilon": 5.0}) == 5.0
    assert lifetime_limit(loose, {}) == 0.0


def test_check_refuses_past_the_limit_naming_spent_requested_and_limit(tmp_path):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", H1)
    spent = _eps(H1)
    with pytest.raises(PrivacyBudgetExceeded, match=rf"spent ε={spent:.3f}.*limit "
                                                    r"privacy.lifetime-epsilon=3.5"):
        ledger.check(spend=H2, delta=1e-3, accountant="rdp", limit=3.5)
    # no limit: never refuses
    ledger.check(spend=H2 * 50, delta=1e-3, accountant="rdp", limit=0.0)


def test_a_round_without_dp_makes_the_lifetime_infinite(tmp_path):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "no-dp", [])
    assert ledger.lifetime_epsilon(delta=1e-3, accountant="rdp") == math.inf


@pytest.mark.parametrize("damage", ["edit", "drop-first", "garbage", "other-site",
                                    "not-an-entry"])
def test_a_damaged_ledger_is_refused_and_left_as_it_is(tmp_path, damage):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", H1)
    _append(ledger, 2, 1, "trained", H2)
    path = tmp_path / LEDGER_FILE
    data = json.loads(path.read_text())
    if damage == "edit":
        data["entries"][0]["epsilon_run"] = 0.01  # pretend less was spent
        text = json.dumps(data)
    elif damage == "drop-first":
        data["entries"] = data["entries"][1:]  # drop the first run
        text = json.dumps(data)
    elif damage == "not-an-entry":
        data["entries"].append(["trained"])
        text = json.dumps(data)
    elif damage == "garbage":
        text = path.read_text()[:100]
    else:
        data["site"] = "cleveland"
        text = json.dumps(data)
    path.write_text(text)
    with pytest.raises(DataError, match=LEDGER_FILE):
        Ledger.open(tmp_path, "va")
    assert path.read_text() == text  # never reset or rewritten


def test_a_failed_write_keeps_the_previous_ledger(tmp_path, monkeypatch):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", H1)
    before = (tmp_path / LEDGER_FILE).read_bytes()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("os.replace", crash)  # the crash happens before the rename
    with pytest.raises(OSError):
        _append(ledger, 2, 1, "trained", H2)
    assert (tmp_path / LEDGER_FILE).read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [LEDGER_FILE, LEDGER_FILE + ".lock"]


def test_second_run_is_refused_by_every_site_when_the_budget_fits_one(tmp_path):
    state = tmp_path / "state"
    # exact moments: the first spend of the second run is then its first round (with the
    # default noised moments it is the moments query, refused the same way)
    cfg = run_config(num_server_rounds=2, output_dir=str(tmp_path / "out"), state_dir=str(state),
                     privacy__lifetime_epsilon=3.0, preprocessing__stats_noise_multiplier=0.0)
    inprocess.run({**cfg, "run-name": "first"}, run_id=11)
    first = json.loads((tmp_path / "out" / "first" / "summary.json").read_text())
    # the last train reply's lifetime ε is the run's ε before the audit's members'
    # histogram (the last accounted release, after training; the summary composes it in)
    from opacus.accountants import create_accountant

    for s in first["sites"]:
        assert s["accountant_history"][-1] == [10.0, 1.0, 1]
        acc = create_accountant(s["accountant"])
        acc.history = [tuple(h) for h in s["accountant_history"][:-1]]
        assert acc.get_epsilon(delta=s["delta"]) == pytest.approx(s["epsilon_lifetime"])
        assert s["epsilon_lifetime"] < s["epsilon"] <= 3.0
    with pytest.raises(PrivacyBudgetExceeded, match="every site refused round 1"):
        inprocess.run({**cfg, "run-name": "second"}, run_id=12)
    rounds = [json.loads(x) for x in
              (tmp_path / "out" / "second" / "rounds.jsonl").read_text().splitlines()]
    assert rounds[-1]["stopped"].startswith("every site refused")
    assert {p["status"] for p in rounds[-1]["train_problems"]} == {"refused"}
    assert "lifetime budget" in rounds[-1]["train_problems"][0]["reason"]
    for site in ("cleveland", "hungarian", "switzerland", "va"):
        ledger = Ledger.open(state / site, site)
        runs = {r["run_id"]: r for r in ledger.runs()}
        assert runs[11]["rounds_trained"] == 2 and runs[12]["rounds_refused"] == 1
        assert runs[11]["epsilon"] <= 3.0


def test_budget_command_prints_the_ledger(tmp_path):
    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", H1, limit=5.0)
    _append(ledger, 2, 1, "refused", [], limit=5.0)  # run 2 had released nothing yet
    result = CliRunner().invoke(cli, ["budget", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["site"] == "va"
    assert data["lifetime_epsilon"] == pytest.approx(_eps(H1))
    assert data["limit"] == 5.0
    assert data["remaining"] == pytest.approx(5.0 - _eps(H1))
    assert [r["rounds_refused"] for r in data["runs"]] == [0, 1]
    table = CliRunner().invoke(cli, ["budget", str(tmp_path)], env={"COLUMNS": "140"})
    assert table.exit_code == 0 and "refused" in table.output


def test_budget_command_on_a_damaged_ledger_says_so(tmp_path):
    (tmp_path / LEDGER_FILE).write_text("{not json")
    result = CliRunner().invoke(cli, ["budget", str(tmp_path)])
    assert result.exit_code == 2
    assert "unreadable" in result.output


def test_a_ledger_written_before_spends_were_kept_still_counts_and_continues(tmp_path):
    """Old entries (cumulative histories, no ``spend``) stay valid; an attempt reserved
    after them adds its own spend, whatever run key it carries."""
    from medfl.privacy.ledger import Attempt

    ledger = Ledger.open(tmp_path, "va")
    _append(ledger, 1, 1, "trained", [(1.2, 0.1, 25)])
    _append(ledger, 1, 2, "trained", H1)  # the old format: supersedes round 1
    attempt = Attempt(run_id=1, run_tag="run-1-abc", server_round=3, status="reserved",
                      delta=1e-4, site_delta=1e-3, accountant="rdp", limit=0.0)
    after = Ledger.open(tmp_path, "va").reserve(
        attempt, lambda before: ([(1.5, 0.2, 30)], 1.0), fallback=[])
    assert after == [(1.5, 0.2, 30)]
    again = Ledger.open(tmp_path, "va")
    assert again.lifetime_epsilon(delta=1e-3, accountant="rdp") == pytest.approx(
        _eps(H1, [(1.5, 0.2, 30)]))
    # the same run key again, from another run: composed, never folded into the first
    Ledger.open(tmp_path, "va").reserve(
        attempt, lambda before: ([(1.5, 0.2, 30)], 1.0), fallback=[])
    assert Ledger.open(tmp_path, "va").lifetime_epsilon(delta=1e-3, accountant="rdp") == \
        pytest.approx(_eps(H1, [(1.5, 0.2, 60)]))


def test_budget_command_reads_reserved_spends_at_the_sites_delta(tmp_path):
    from medfl.privacy.ledger import Attempt

    for key in (1, 2):
        attempt = Attempt(run_id=key, run_tag=f"run-{key}-abc", server_round=1,
                          status="reserved", delta=1e-5, site_delta=1e-3, accountant="rdp",
                          limit=5.0)
        Ledger.open(tmp_path, "va").reserve(attempt, lambda before: (H1, _eps(H1, delta=1e-5)),
                                            fallback=[])
    result = CliRunner().invoke(cli, ["budget", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["delta"] == 1e-3
    assert data["lifetime_epsilon"] == pytest.approx(_eps(H1, H1, delta=1e-3))
    assert [r["rounds_trained"] for r in data["runs"]] == [1, 1]
