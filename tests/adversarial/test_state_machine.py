"""A hostile coordinator as a Hypothesis state machine (issue 18, "An adversarial suite").

Random sequences of messages (train, evaluate and the three queries), weights (random,
extreme, non-finite, crafted), run configs (ε, δ, k, threshold, personal epochs, scaling,
audit, stats noise, DP on or off), server-chosen run keys, run ids and concurrent runs
(threads sharing the site dir, possibly one run key) go to ONE deployed site, through the
real ClientApp (:mod:`adversarial.harness`). After every step:

(a) the ledger's lifetime ε, at the site's own δ, is at least the composition of every DP
    release that left the site, composed here with Opacus' RDP accountant directly from
    what the replies carried (noise multiplier, sample rate) and the steps one round
    takes (local epochs × ⌈n_train / batch⌉, Opacus' Poisson loader); a release outside
    DP (exact moments, the audit, personalised evaluation, site scaling, training without
    DP, a training failure the server sees) has ε = ∞ and must not leave at all;
(b) that lifetime ε is never above the site's lifetime limit;
(c) no reply carries an exact count under the site's k (every count key of DESIGN.md's
    egress contract; the test-set releases carry only noisy sums);
(d) every train release has its own ledger entry.

The composition is the test's own: it never reads the site's accountant state.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    multiple,
    rule,
)
from opacus.accountants import RDPAccountant

from adversarial.harness import (
    MESSAGE_TYPES,
    WEIGHT_KINDS,
    Reply,
    SiteUnderAttack,
    deployed_node_config,
    model_weights,
    public_scaler,
    run_config,
)
from medfl.errors import AttemptFailed
from medfl.site.policy import SitePolicy


def ledger_view(site_dir: Path, site: str, delta: float) -> tuple[float, int]:
    """The ONE place this test reads the site's ledger: (lifetime ε at ``delta`` composed
    with the RDP accountant, number of entries that record a release, i.e. every entry
    but a refusal). Another change is reworking the ledger's internals: adapt only here."""
    from medfl.privacy.ledger import Ledger

    ledger = Ledger.open(site_dir, site)
    releases = sum(1 for e in ledger.entries if e.get("status") != "refused")
    return ledger.lifetime_epsilon(delta=delta, accountant="rdp"), releases


#: Keys whose values count patients exactly, from DESIGN.md's egress contract and the wire
#: types (medfl/wire.py users): each must be >= k or the suppression sentinel when it
#: leaves. The test-set releases (evaluate, report) hold only noisy sums, no such count.
COUNT_KEYS = ("num-examples", "count", "members", "non-members")
#: The wire's suppression sentinel (DESIGN.md: a suppressed count is sent as -1).
SUPPRESSED = -1.0
#: Error codes of a refusal decided before any row is read (medfl.federation.client):
#: ConfigError, DataError, PrivacyBudgetExceeded. Any other failure of a message that
#: reads training rows tells the server something about them, outside DP.
REFUSALS = (1001, 1002, 1003)
#: The deployed site under attack: deploy/start-site.sh's example site, or the smallest
#: hospital (its test set holds a handful of negative patients: counts near k).
SITES = ("cleveland", "switzerland")


def counts_under_k(metrics: dict[str, Any], k: int) -> list[str]:
    """The count keys in ``metrics`` holding a value under ``k`` (not the sentinel)."""
    bad = []
    for key in COUNT_KEYS:
        value = metrics.get(key)
        values = value if isinstance(value, list) else [] if value is None else [value]
        if any(v != SUPPRESSED and not v >= k for v in values):
            bad.append(key)
    return bad


def compose(releases: list[tuple[float, float, int]], delta: float) -> float:
    """ε of ``releases`` (noise multiplier, sample rate, steps) composed by Opacus' RDP
    accountant at ``delta``."""
    if not releases:
        return 0.0
    accountant = RDPAccountant()
    accountant.history = list(releases)
    return float(accountant.get_epsilon(delta=delta))


