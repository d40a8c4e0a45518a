"""The Gaussian mechanism for every statistic of a site's test rows, and its plan.

A *release* is a vector of sums over patients (histogram counts, bounded Dice sums, a
clipped explanation vector). Each component ``j`` has a public *unit* ``u_j``; divided by
its unit, the vector changes by at most ``sensitivity`` in L2 norm when one patient is
added or removed (for instance: a patient adds 1 to one histogram bin in each of the
``c`` cells it belongs to, so the counts' sensitivity is ``sqrt(c)``; a per-image Dice in
[0, 1] adds at most 1). The mechanism adds ``N(0, (σ · sensitivity · u_j)^2)`` to
component ``j``: the Gaussian mechanism with noise multiplier ``σ`` (noise standard
deviation over L2 sensitivity), exactly what Opacus accounts for one DP-SGD step at
sample rate 1. So every
release is recorded as ``(σ, 1.0, 1)`` in the same accountant history format and composed
by Opacus' accountants (PRV or RDP), never by a hand-written formula.

A run's test-set releases are planned once from public values (:func:`plan_test_releases`):
``privacy.test-epsilon`` split between the final report (``privacy.report-share``) and
the monitoring evaluations (``evaluation.monitor-every``), the split made in zCDP terms
(noise variance inversely proportional to the share) and the σs scaled until the composed
history spends exactly the target ε at the run's δ (Opacus).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from medfl.privacy.dp import History, epsilon_from_history

#: the kinds of test-set release
REPORT, MONITOR, AUDIT = "report", "monitor", "audit"


@dataclass(frozen=True)
class Release:
    """A released vector: its noisy values and each component's noise standard deviation
    (0 for an exact release)."""

    values: np.ndarray
    std: np.ndarray


def gaussian_release(values: np.ndarray, units: np.ndarray | float, *, sensitivity: float,
                     sigma: float, rng: np.random.Generator) -> Release:
    """``values`` plus Gaussian noise of standard deviation ``sigma * sensitivity *
    units`` per component (see the module docstring); ``sigma = 0``: exact.

    ``rng`` must come from :func:`medfl.privacy.dp.dp_seed` (OS entropy unless
    ``privacy.secure-noise`` is off), so that nobody who knows the run can regenerate the
    noise.
    """
    x = np.asarray(values, dtype=np.float64)
    u = np.broadcast_to(np.asarray(units, dtype=np.float64), x.shape)
    if not sensitivity > 0 or np.any(u <= 0) or sigma < 0 or not math.isfinite(sigma):
        raise ValueError(f"a Gaussian release needs sensitivity > 0, units > 0 and a finite "
                         f"sigma >= 0 (got sensitivity={sensitivity}, sigma={sigma})")
    std = sigma * float(sensitivity) * u
    noisy = x + rng.standard_normal(x.shape) * std if sigma > 0 else x.copy()
    return Release(noisy, np.array(std, dtype=np.float64))


@dataclass(frozen=True)
class TestPlan:
    """The noise multipliers of one run's test-set releases at one site."""

    epsilon: float
    delta: float
    accountant: str
    report_sigma: float
    monitor_sigma: float
    monitor_rounds: tuple[int, ...]
    #: the membership audit's non-member histogram (0: no audit, or exact figures)
    audit_sigma: float = 0.0

    @property
    def exact(self) -> bool:
        """Whether the run asked for exact test-set figures (``test-epsilon = 0``)."""
        return self.epsilon == 0

    def sigma(self, release: str) -> float:
        """The noise multiplier of ``release`` (``REPORT``, ``MONITOR`` or ``AUDIT``; 0 for
        each when exact)."""
        return {REPORT: self.report_sigma, MONITOR: self.monitor_sigma,
                AUDIT: self.audit_sigma}[release]

    def spend(self, release: str) -> History:
        """One release's accountant history entry (empty when exact)."""
        return [] if self.exact else [(self.sigma(release), 1.0, 1)]

    def history(self) -> History:
        """Every planned release composed: what the run spends on its test rows."""
        out: History = []
        if self.monitor_rounds and not self.exact:
            out.append((self.monitor_sigma, 1.0, len(self.monitor_rounds)))
        if self.audit_sigma > 0 and not self.exact:
            out.append((self.audit_sigma, 1.0, 1))
        return [*out, *self.spend(REPORT)]


def monitor_rounds(rounds: int, every: int) -> tuple[int, ...]:
    """The rounds with a monitoring evaluation: every ``every``-th and the last (none
    when ``every`` is 0)."""
    if every <= 0 or rounds <= 0:
        return ()
    return tuple(sorted({r for r in range(1, rounds + 1) if r % every == 0} | {rounds}))


def plan_test_releases(*, epsilon: float, delta: float, accountant: str, report_share: float,
                       rounds: tuple[int, ...], audit_sigma: float = 0.0) -> TestPlan:
    """The σs that spend exactly ``epsilon`` at ``delta`` over one report, a monitoring
    release in each of ``rounds`` and, with ``audit_sigma`` > 0, the audit's non-member
    histogram at that fixed σ (see the module docstring); ``epsilon = 0``: exact."""
    if epsilon == 0:
        return TestPlan(0.0, delta, accountant, 0.0, 0.0, tuple(rounds))
    report, monitor = _calibrate(float(epsilon), float(delta), accountant,
                                 float(report_share), len(rounds), float(audit_sigma))
    return TestPlan(float(epsilon), float(delta), accountant, report, monitor, tuple(rounds),
                    float(audit_sigma))


@functools.lru_cache(maxsize=256)
def _calibrate(epsilon: float, delta: float, accountant: str, share: float,
               m: int, audit: float) -> tuple[float, float]:
    """(report σ, monitoring σ) by bisection on a common scale ``s``: report σ =
    ``s / sqrt(share)``, monitoring σ = ``s / sqrt((1 - share) / m)``; the audit's fixed
    release (σ = ``audit``, 0: none) composed with them."""
    if m == 0 or share >= 1:
        share, m = 1.0, 0
    fixed: History = [(audit, 1.0, 1)] if audit > 0 else []

    def sigmas(s: float) -> tuple[float, float]:
        return s / math.sqrt(share), (s / math.sqrt((1 - share) / m) if m else math.inf)

    def spent(s: float) -> float:
        report, monitor = sigmas(s)
        history: History = [(monitor, 1.0, m)] if m else []
        return epsilon_from_history([*fixed, *history, (report, 1.0, 1)], delta=delta,
                                    accountant=accountant)

    if fixed and epsilon_from_history(fixed, delta=delta, accountant=accountant) >= epsilon:
        raise ValueError(f"the audit's release alone spends test-set ε={epsilon} at δ={delta}")

    lo, hi = 1e-3, 1.0
    while spent(hi) > epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e6:
            raise ValueError(f"no noise reaches test-set ε={epsilon} at δ={delta}")
    for _ in range(60):  # the bracket shrinks to well under 0.1% of σ
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if spent(mid) <= epsilon else (mid, hi)
        if hi / lo < 1 + 1e-4:
            break
    return sigmas(hi)
