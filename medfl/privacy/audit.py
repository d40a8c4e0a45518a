"""Empirical privacy audit: a membership-inference attack on the global model.

Run at each site on its own data: the site's training rows are the members, its held-out
test rows the non-members. The loss-threshold attack (Yeom et al., 2018) guesses "member"
when the model's loss on a record is low; its ROC AUC over members vs non-members is 0.5
when the model reveals nothing about membership. Only the attack's aggregate figures
leave the site, and only when both groups have at least ``k`` patients.

This is a lower bound on leakage (a weak, cheap attacker), not a proof of privacy: DP's ε
bounds every attacker, the audit shows what one realistic attacker achieves.

What leaves a site is :class:`AuditRelease`: the members' and the non-members' per-record
losses as two histograms on a public loss grid (``LOSS_EDGES``), each a Gaussian release
of sensitivity 1 at noise multiplier ``AUDIT_SIGMA`` (a record adds 1 to one bin of one
histogram). The members' histogram is accounted in the site's training-set budget (and
planned into DP-SGD's calibration, so the run's training ε stays within its target), the
non-members' in its test-set budget. The server computes the attack's figures from the
noisy histograms (:meth:`AuditRelease.result`: AUC with ties in a bin as one half, TPR at
the largest grid cut whose FPR is at most 10%). :func:`loss_threshold_attack` computes
the exact figures for a hospital's own eyes (``medfl audit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from medfl.evaluation.stats import SUPPRESSED
from medfl.wire import WireKeys

LOW_FPR = 0.1
#: public loss grid of the audit histograms (nats); 11 bins, the last open-ended
LOSS_EDGES = np.array([0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.7, 1.0, 1.5, 2.5])
#: noise multiplier of each audit histogram (ε ≈ 0.29 alone at δ = 1e-4, PRV)
AUDIT_SIGMA = 10.0


def per_record_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Binary cross-entropy of each record (natural log), scores clipped away from 0/1."""
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1 - 1e-12)
    y = np.asarray(y, dtype=np.float64)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


@dataclass(frozen=True)
class AuditResult:
    """Loss-threshold attack figures at one site (``None`` when suppressed under k)."""

    attack_auc: float | None
    tpr_at_low_fpr: float | None
    members: int | None
    non_members: int | None

    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("attack-auc", "attack-tpr-at-fpr10", "members", "non-members"),
        counts=frozenset({"members", "non-members"}),
    )

    def to_metrics(self) -> dict[str, float]:
        """Flat numeric form for the wire; suppressed values become ``SUPPRESSED``."""
        def wire(v: float | None) -> float:
            return SUPPRESSED if v is None else float(v)

        return {"attack-auc": wire(self.attack_auc),
                "attack-tpr-at-fpr10": wire(self.tpr_at_low_fpr),
                "members": wire(self.members), "non-members": wire(self.non_members)}

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> AuditResult:
        """Parse :meth:`to_metrics`' form."""
        def opt(v, cast=float):
            return None if float(v) == SUPPRESSED else cast(v)

        return cls(opt(m["attack-auc"]), opt(m["attack-tpr-at-fpr10"]),
                   opt(m["members"], int), opt(m["non-members"], int))


def loss_threshold_attack(loss_members: np.ndarray, loss_non_members: np.ndarray, *,
                          k: int) -> AuditResult:
    """AUC and TPR at FPR <= 10% of the attack "member iff loss is low"."""
    lm, ln = np.asarray(loss_members), np.asarray(loss_non_members)
    if min(len(lm), len(ln)) < k:
        return AuditResult(None, None, None, None)
    labels = np.r_[np.ones(len(lm)), np.zeros(len(ln))]
    score = -np.r_[lm, ln]  # lower loss -> more likely a member
    fpr, tpr, _ = roc_curve(labels, score)
    tpr_low = float(np.max(tpr[fpr <= LOW_FPR])) if np.any(fpr <= LOW_FPR) else 0.0
    return AuditResult(float(roc_auc_score(labels, score)), tpr_low, len(lm), len(ln))


def loss_histogram(loss: np.ndarray) -> np.ndarray:
    """Exact counts of per-record ``loss`` on ``LOSS_EDGES`` (bin b: edges[b-1] <= loss <
    edges[b])."""
    bins = np.searchsorted(LOSS_EDGES, np.asarray(loss, dtype=np.float64), side="right")
    return np.bincount(bins, minlength=len(LOSS_EDGES) + 1).astype(np.float64)


@dataclass(frozen=True)
class AuditRelease:
    """The audit as it leaves a site: noisy loss histograms of members (training rows)
    and non-members (test rows), with each one's noise standard deviation (0: exact)."""

    member_hist: tuple[float, ...]
    non_member_hist: tuple[float, ...]
    member_std: float
    non_member_std: float

    WIRE: ClassVar[WireKeys] = WireKeys(
        scalars=("member-std", "non-member-std"), lists=("member-hist", "non-member-hist"),
        noise={"non-member-std": "non-member-hist"},
        max_length={"member-hist": len(LOSS_EDGES) + 1,
                    "non-member-hist": len(LOSS_EDGES) + 1})

    def to_metrics(self) -> dict[str, float | list[float]]:
        """Flat numeric form for the wire."""
        return {"member-hist": [float(v) for v in self.member_hist],
                "non-member-hist": [float(v) for v in self.non_member_hist],
                "member-std": float(self.member_std),
                "non-member-std": float(self.non_member_std)}

    @classmethod
    def from_metrics(cls, m: dict[str, Any]) -> AuditRelease:
        """Parse :meth:`to_metrics`' form."""
        return cls(tuple(float(v) for v in m["member-hist"]),
                   tuple(float(v) for v in m["non-member-hist"]), float(m["member-std"]),
                   float(m["non-member-std"]))

    def result(self) -> AuditResult:
        """The attack's figures from the noisy histograms (counts clipped at 0); ``None``
        where a noisy group total is under 1."""
        mem = np.clip(np.asarray(self.member_hist, dtype=np.float64), 0, None)
        non = np.clip(np.asarray(self.non_member_hist, dtype=np.float64), 0, None)
        n_m, n_n = float(mem.sum()), float(non.sum())
        if min(n_m, n_n) < 1:
            return AuditResult(None, None, None, None)
        # "member" iff loss is low: a member outranks a non-member in a higher-loss bin
        above_non = n_n - np.cumsum(non)
        auc = float((mem * (above_non + 0.5 * non)).sum()) / (n_m * n_n)
        tpr, fpr = np.cumsum(mem) / n_m, np.cumsum(non) / n_n
        ok = fpr <= LOW_FPR
        return AuditResult(auc, float(tpr[ok].max()) if ok.any() else 0.0,
                           int(round(n_m)), int(round(n_n)))


def audit_release(loss_members: np.ndarray, loss_non_members: np.ndarray, *,
                  member_sigma: float, non_member_sigma: float,
                  rng: np.random.Generator) -> AuditRelease:
    """The two loss histograms, each a Gaussian release of sensitivity 1 at its σ (the
    members' in the training budget, the non-members' in the test budget)."""
    from medfl.privacy.mechanisms import gaussian_release

    mem = gaussian_release(loss_histogram(loss_members), 1.0, sensitivity=1.0,
                           sigma=member_sigma, rng=rng)
    non = gaussian_release(loss_histogram(loss_non_members), 1.0, sensitivity=1.0,
                           sigma=non_member_sigma, rng=rng)
    return AuditRelease(tuple(mem.values.tolist()), tuple(non.values.tolist()),
                        float(mem.std.max(initial=0.0)), float(non.std.max(initial=0.0)))