class Spend:
    """What left the site, as this test counts it from the replies alone."""

    def __init__(self, n_train: int) -> None:
        self.n_train = n_train
        self.releases: list[tuple[float, float, int]] = []  # DP releases
        self.non_dp: list[str] = []  # releases outside DP (ε = ∞)
        self.entries_due = 0  # releases that each need a ledger entry
        self.seen: set[str] = set()  # train updates already released
        self.lock = threading.Lock()

    def account(self, reply: Reply) -> None:
        """Add what ``reply`` released (thread-safe)."""
        with self.lock:
            self._account(reply)

    def _account(self, r: Reply) -> None:
        cfg = r.run_config
        reads_train_rows = r.kind in ("train", "query.moments", "query.audit") or (
            r.kind == "evaluate" and int(cfg["evaluation.personal-epochs"]) > 0)
        if not r.ok:
            # A failure after the spend was reserved answers one fixed text (AttemptFailed):
            # it is spent in the ledger and tells the server nothing about the rows.
            fixed = r.error is not None and AttemptFailed.MESSAGE in r.error
            if reads_train_rows and r.error_code not in REFUSALS and not fixed:
                self.non_dp.append(f"{r.kind} failed after reading training rows "
                                   f"(code {r.error_code}): the server learns it failed")
            return
        if cfg["preprocessing.scaling"] == "site" and r.kind != "query.moments":
            self.non_dp.append(f"{r.kind} under preprocessing.scaling=site (a standardiser "
                               "from the training rows, outside DP)")
        if r.kind == "train":
            self._train(r)
        elif r.kind == "query.moments":
            sigma = float(cfg["preprocessing.stats-noise-multiplier"])
            if sigma > 0 and cfg["privacy.enabled"]:
                self.releases.append((sigma, 1.0, 1))
                self.entries_due += 1
            else:
                self.non_dp.append("exact feature moments")
        elif r.kind == "query.audit":
            self.non_dp.append("membership audit on the training rows")
        elif r.kind == "evaluate" and int(cfg["evaluation.personal-epochs"]) > 0:
            self.non_dp.append("personalised evaluation (fine-tuned without DP)")

    def _train(self, r: Reply) -> None:
        assert r.metrics is not None and r.arrays_digest is not None
        if r.arrays_digest in self.seen:
            return  # the same update sent again: nothing new left the site
        self.seen.add(r.arrays_digest)
        self.entries_due += 1
        cfg = r.run_config
        if not cfg["privacy.enabled"]:
            self.non_dp.append("a training round without DP")
            return
        steps = int(cfg["train.local-epochs"]) * math.ceil(
            self.n_train / int(cfg["train.batch-size"]))
        self.releases.append((float(r.metrics["noise-multiplier"]),
                              float(r.metrics["sample-rate"]), steps))


# --- what a hostile coordinator chooses ------------------------------------------------

#: A run a deployed site accepts (δ under 1/(10 n), no audit, no personalised evaluation,
#: noised moments), still with hostile choices inside what it accepts (thresholds).
accepted_runs = st.fixed_dictionaries({
    "privacy.target-epsilon": st.sampled_from([3.0, 1.0]),
    "privacy.k-threshold": st.sampled_from([10, 20]),
    "evaluation.threshold": st.sampled_from([0.5, 1e-9, 1 - 1e-9]),
    "preprocessing.scaling": st.sampled_from(["none", "federated"]),
    "preprocessing.stats-noise-multiplier": st.sampled_from([5.0, 0.5]),
    "num-server-rounds": st.sampled_from([3, 1]),
    "train.batch-size": st.sampled_from([64, 256]),
})
#: What a hostile coordinator asks beyond that: each a key the site's policy bounds.
HOSTILE = [("privacy.target-epsilon", 8.0), ("privacy.target-delta", 1e-3),
           ("privacy.target-delta", 0.5), ("privacy.k-threshold", 1),
           ("privacy.enabled", False), ("privacy.audit", True),
           ("evaluation.personal-epochs", 1), ("preprocessing.scaling", "site"),
           ("preprocessing.stats-noise-multiplier", 0.0)]
#: An accepted run with up to two hostile overrides (often none, so most steps reach the
#: site's rows; Hypothesis shrinks towards none).
run_configs = st.builds(lambda base, hostile: run_config(**{**base, **dict(hostile)}),
                        accepted_runs, st.lists(st.sampled_from(HOSTILE), max_size=2))

weight_choices = st.tuples(st.sampled_from(WEIGHT_KINDS), st.integers(0, 3),
                           st.sampled_from([1.0, -5.0, 50.0]))

#: A message's ConfigRecord: its round, maybe a server-chosen run key and FedProx's mu,
#: and a standardiser (public, crafted, or none: ``scaling=federated`` then refuses).
message_configs = st.fixed_dictionaries(
    {"server-round": st.sampled_from([1, 2, 3]),
     "scaler": st.sampled_from([(0.0, 1.0), (0.0, 1.0), (100.0, 1e-6), None])},
    optional={"run-key": st.sampled_from([1, 2, 99]),
              "proximal-mu": st.sampled_from([0.0, 0.5])},
).map(lambda c: {**{k: v for k, v in c.items() if k != "scaler"},
                 **(public_scaler(mean=c["scaler"][0], std=c["scaler"][1])
                    if c["scaler"] is not None else {})})


