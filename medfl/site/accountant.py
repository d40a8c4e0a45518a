"""A site's privacy accountant for one run: its DP plan and history, its lifetime ledger,
the replay of its last released update, and where all of that persists.

The accountant history (a list of ``(noise_multiplier, sample_rate, steps)``) is the whole
state of the run's ε. It lives in the node's memory (Flower's ``context.state``, as long as
the SuperNode process) and in a copy in the site's own state folder, so that a restarted
SuperNode, or a resumed run (same ``run-key``), continues the same history instead of
starting a fresh one. The file name and its JSON keys are a stable format: state files
written by earlier versions keep working.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import torch

from medfl.config import RunConfig
from medfl.errors import ConfigError, PrivacyBudgetExceeded
from medfl.io import atomic_write_json
from medfl.privacy import replay as replay_lib
from medfl.privacy.audit import AUDIT_SIGMA
from medfl.privacy.dp import DPPlan, History, epsilon_from_history, extend_history
from medfl.privacy.ledger import TEST, Attempt, Decide, Ledger
from medfl.privacy.mechanisms import (
    AUDIT,
    MONITOR,
    REPORT,
    TestPlan,
    monitor_rounds,
    plan_test_releases,
)
from medfl.site.identity import lifetime_limit, site_state_dir
from medfl.site.memory import NodeMemory, Record
from medfl.site.metrics import TrainMetrics
from medfl.site.policy import SitePolicy

logger = logging.getLogger(__name__)

#: The node-memory key of the run's DP state.
DP_STATE_KEY = "medfl.dp"


def dp_state_path(cfg: RunConfig, site: str, node_config: dict[str, Any], run_key: int) -> Path:
    """The site's copy of a run's DP plan and accountant history (DP parameters only):
    a restarted SuperNode or a resumed run continues from it rather than from zero.

    The name carries the run key and a fingerprint of what the DP plan depends on, so a
    run that reuses a key with other settings (a harness restarting Flower's run ids, a
    server re-sending an old key) never continues another run's accountant."""
    p, t = cfg.privacy, cfg.train
    plan_inputs = (site, cfg.seed, cfg.num_server_rounds, t.local_epochs, t.batch_size,
                   p.enabled, p.target_epsilon, p.target_delta, p.max_grad_norm, p.accountant,
                   cfg.preprocessing.stats_noise_multiplier, cfg.task.value, cfg.model.name,
                   *((p.mode, cfg.strategy.min_round_nodes) if p.mode == "distributed" else ()))
    tag = hashlib.sha256(repr(plan_inputs).encode()).hexdigest()[:12]
    return site_state_dir(cfg, site, node_config) / "dp-state" / f"run-{int(run_key)}-{tag}.json"


def _extend(history: History, spend: History) -> History:
    for sigma, rate, steps in spend:
        history = extend_history(history, sigma, rate, steps)
    return history


def state_record(plan: DPPlan | None, history: History) -> Record:
    """The DP state as a JSON-like record (the node-memory and backup-file format)."""
    record: Record = {
        "history-sigma": [float(s) for s, _, _ in history],
        "history-rate": [float(q) for _, q, _ in history],
        "history-steps": [int(n) for _, _, n in history],
    }
    if plan is not None:
        record.update({
            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
            "steps-per-round": plan.steps_per_round, "rounds": plan.rounds,
            "max-grad-norm": plan.max_grad_norm, "delta": plan.delta,
            "accountant": plan.accountant, "target-epsilon": plan.target_epsilon,
            "prior-sigma": [float(s) for s, _, _ in plan.prior],
            "prior-rate": [float(q) for _, q, _ in plan.prior],
            "prior-steps": [int(n) for _, _, n in plan.prior],
        })
    return record


def state_from_record(r: Record) -> tuple[DPPlan | None, History]:
    """:func:`state_record`'s form back as the plan (``None`` before planning) and history."""
    history = list(zip(map(float, r["history-sigma"]), map(float, r["history-rate"]),
                       map(int, r["history-steps"]), strict=True))
    if "noise-multiplier" not in r:
        return None, history
    prior = tuple(zip(map(float, r["prior-sigma"]), map(float, r["prior-rate"]),
                      map(int, r["prior-steps"]), strict=True))
    plan = DPPlan(float(r["noise-multiplier"]), float(r["sample-rate"]),
                  int(r["steps-per-round"]), int(r["rounds"]), float(r["max-grad-norm"]),
                  float(r["delta"]), str(r["accountant"]), float(r["target-epsilon"]), prior)
    return plan, history


