"""Membership-inference audit: the attack's figures by hand and at the sites."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medfl.privacy.audit import AuditResult, loss_threshold_attack, per_record_loss


def test_per_record_loss_is_binary_cross_entropy():
    np.testing.assert_allclose(per_record_loss(np.array([1, 0]), np.array([0.8, 0.8])),
                               [-np.log(0.8), -np.log(0.2)])


def test_attack_by_hand():
    # members' losses all below non-members': perfect attack
    r = loss_threshold_attack(np.linspace(0.0, 0.1, 12), np.linspace(0.5, 1.0, 12), k=10)
    assert r.attack_auc == 1.0 and r.tpr_at_low_fpr == 1.0 and r.members == 12


def test_attack_auc_is_sklearns_with_lower_loss_meaning_member():
    rng = np.random.default_rng(0)
    lm, ln = rng.exponential(0.4, 80), rng.exponential(0.5, 40)
    r = loss_threshold_attack(lm, ln, k=10)
    assert r.attack_auc == pytest.approx(roc_auc_score(np.r_[np.ones(80), np.zeros(40)],
                                                       -np.r_[lm, ln]))
    assert 0 <= r.tpr_at_low_fpr <= 1


def test_groups_under_k_are_suppressed_and_round_trip():
    r = loss_threshold_attack(np.zeros(30), np.zeros(5), k=10)
    assert r == AuditResult(None, None, None, None)
    assert AuditResult.from_metrics(r.to_metrics()) == r


def test_run_reports_the_audit_per_site(run_inprocess):
    from medfl.privacy.audit import AUDIT_SIGMA, LOSS_EDGES

    path, grid = run_inprocess(num_server_rounds=2)
    audit = json.loads((path / "summary.json").read_text())["privacy"]["audit"]
    assert set(audit["sites"]) == {"cleveland", "hungarian", "switzerland", "va"}
    assert 0.0 <= audit["sites"]["cleveland"]["attack_auc"] <= 1.0
    # a noisy total of Cleveland's 199 training rows: 11 bins of noise sd σ each
    assert abs(audit["sites"]["cleveland"]["members"] - 199) < 5 * AUDIT_SIGMA * np.sqrt(11)
    assert audit["mean_attack_auc"] is not None
    # no per-record loss left a site: each reply holds two histograms on the public grid
    replies = [r for r in grid.replies if r.metadata.message_type == "query.audit"]
    assert len(replies) == 4
    for r in replies:
        m = r.content["metrics"]
        assert set(m) == {"member-hist", "non-member-hist", "member-std", "non-member-std"}
        assert len(m["member-hist"]) == len(m["non-member-hist"]) == len(LOSS_EDGES) + 1
        assert m["member-std"] == m["non-member-std"] == AUDIT_SIGMA


def test_audit_command_gives_a_hospital_the_exact_figures(run_inprocess):
    from typer.testing import CliRunner

    from medfl.cli import app as cli

    path, _ = run_inprocess(num_server_rounds=1, run_name="aud")
    result = CliRunner().invoke(cli, ["audit", str(path), "--json"])
    assert result.exit_code == 0, result.output
    offline = json.loads(result.output)
    # the command runs where the data are: exact group sizes (Cleveland's split)
    assert (offline["cleveland"]["members"], offline["cleveland"]["non_members"]) == (199, 104)
    assert all(0.0 <= row["attack_auc"] <= 1.0 for row in offline.values())


# --- the audit as it leaves a site: noisy loss histograms ---------------------------------

def test_release_figures_are_sklearns_on_the_binned_losses():
    from medfl.privacy.audit import LOSS_EDGES, audit_release

    rng = np.random.default_rng(1)
    lm, ln = rng.exponential(0.4, 200), rng.exponential(0.6, 90)
    r = audit_release(lm, ln, member_sigma=0.0, non_member_sigma=0.0, rng=rng).result()
    bins = np.searchsorted(LOSS_EDGES, np.r_[lm, ln], side="right")
    labels = np.r_[np.ones(200), np.zeros(90)]
    assert r.attack_auc == pytest.approx(roc_auc_score(labels, -bins))
    assert (r.members, r.non_members) == (200, 90)
    # TPR at the largest cut whose FPR <= 10%, by hand over the grid's cuts
    cuts = [(np.mean(bins[:200] <= b), np.mean(bins[200:] <= b)) for b in range(11)]
    assert r.tpr_at_low_fpr == pytest.approx(max(t for t, f in cuts if f <= 0.1))


def test_release_noise_has_the_mechanisms_scale_and_no_exact_count_leaves():
    from medfl.privacy.audit import AUDIT_SIGMA, AuditRelease, audit_release

    lm, ln = np.full(50, 0.03), np.full(20, 3.0)
    draws = [audit_release(lm, ln, member_sigma=AUDIT_SIGMA, non_member_sigma=AUDIT_SIGMA,
                           rng=np.random.default_rng(i)) for i in range(400)]
    member_bin = np.array([d.member_hist[1] for d in draws])  # holds the 50 members
    assert draws[0].member_std == draws[0].non_member_std == AUDIT_SIGMA  # sensitivity 1
    assert abs(member_bin.mean() - 50) < 4 * AUDIT_SIGMA / np.sqrt(400)
    assert 0.85 < member_bin.std() / AUDIT_SIGMA < 1.15
    assert AuditRelease.from_metrics(draws[0].to_metrics()) == draws[0]


def test_dp_sgd_is_calibrated_with_the_audit_planned_in():
    from conftest import run_config

    from medfl.config import parse_run_config
    from medfl.privacy.audit import AUDIT_SIGMA
    from medfl.privacy.dp import DPPlan, epsilon_from_history
    from medfl.site.training import planned_releases

    cfg = parse_run_config(run_config())
    assert planned_releases(cfg) == [(AUDIT_SIGMA, 1.0, 1)]
    p = cfg.privacy
    plan = DPPlan.make(n_train=199, batch_size=128, local_epochs=1, rounds=10,
                       target_epsilon=p.target_epsilon, delta=p.target_delta,
                       max_grad_norm=1.0, accountant=p.accountant,
                       after=planned_releases(cfg))
    assert plan.prior == ()  # the audit is planned, not a release made before training
    full = [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round * 10),
            (AUDIT_SIGMA, 1.0, 1)]
    assert epsilon_from_history(full, delta=p.target_delta,
                                accountant=p.accountant) <= p.target_epsilon * 1.001