class HostileCoordinator(RuleBasedStateMachine):
    """Any sequence of messages to one deployed site; the invariants after each step."""

    runs = Bundle("runs")

    @initialize(target=runs, site=st.sampled_from(SITES),
                lifetime=st.sampled_from([10.0, 4.0]), cfg=run_configs)
    def deploy(self, site: str, lifetime: float, cfg: dict[str, Any]) -> int:
        """One site as deploy/start-site.sh starts it, with a fresh site dir."""
        from medfl.data.heart import load_heart_site

        self.site_dir = Path(tempfile.mkdtemp(prefix="medfl-adversarial-"))
        node = deployed_node_config(self.site_dir, site=site, lifetime_epsilon=lifetime)
        self.site, self.name, self.limit = SiteUnderAttack(node), site, lifetime
        n_train = load_heart_site(site).n_train
        policy = SitePolicy.from_node_config(node)
        self.k, self.delta = policy.min_k, policy.delta_for(n_train)
        self.spend = Spend(n_train)
        self.configs: dict[int, dict[str, Any]] = {}
        return self._new_run(cfg)

    def teardown(self) -> None:
        """Remove the site dir."""
        if hasattr(self, "site_dir"):
            shutil.rmtree(self.site_dir, ignore_errors=True)

    def _new_run(self, cfg: dict[str, Any]) -> int:
        run_id = len(self.configs) + 1  # small ids: they may equal a server-chosen run key
        self.configs[run_id] = cfg
        return run_id

    def _send(self, run_id: int, kind: str, weights: tuple[str, int, float],
              config: dict[str, Any]) -> Reply:
        cfg = self.configs[run_id]
        arrays = model_weights(cfg, weights[0], seed=weights[1], scale=weights[2])
        reply = self.site.send(kind, run_id=run_id, run_config=cfg, config=config,
                               weights=None if kind == "query.moments" else arrays)
        self.spend.account(reply)
        return reply

    def _check_counts(self, replies: list[Reply]) -> None:
        for reply in replies:
            bad = counts_under_k(reply.metrics or {}, self.k)
            assert not bad, (f"(c) a {reply.kind} reply carries counts under the site's "
                             f"k={self.k}: {bad}")

    @rule(target=runs, cfg=run_configs)
    def start_run(self, cfg: dict[str, Any]) -> int:
        """A new run (a new Flower run id) with its own run config."""
        return self._new_run(cfg)

    @rule(run=runs, kind=st.sampled_from(MESSAGE_TYPES), weights=weight_choices,
          config=message_configs)
    def send(self, run: int, kind: str, weights: tuple[str, int, float],
             config: dict[str, Any]) -> None:
        """One message of any type, any weights and any message config into a run."""
        self._check_counts([self._send(run, kind, weights, config)])

    @rule(target=runs, cfg=run_configs, n=st.integers(2, 4),
          run_key=st.one_of(st.none(), st.sampled_from([1, 2, 99])),
          kinds=st.lists(st.sampled_from(["train", "train", "query.moments"]),
                         min_size=4, max_size=4),
          weights=weight_choices, config=message_configs)
    def concurrent_runs(self, cfg: dict[str, Any], n: int, run_key: int | None,
                        kinds: list[str], weights: tuple[str, int, float],
                        config: dict[str, Any]) -> Any:
        """``n`` new runs at once (threads sharing the site dir), all with the server's
        ``run_key`` when one is given (else each its own run id)."""
        run_ids = [self._new_run(cfg) for _ in range(n)]
        config = {k: v for k, v in config.items() if k != "run-key"}
        if run_key is not None:
            config["run-key"] = run_key
        with ThreadPoolExecutor(max_workers=n) as pool:  # re-raises a thread's exception
            replies = list(pool.map(lambda rk: self._send(rk[0], rk[1], weights, config),
                                    zip(run_ids, kinds[:n], strict=True)))
        self._check_counts(replies)
        return multiple(*run_ids)

    @invariant()
    def the_ledger_covers_every_release(self) -> None:
        """(a), (b), (d) after every step."""
        if not hasattr(self, "spend"):
            return
        lifetime, entries = ledger_view(self.site_dir, self.name, self.delta)
        spend = self.spend
        assert not spend.non_dp or lifetime == math.inf, (
            f"(a) releases outside DP left the site: {sorted(set(spend.non_dp))}")
        composed = compose(spend.releases, self.delta)
        assert lifetime >= composed * (1 - 1e-6), (
            f"(a) ledger lifetime ε={lifetime:.4f} at the site's δ={self.delta:.2e} is below "
            f"the composition of the {len(spend.releases)} DP releases that left: "
            f"ε={composed:.4f}")
        assert lifetime <= self.limit, (
            f"(b) ledger lifetime ε={lifetime:.4f} at the site's δ={self.delta:.2e} is above "
            f"the site's lifetime limit {self.limit}")
        assert entries >= spend.entries_due, (
            f"(d) {spend.entries_due} releases left but the ledger records {entries}")


#: A failing run stops at the first falsifying sequence (at most 10 steps, printed in
#: full): shrinking replays seconds-long steps for minutes, and races replay flakily.
#: ``MEDFL_SHRINK=1`` shrinks it too (a few minutes).
PHASES = tuple(Phase) if os.environ.get("MEDFL_SHRINK") == "1" else (
    Phase.explicit, Phase.reuse, Phase.generate)

HostileCoordinator.TestCase.settings = settings(
    max_examples=10, stateful_step_count=10, deadline=None, phases=PHASES,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
TestHostileCoordinator = HostileCoordinator.TestCase
