"""One entry of a site's privacy ledger (:mod:`medfl.privacy.ledger`): who spends, from
which budget, under which limit.

A site has two budgets in one ledger: ``train`` (every release of its training rows:
DP-SGD rounds, noised feature moments) and ``test`` (every release of its test rows:
monitoring evaluations and the final report). Training and test rows are disjoint
patients, so the budgets compose separately; an entry written before budgets existed is a
training entry.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from medfl.privacy.dp import History

#: the two budgets: releases of the training rows, and of the test rows
TRAIN, TEST = "train", "test"
BUDGETS = (TRAIN, TEST)
#: statuses of a release with no finite ε: training without DP, exact test-set figures
UNBOUNDED = {TRAIN: "no-dp", TEST: "exact"}
#: the setting each budget's lifetime limit comes from, for the refusal's message
LIMIT_KEYS = {TRAIN: "privacy.lifetime-epsilon", TEST: "lifetime-test-epsilon"}


def budget_of(entry: dict[str, Any]) -> str:
    """The budget an entry spends from (``train`` for entries written before the key)."""
    return str(entry.get("budget", TRAIN))


Decide = Callable[[History], tuple[History, float]]
#: extra fields of a spending entry, from its spend and the run's history after it
Annotate = Callable[[History, History], dict[str, Any]]


@dataclass(frozen=True)
class Attempt:
    """Who spends in a ledger entry, and under which limit.

    ``run_tag`` names the run's DP state (its key and settings), so that only an attempt
    that continues that very state continues its history; ``site_delta`` is the δ the
    lifetime ε is composed at; ``delta`` the run's own δ (its ``epsilon_run``);
    ``budget`` the rows it reads (``TRAIN`` or ``TEST``) and ``release`` which test-set
    release it is (``report`` or ``monitor``; empty for training). ``annotate`` adds
    fields to the entry of an attempt that is not refused (distributed DP's unconditional
    ε, :mod:`medfl.privacy.distributed`); entries without them verify as before."""

    run_id: int
    run_tag: str
    server_round: int
    status: str
    delta: float
    site_delta: float
    accountant: str
    limit: float
    budget: str = TRAIN
    release: str = ""
    annotate: Annotate | None = field(default=None, compare=False, repr=False)

    def entry(self, status: str, spend: History, history: History,
              epsilon_run: float) -> dict[str, Any]:
        """The entry body (without time and chain) for this attempt."""
        return {
            "run_id": int(self.run_id), "run_tag": self.run_tag,
            "round": int(self.server_round), "status": status,
            "spend": [[float(s), float(q), int(n)] for s, q, n in spend],
            "history": [[float(s), float(q), int(n)] for s, q, n in history],
            "epsilon_run": float(epsilon_run) if math.isfinite(epsilon_run) else None,
            "delta": float(self.delta), "site_delta": float(self.site_delta),
            "accountant": self.accountant,
            "lifetime_limit": float(self.limit) if 0 < self.limit < math.inf else None,
            "budget": self.budget, **({"release": self.release} if self.release else {}),
            **(self.annotate(spend, history) if self.annotate is not None
               and status != "refused" else {}),
        }

