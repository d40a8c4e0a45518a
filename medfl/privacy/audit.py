"""Empirical privacy audit: a membership-inference attack on the global model.

Run at each site on its own data: the site's training rows are the members, its held-out
test rows the non-members. The loss-threshold attack (Yeom et al., 2018) guesses "member"
when the model's loss on a record is low; its ROC AUC over members vs non-members is 0.5
when the model reveals nothing about membership. Only the attack's aggregate figures
leave the site, and only when both groups have at least ``k`` patients.

This is a lower bound on leakage (a weak, cheap attacker), not a proof of privacy: DP's ε
bounds every attacker, the audit shows what one realistic attacker achieves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve

from medfl.evaluation.stats import SUPPRESSED
from medfl.wire import WireKeys

LOW_FPR = 0.1


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