class SiteAccountant:
    """One run's privacy state at one site, and the site's lifetime ledger.

    Open with :meth:`open` (loads the state and verifies the ledger). :meth:`reserve`
    checks and records an attempt in the ledger, under the site's lock, before it reads
    any training row; :meth:`save` persists the plan and history; ``replayed`` / ``keep``
    answer a repeated round from the kept update at no privacy cost
    (:mod:`medfl.privacy.replay`). The lifetime ε is composed at the site's δ
    (:meth:`site_delta`), never at the δ a run asks for. The test rows have their own
    budget in the same ledger: :meth:`reserve_test` before each test-set release,
    :meth:`test_spent` for the run's test ε.
    """

    def __init__(self, cfg: RunConfig, *, ledger: Ledger, run_key: int, limit: float,
                 path: Path, memory: NodeMemory, policy: SitePolicy | None = None) -> None:
        self.cfg, self.ledger, self.run_key, self.limit = cfg, ledger, int(run_key), limit
        self.path, self.memory = path, memory
        self.policy = policy or SitePolicy.from_node_config({})
        #: the test rows' lifetime ε limit (0: none), see :meth:`SitePolicy.test_limit`
        self.test_limit = self.policy.test_limit(cfg.privacy.lifetime_epsilon)
        self.plan: DPPlan | None = None
        self.history: History = []

    @classmethod
    def open(cls, cfg: RunConfig, *, site: str, node_config: dict[str, Any], run_key: int,
             memory: NodeMemory) -> SiteAccountant:
        """This site's accountant for run ``run_key``, its state loaded (see :meth:`load`)."""
        accountant = cls(cfg, ledger=Ledger.open(site_state_dir(cfg, site, node_config), site),
                         run_key=run_key, limit=lifetime_limit(cfg, node_config),
                         path=dp_state_path(cfg, site, node_config, run_key), memory=memory,
                         policy=SitePolicy.from_node_config(node_config))
        accountant.load()
        return accountant

    # --- the run's state -----------------------------------------------------------------

    def load(self) -> None:
        """The plan and history from node memory, else from the backup file, else none."""
        record = self.memory.get(DP_STATE_KEY)
        if record is None and self.path.is_file():
            record = json.loads(self.path.read_text())
        self.plan, self.history = (None, []) if record is None else state_from_record(record)

    def save(self) -> None:
        """Keep the plan and history in node memory and in the backup file."""
        record = state_record(self.plan, self.history)
        self.memory.put(DP_STATE_KEY, record)
        atomic_write_json(self.path, record)

    def spent(self, history: History | None = None) -> float:
        """The run's ε after ``history`` (default: the current one) at the run's δ."""
        p = self.cfg.privacy
        return epsilon_from_history(self.history if history is None else history,
                                    delta=p.target_delta, accountant=p.accountant)

    # --- δ and the lifetime ledger -------------------------------------------------------

    def site_delta(self, n_train: int) -> float:
        """The δ this site accepts and composes its ledger at: the policy's
        (``max-delta``, else 1/(10·n)) when deployed or when ``max-delta`` is set; in a
        simulation without it, the run's own δ (the researcher runs every site)."""
        if self.policy.deployed or self.policy.max_delta is not None:
            return self.policy.delta_for(n_train)
        return self.cfg.privacy.target_delta

    def require_delta(self, n_train: int) -> None:
        """Refuse (``ConfigError``) a DP run whose δ exceeds the site's, before any row
        is read: its ε would be meaningless at the δ the site answers for."""
        p, site_delta = self.cfg.privacy, self.site_delta(n_train)
        if p.enabled and p.target_delta > site_delta:
            raise ConfigError(f"privacy.target-delta={p.target_delta:g} exceeds this site's "
                              f"δ={site_delta:g} (node-config max-delta, or 1/(10·n) for its "
                              "n training rows); ask for a δ at most that")

    def attempt(self, status: str, *, server_round: int, n_train: int) -> Attempt:
        """The ledger's view of one attempt of this run."""
        p = self.cfg.privacy
        return Attempt(run_id=self.run_key, run_tag=self.path.stem, server_round=server_round,
                       status=status, delta=p.target_delta, site_delta=self.site_delta(n_train),
                       accountant=p.accountant, limit=self.limit)

    def reserve(self, attempt: Attempt, decide: Decide) -> History:
        """Reserve one attempt in the ledger (:meth:`Ledger.reserve`: under the site's
        lock, checked against the lifetime limit at the site's δ, kept whatever happens
        next) and save the run's history after it, which is returned."""
        self.history = self.ledger.reserve(attempt, decide, fallback=self.history)
        self.save()
        return self.history

    def refuse(self, attempt: Attempt) -> None:
        """Record a refusal that spent nothing."""
        self.ledger.record(attempt, status="refused", history=self.history,
                           epsilon_run=self.spent() if self.cfg.privacy.enabled else 0.0)

    def lifetime_epsilon(self, n_train: int) -> float:
        """Every release in the ledger composed, at the site's δ."""
        return self.ledger.lifetime_epsilon(delta=self.site_delta(n_train),
                                            accountant=self.cfg.privacy.accountant)

    def release_moments(self, n_train: int) -> None:
        """Reserve the feature moments' Gaussian release (:meth:`_release_train`)."""
        self._release_train(self.cfg.preprocessing.stats_noise_multiplier, n_train,
                            "the feature-moment release",
                            "raise preprocessing.stats-noise-multiplier")

    def release_audit(self, n_train: int) -> float:
        """Reserve the audit's members' histogram (training rows, planned into DP-SGD's
        calibration); returns its σ, 0 when the run trains without DP (its training rows
        have no finite ε to protect)."""
        if not self.cfg.privacy.enabled:
            return 0.0
        self._release_train(AUDIT_SIGMA, n_train, "the audit's members' histogram",
                            "turn privacy.audit off or raise privacy.target-epsilon")
        return AUDIT_SIGMA

    def _release_train(self, sigma: float, n_train: int, what: str, fix: str) -> None:
        """Reserve one Gaussian release of the training rows at ``sigma`` (refused past
        the run's target ε or the lifetime limit; else recorded ``released``)."""
        p = self.cfg.privacy
        self.require_delta(n_train)

        def decide(before: History) -> tuple[History, float]:
            eps = self.spent(extend_history(before, sigma, 1.0, 1))
            if eps > p.target_epsilon * (1 + 1e-6):
                raise PrivacyBudgetExceeded(f"{what} would spend ε={eps:.3f} of this run's "
                                            f"target ε={p.target_epsilon}; {fix}")
            return [(sigma, 1.0, 1)], eps

        self.reserve(self.attempt("released", server_round=0, n_train=n_train), decide)

    # --- the test rows' budget ------------------------------------------------------------

    def test_plan(self) -> TestPlan:
        """This run's test-set releases and their noise multipliers (public settings only:
        ``privacy.test-epsilon``, ``report-share``, ``evaluation.monitor-every``)."""
        p = self.cfg.privacy
        return plan_test_releases(
            epsilon=p.test_epsilon, delta=p.target_delta, accountant=p.accountant,
            report_share=p.report_share, audit_sigma=AUDIT_SIGMA if p.audit else 0.0,
            rounds=monitor_rounds(self.cfg.num_server_rounds, self.cfg.evaluation.monitor_every))

    @property
    def test_tag(self) -> str:
        """The ledger's name for this run's test-set releases."""
        return f"{self.path.stem}-test"

    def test_site_delta(self, n_test: int) -> float:
        """The δ this site accepts for its test rows and composes their lifetime ε at:
        :meth:`site_delta` for its ``n_test`` test rows."""
        return self.site_delta(n_test)

    def require_test_delta(self, n_test: int) -> None:
        """Refuse (``ConfigError``) a run whose δ exceeds the site's test δ."""
        delta, site_delta = self.cfg.privacy.target_delta, self.test_site_delta(n_test)
        if delta > site_delta:
            raise ConfigError(f"privacy.target-delta={delta:g} exceeds this site's test-set "
                              f"δ={site_delta:g} (node-config max-delta, or 1/(10·n) for its "
                              "n test rows); ask for a δ at most that")

    def _check_test_request(self, plan: TestPlan, release: str, server_round: int,
                            n_test: int) -> None:
        """Refuse what no ledger state could make valid: an unknown release, monitoring at
        an unplanned round, exact figures the policy forbids, a δ above the site's."""
        if release not in (REPORT, MONITOR, AUDIT) or (release == AUDIT
                                                       and not self.cfg.privacy.audit):
            raise ConfigError(f"test-set release {release!r}: valid are {REPORT!r}, "
                              f"{MONITOR!r} and, when privacy.audit is on, {AUDIT!r}")
        every = self.cfg.evaluation.monitor_every
        if release == MONITOR and server_round not in plan.monitor_rounds:
            raise ConfigError(
                f"a monitoring evaluation at server-round={server_round}: this run monitors "
                + (f"only at rounds {list(plan.monitor_rounds)} (every evaluation.monitor-"
                   f"every={every} and the last)" if plan.monitor_rounds
                   else f"at no round (evaluation.monitor-every={every})"))
        if plan.exact and not self.policy.allow_exact_evaluation:
            raise ConfigError("privacy.test-epsilon=0 asks for exact test-set figures; this "
                              "site would need allow-exact-evaluation=true")
        if not plan.exact:
            self.require_test_delta(n_test)

    def reserve_test(self, release: str, *, server_round: int, n_test: int) -> float:
        """Check and reserve one test-set release (``REPORT``, ``MONITOR``, ``AUDIT``)
        before any test row is read; returns its noise multiplier σ (0: exact).

        Refuses (``ConfigError``) monitoring at an unplanned round, a release already
        reserved in this run, exact figures the policy forbids, a δ above the site's test
        δ; under the ledger's lock (``PrivacyBudgetExceeded``, recorded) one that would
        pass ``privacy.test-epsilon`` or the test rows' lifetime limit (an exact release
        wherever such a limit is in force). Otherwise it is recorded in the test budget
        (``released``, or ``exact`` spending nothing) and stays spent."""
        plan, p = self.test_plan(), self.cfg.privacy
        self._check_test_request(plan, release, server_round, n_test)
        attempt = Attempt(run_id=self.run_key, run_tag=self.test_tag, server_round=server_round,
                          status="exact" if plan.exact else "released", delta=p.target_delta,
                          site_delta=self.test_site_delta(n_test), accountant=p.accountant,
                          limit=self.test_limit, budget=TEST, release=release)

        def decide(before: History) -> tuple[History, float]:
            if self.ledger.released(self.test_tag, release,
                                    None if release != MONITOR else server_round):
                raise ConfigError(f"this site already reserved this run's {release} release"
                                  + ("" if release != MONITOR else f" of round {server_round}")
                                  + "; each test-set release is made once per run")
            if plan.exact:
                if 0 < self.test_limit < math.inf:
                    raise PrivacyBudgetExceeded(
                        "exact test-set figures have no finite ε, and this site has a "
                        f"lifetime limit on its test rows (ε={self.test_limit}: node-config "
                        "lifetime-test-epsilon, or the run's privacy.lifetime-epsilon); ask "
                        "for privacy.test-epsilon above 0")
                return [], math.inf
            spend = plan.spend(release)
            eps = self.spent(_extend(before, spend))
            if eps > p.test_epsilon * (1 + 1e-6):
                raise PrivacyBudgetExceeded(
                    f"this {release} release would bring the run's test-set ε to {eps:.3f}, "
                    f"past privacy.test-epsilon={p.test_epsilon}")
            return spend, eps

        self.ledger.reserve(attempt, decide, fallback=[])
        return plan.sigma(release)

    def test_spent(self) -> float:
        """This run's ε on its test rows so far, from the ledger, at the run's δ with the
        run's accountant (infinite after an exact release)."""
        mine = [e for e in self.ledger.of(TEST) if e.get("run_tag") == self.test_tag]
        if any(e["status"] == "exact" for e in mine):
            return math.inf
        return self.spent(self.ledger.run_history(self.test_tag, []))

    # --- the replay of the last released round -------------------------------------------

    def replayed(self, digest: str) -> tuple[dict[str, torch.Tensor], TrainMetrics] | None:
        """The kept update and metrics when the last released round had ``digest``; the
        plan and history then become those after that round."""
        kept = replay_lib.find(self.path, digest)
        if kept is None:
            return None
        weights, metrics, self.plan, self.history = kept
        return weights, TrainMetrics.from_metrics(metrics)

    def keep(self, digest: str, weights: dict[str, torch.Tensor],
             metrics: TrainMetrics) -> None:
        """Keep this round's released update with the plan and history after it."""
        replay_lib.keep(self.path, digest, weights, metrics.to_metrics(), plan=self.plan,
                        history=self.history)
