"""One hospital, opened once per message: who it is, the run config as it applies it, its
data and its privacy accountant. The Flower adapter opens a :class:`Site` from plain values
and calls one method per message; nothing here knows about Flower.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import torch

from medfl import tasks
from medfl.config import RunConfig, parse_run_config
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.errors import ConfigError
from medfl.evaluation.histograms import N_BINS
from medfl.evaluation.release import SEG_SUMS, ReportStats
from medfl.evaluation.stats import MONITOR_SUMS
from medfl.privacy.audit import AuditRelease, audit_release
from medfl.privacy.mechanisms import AUDIT, MONITOR, REPORT
from medfl.site import evaluation, report
from medfl.site.accountant import SiteAccountant
from medfl.site.identity import (
    enforce_site_policy,
    load_node_site,
    resolve_site,
    round_seed,
    site_config,
    site_state_dir,
)
from medfl.site.memory import NodeMemory
from medfl.site.metrics import moments_to_metrics
from medfl.site.moments import feature_stats, moments_rng, site_scaler, training_config
from medfl.site.policy import SitePolicy
from medfl.site.releases import (
    answer_once,
    answer_round_once,
    exact_moments,
    log_release,
    refuse_unless_allowed,
)
from medfl.site.training import FitResult, train_round
from medfl.wire import ReplyBounds

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelRequest:
    """What a message carrying the global model asks: the model (with this site's own
    FedBN entries already in), the standardiser the server sent (federated scaling), and
    the round's settings (``server-round``, FedProx's ``proximal-mu``, ``run-name``)."""

    weights: dict[str, torch.Tensor]
    scaler: Standardizer | None = None
    server_round: int = 0
    proximal_mu: float = 0.0
    run_name: str = ""


def reply_bounds(cfg: RunConfig, node_config: dict[str, Any]) -> ReplyBounds:
    """The sizes the egress contract checks this site's replies against; ``k`` is the
    larger of the run's and the site's own ``min-k``."""
    task = tasks.task_for(cfg)
    n_cells = len(task.cells())
    seg = task.segmentation
    explain = 0 if seg else (len(task.feature_spec().feature_names) if cfg.is_tabular
                             else report.SALIENCY_GRID ** 2)
    return ReplyBounds(
        k=max(cfg.privacy.k_threshold, SitePolicy.from_node_config(node_config).min_k),
        n_numeric=len(task.feature_spec().moment_idx) if cfg.is_tabular else 0,
        n_cells=n_cells, n_explain=explain,
        n_hist=0 if seg else n_cells * 2 * N_BINS,
        n_sums=n_cells * len(SEG_SUMS) if seg else 0, n_seg=len(SEG_SUMS) if seg else 0,
        n_monitor_hist=0 if seg else 2 * N_BINS, n_monitor_sums=len(MONITOR_SUMS) if seg else 0,
        exact=cfg.privacy.test_epsilon == 0,
    )


class Site:
    """This node's site for one message (open with :meth:`open`)."""

    def __init__(self, config: RunConfig, node_config: dict[str, Any], *, name: str,
                 run_id: int, run_key: int, memory: NodeMemory,
                 policy: SitePolicy | None = None) -> None:
        self.config, self.node_config, self.name = config, node_config, name
        self.run_id, self.run_key, self.memory = run_id, run_key, memory
        self.policy = policy or SitePolicy.from_node_config(node_config)

    @classmethod
    def open(cls, run_config: dict[str, Any], node_config: dict[str, Any], *, run_id: int,
             run_key: int, memory: NodeMemory) -> Site:
        """Parse the run config once, apply it as this site does, resolve the site's name
        and refuse a run weaker than the site's own policy (``ConfigError``). A deployed
        node whose node config states no policy is refused first, before anything is read.

        ``run_key`` is the run's identity at the site (the server's ``run-key``, kept when
        a run is resumed, else ``run_id``, Flower's run id).
        """
        SitePolicy.from_node_config(node_config)
        cfg = site_config(parse_run_config(run_config), node_config)
        name = resolve_site(cfg, node_config)
        policy = enforce_site_policy(cfg, node_config)
        return cls(cfg, node_config, name=name, run_id=run_id, run_key=run_key, memory=memory,
                   policy=policy)

    @cached_property
    def data(self) -> SiteData:
        """This site's data, loaded on first use."""
        return load_node_site(self.config, self.name, self.node_config)

    @cached_property
    def accountant(self) -> SiteAccountant:
        """This run's privacy accountant, opened on first use."""
        return SiteAccountant.open(self.config, site=self.name, node_config=self.node_config,
                                   run_key=self.run_key, memory=self.memory)

    def scaler(self, received: Standardizer | None) -> Standardizer:
        """The standardiser this site applies (see :func:`site_scaler`); site-local
        scaling only where the site's policy allows it."""
        if self.config.is_tabular and self.config.preprocessing.scaling == "site":
            refuse_unless_allowed(self.policy, "allow_site_scaling",
                                  "preprocessing.scaling='site'")
            log_release(self.name, "allow_site_scaling")
        return site_scaler(self.config, self.data, received)

    def reply_bounds(self) -> ReplyBounds:
        """The sizes the egress contract checks this site's replies against."""
        return reply_bounds(self.config, self.node_config)

    # --- one method per message ----------------------------------------------------------

    def moments(self) -> dict[str, Any]:
        """This site's clipped (optionally noised) feature moments, in wire form, once per
        run; a noised release is reserved in the ledger (a Gaussian mechanism on the whole
        vector) before any row is read, an exact one is made only where the site's policy
        allows it."""
        if exact_moments(self.config):
            refuse_unless_allowed(self.policy, "allow_exact_moments",
                                  "a feature-moments query without accounted noise")
        answer_once(self.memory, "moments")
        if exact_moments(self.config):
            log_release(self.name, "allow_exact_moments")
        else:
            self.accountant.release_moments(self.data.n_train)
        moments = feature_stats(self.config, self.data, rng=moments_rng(self.config, self.name))
        return moments_to_metrics(moments)

    def train(self, request: ModelRequest) -> FitResult:
        """One ledger-checked DP-SGD round (see :func:`train_round`)."""
        scaler = self.scaler(request.scaler)
        result = train_round(
            training_config(self.config, scaler), self.data, self.accountant,
            server_round=request.server_round, weights=request.weights, scaler=scaler,
            seed=round_seed(self.config, self.name, request.server_round),
            proximal_mu=request.proximal_mu)
        logger.info("site %s round %d: trained, epsilon %.3f", self.name,
                    request.server_round, result.metrics.epsilon)
        return result

    def evaluate(self, request: ModelRequest) -> dict[str, Any]:
        """The monitoring release's metrics (see :func:`evaluation.evaluation_metrics`):
        only at the rounds the run's test-release plan names, once per round, its σ
        reserved in the ledger before any test row is read."""
        r = request.server_round
        planned = self.accountant.test_plan().monitor_rounds
        if r not in planned:
            raise ConfigError(f"an evaluate request for server-round={r}: this run's "
                              f"monitoring rounds are {list(planned)} (evaluation."
                              "monitor-every and the last round); other rounds are not "
                              "evaluated")
        answer_round_once(self.memory, "evaluate", server_round=r,
                          rounds=self.config.num_server_rounds)
        if self.config.evaluation.personal_epochs > 0:
            refuse_unless_allowed(self.policy, "allow_personal_eval",
                                  "evaluation.personal-epochs > 0")
            log_release(self.name, "allow_personal_eval")
        data = self.data
        sigma = self.accountant.reserve_test(MONITOR, server_round=r, n_test=data.n_test)
        scaler = self.scaler(request.scaler)
        return evaluation.evaluation_metrics(
            training_config(self.config, scaler), data, weights=request.weights, scaler=scaler,
            seed=round_seed(self.config, self.name, r), sigma=sigma,
            rng=evaluation.release_rng(self.config, self.name, MONITOR, server_round=r),
            test_epsilon=self.accountant.test_spent())

    def audit(self, request: ModelRequest) -> AuditRelease:
        """Membership-inference audit of the global model on this site's own data, once
        per run and only when the run asks for it: the members' and non-members' loss
        histograms, each reserved in its budget (training rows, test rows) before any row
        is read (:mod:`medfl.privacy.audit`)."""
        if not self.config.privacy.audit:
            raise ConfigError("an audit query in a run whose privacy.audit is false; this "
                              "site answers the audit only when the run asks for it")
        refuse_unless_allowed(self.policy, "allow_audit", "an audit query")
        answer_once(self.memory, "audit")
        log_release(self.name, "allow_audit")
        data = self.data
        member_sigma = self.accountant.release_audit(data.n_train)
        sigma = self.accountant.reserve_test(AUDIT, server_round=0, n_test=data.n_test)
        members, non_members = evaluation.audit_losses(
            self.config, data, weights=request.weights, scaler=self.scaler(request.scaler))
        rng = evaluation.release_rng(self.config, self.name, AUDIT, server_round=0)
        return audit_release(members, non_members, member_sigma=member_sigma,
                             non_member_sigma=sigma, rng=rng)

    def report(self, request: ModelRequest) -> ReportStats:
        """The final model's report release, answered once per run, its σ reserved in
        the ledger before any test row is read; the site-local report goes to
        ``<state dir>/reports/<run>``."""
        data = self.data
        answer_once(self.memory, "report")
        sigma = self.accountant.reserve_test(REPORT, server_round=0, n_test=data.n_test)
        local = report.local_dir(site_state_dir(self.config, self.name, self.node_config),
                                 request.run_name, run_id=self.run_id)
        return report.report(
            self.config, data, weights=request.weights, local_dir=local,
            scaler=self.scaler(request.scaler), sigma=sigma,
            rng=evaluation.release_rng(self.config, self.name, REPORT, server_round=0),
            test_epsilon=self.accountant.test_spent())
