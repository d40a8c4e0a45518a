"""Distributed DP: each site adds a share of the DP-SGD noise; the secure sum carries it all.

Under ``privacy.mode = "distributed"`` the server sees only the SecAgg+ sum of the sites'
updates, and a round is aggregated with at least ``m = strategy.min-round-nodes`` sites
(fewer, and the sites do not unmask it). A site's round is one DP-SGD step (DP-FedSGD):
a Poisson batch at the plan's rate q, each per-sample gradient clipped to norm C, Gaussian
noise of standard deviation σ_local·C with σ_local = σ_eff/√m, plain SGD. Every site
divides by the same public batch size B (``train.batch-size``), so its update is
``-lr/B · (Σ clipped gradients + N(0, σ_local² C² I))``, linear in its noisy gradient, and
the sum of m' ≥ m such updates carries ``N(0, m' σ_local² C² I)``: at least σ_eff·C on a
sum to which one patient contributes at most C. Each site thus keeps two histories:

* the **binding** one, at σ_eff: the guarantee against a coordinator that follows the
  protocol and sees only sums. It is the run's ``epsilon``, the ledger's ``spend``, and
  what ``privacy.target-epsilon`` and the lifetime limits bound;
* the **unconditional** one, at σ_local: what one site's own noise guarantees even if a
  malicious coordinator unmasks its update alone (e.g. by lying about dropouts). It is
  ``epsilon-local`` in the train reply and ``epsilon_local`` in the ledger entry, and the
  site's node config may cap it (``max-local-epsilon``).

Releases outside the secure sum (the noised feature moments, the audit's histogram) carry
their own full noise and appear unchanged in both histories.
"""

from __future__ import annotations

import math
from typing import Any

from medfl.config import RunConfig
from medfl.privacy.dp import DPPlan, History, epsilon_from_history

DISTRIBUTED = "distributed"


def is_distributed(cfg: RunConfig) -> bool:
    """Whether the run adds DP-SGD noise in shares (``privacy.mode = "distributed"``)."""
    return cfg.privacy.enabled and cfg.privacy.mode == DISTRIBUTED


def noise_share(min_sites: int) -> float:
    """The share 1/√m of σ_eff a site adds when at least ``min_sites`` sites' noise is in
    every aggregated sum (m independent Gaussians of σ_eff/√m sum to one of σ_eff)."""
    if min_sites < 1:
        raise ValueError(f"min_sites must be at least 1, got {min_sites}")
    return 1.0 / math.sqrt(min_sites)


def run_share(cfg: RunConfig) -> float:
    """This run's noise share: 1/√``strategy.min-round-nodes`` in distributed mode, else 1."""
    return noise_share(cfg.strategy.min_round_nodes) if is_distributed(cfg) else 1.0


def local_sigma(plan: DPPlan, share: float) -> float:
    """The noise multiplier a site adds: σ_local = share · σ_eff."""
    return plan.noise_multiplier * share


def local_history(history: History, plan: DPPlan, share: float) -> History:
    """``history`` as one site's own noise protects it: every DP-SGD entry (the plan's σ
    and rate) at σ_local, every other release unchanged. (A release that happens to share
    σ and rate with DP-SGD is scaled too, which only overstates the unconditional ε.)"""
    sgd = (plan.noise_multiplier, plan.sample_rate)
    return [((s * share if (s, q) == sgd else s), q, n) for s, q, n in history]


def local_epsilon(history: History, plan: DPPlan, share: float) -> float:
    """The unconditional ε of ``history`` (the binding one) at the plan's δ."""
    return epsilon_from_history(local_history(history, plan, share), delta=plan.delta,
                                accountant=plan.accountant)


def planned_local_epsilon(plan: DPPlan, share: float, *, after: History) -> float:
    """The whole run's unconditional ε as planned: the plan's prior releases, every round's
    steps at σ_local, and ``after`` (the releases planned after training)."""
    run = [*plan.prior, (local_sigma(plan, share), plan.sample_rate,
                         plan.steps_per_round * plan.rounds), *after]
    return epsilon_from_history(run, delta=plan.delta, accountant=plan.accountant)


def ledger_fields(plan: DPPlan, share: float, *, spend: History,
                  history: History) -> dict[str, Any]:
    """A distributed round's extra ledger fields: its noise share, its spend at σ_local and
    the run's ε at σ_local after it (``epsilon_local``, the unconditional guarantee); the
    entry's own ``spend`` and ``epsilon_run`` are the binding ones, at σ_eff."""
    return {"noise_share": float(share),
            "spend_local": [[float(s), float(q), int(n)]
                            for s, q, n in local_history(spend, plan, share)],
            "epsilon_local": local_epsilon(history, plan, share)}


def assumption(min_sites: int) -> str:
    """The binding guarantee's assumption, in one sentence (``summary.json``)."""
    return (f"the coordinator follows SecAgg+ and at least {min_sites} sites' noise is in "
            f"every aggregated sum; with fewer than {min_sites} sites the round is not "
            "unmasked")
