"""A site's training round: DP-SGD on its own rows, checked and recorded in its ledger.

:func:`fit` trains the global model locally (Opacus DP-SGD when ``privacy.enabled``);
:func:`train_round` is the round a site actually runs: it answers a repeated request from
the kept update, refuses a round past the run's or the lifetime budget, and records every
round, trained or refused, in the site's ledger.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from opacus.optimizers import DPOptimizer
from torch import nn, optim
from torch.utils.data import DataLoader

from medfl import attack, tasks
from medfl.config import RunConfig
from medfl.data.augment import build_augmentation
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.errors import AttemptFailed, DataError, PrivacyBudgetExceeded
from medfl.models import state_arrays
from medfl.privacy import replay as replay_lib
from medfl.privacy.audit import AUDIT_SIGMA
from medfl.privacy.distributed import (
    is_distributed,
    ledger_fields,
    local_epsilon,
    local_sigma,
    planned_local_epsilon,
    run_share,
)
from medfl.privacy.dp import (
    DPPlan,
    History,
    attach_dp,
    dp_generator,
    dp_seed,
    drop_nonfinite_samples,
    epsilon_from_history,
    extend_history,
    make_dp_compatible,
)
from medfl.privacy.modes import autocast_bf16, choose_grad_sample_mode, probe_batch
from medfl.site.accountant import SiteAccountant
from medfl.site.identity import check_local_epsilon
from medfl.site.metrics import TrainMetrics
from medfl.training import (
    TrainResult,
    claim_gpu_share,
    make_loader,
    make_optimizer,
    memory_format,
    resolve_device,
    train_epochs,
)

logger = logging.getLogger(__name__)


def model_from(cfg: RunConfig, weights: dict[str, torch.Tensor] | None) -> nn.Module:
    """The task's model, with ``weights`` loaded strictly when given."""
    model = tasks.task_for(cfg).build_model()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model


@dataclass(frozen=True)
class FitResult:
    """What a training round produced; ``metrics`` is what may leave the site."""

    weights: dict[str, torch.Tensor]
    metrics: TrainMetrics
    plan: DPPlan | None
    history: History


@dataclass(frozen=True)
class _Setup:
    """A round's model, optimiser and loader before DP is attached."""

    model: nn.Module
    optimizer: optim.Optimizer
    loader: DataLoader[tuple[torch.Tensor, ...]]
    device: torch.device
    noise_seed: int


def _setup(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
           scaler: Standardizer, seed: int) -> _Setup:
    """Seed, build the model (DP-compatible under DP), its optimiser and its loader."""
    p = cfg.privacy
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    claim_gpu_share(device)  # several simulated sites on one GPU: each keeps to its share
    model = model_from(cfg, weights)
    if p.enabled:
        model = make_dp_compatible(model)
    model = model.to(device).to(memory_format=memory_format(cfg.train.channels_last, device))
    optimizer = make_optimizer(model, cfg.train)
    x = scaler.transform(data.x_train)
    # Under DP the batch sampling and the noise come from two independent secret seeds
    # (see dp_seed); seeded mode derives both from the run seed.
    sampling_seed = dp_seed(seed, secure=p.secure_noise) if p.enabled else seed
    noise_seed = dp_seed(seed + 1, secure=p.secure_noise)
    augment = build_augmentation(cfg.train.augment, seed=sampling_seed + 7,
                                 segmentation=tasks.task_for(cfg).segmentation)
    loader = make_loader(x, data.y_train, batch_size=cfg.train.batch_size, shuffle=True,
                         seed=sampling_seed, transform=augment, pin_memory=device.type == "cuda")
    return _Setup(model, optimizer, loader, device, noise_seed)


def planned_releases(cfg: RunConfig) -> History:
    """Releases of training rows planned after training, composed into DP-SGD's
    calibration so that the run's training ε stays within its target: the membership
    audit's members' histogram (:mod:`medfl.privacy.audit`) when the run asks for it."""
    if cfg.privacy.enabled and cfg.privacy.audit:
        return [(AUDIT_SIGMA, 1.0, 1)]
    return []


def plan_round(cfg: RunConfig, data: SiteData, *, plan: DPPlan | None, history: History,
               server_round: int) -> tuple[DPPlan, History, float]:
    """The run's DP plan (made on the first round), the history this round would leave,
    and its ε; ``PrivacyBudgetExceeded`` when that ε passes the run's target."""
    p = cfg.privacy
    if plan is None:
        plan = DPPlan.make(
            n_train=data.n_train, batch_size=cfg.train.batch_size,
            local_epochs=cfg.train.local_epochs, rounds=cfg.num_server_rounds,
            target_epsilon=p.target_epsilon, delta=p.target_delta,
            max_grad_norm=p.max_grad_norm, accountant=p.accountant,
            prior=history, after=planned_releases(cfg), one_step=is_distributed(cfg),
        )
    after = extend_history(history, plan.noise_multiplier, plan.sample_rate,
                           plan.steps_per_round)
    eps_after = epsilon_from_history(after, delta=plan.delta, accountant=plan.accountant)
    if eps_after > plan.target_epsilon:
        spent = epsilon_from_history(history, delta=plan.delta, accountant=plan.accountant)
        raise PrivacyBudgetExceeded(
            f"round {server_round} would raise ε from {spent:.3f} to {eps_after:.3f}, "
            f"past this run's target ε={plan.target_epsilon}"
        )
    return plan, after, eps_after


def _dp_metrics(cfg: RunConfig, plan: DPPlan, history: History, *, epsilon: float,
                num_examples: int) -> TrainMetrics:
    sgd = (plan.noise_multiplier, plan.sample_rate)
    return TrainMetrics(
        num_examples=num_examples, epsilon=epsilon, delta=plan.delta,
        noise_multiplier=plan.noise_multiplier, sample_rate=plan.sample_rate,
        max_grad_norm=plan.max_grad_norm,
        steps=sum(n for s, q, n in history if (s, q) == sgd),
        prior_noise_multipliers=tuple(float(s) for s, q, n in plan.prior),
        epsilon_local=(local_epsilon(history, plan, run_share(cfg)) if is_distributed(cfg)
                       else None))


def _train_dp(cfg: RunConfig, setup: _Setup, *, plan: DPPlan, history: History,
              after: History, proximal_mu: float) -> tuple[nn.Module, History, TrainResult]:
    """Attach Opacus and train; the trained model, the run's history after it, and the
    result.

    Local mode: ``train.local-epochs`` epochs at the plan's σ, the engine's accountant
    continuing ``history``. Distributed mode (:mod:`medfl.privacy.distributed`): one
    DP-SGD step at σ_local, divided by the public ``train.batch-size`` so that the sites'
    updates add up; the engine accounts that step alone, and the run's (binding) history
    is the reserved ``after``, at σ_eff.
    """
    distributed, criterion = is_distributed(cfg), tasks.task_for(cfg).make_loss()
    engine_plan = (replace(plan, noise_multiplier=local_sigma(plan, run_share(cfg)))
                   if distributed else plan)
    model, optimizer, loader, engine = attach_dp(
        setup.model, setup.optimizer, setup.loader, plan=engine_plan,
        history=[] if distributed else history, noise_generator=dp_generator(setup.noise_seed),
        grad_sample_mode=(mode := choose_grad_sample_mode(
            setup.model, cfg.privacy.grad_sample_mode, criterion=criterion, device=setup.device,
            **probe_batch(setup.loader, cfg.train.batch_size))),
        secure_mode=cfg.privacy.secure_mode, physical_batch=cfg.train.max_physical_batch_size)
    if distributed and isinstance(optimizer, DPOptimizer):
        optimizer.expected_batch_size = cfg.train.batch_size
    result = train_epochs(model, loader, optimizer, epochs=cfg.train.local_epochs,
                          device=setup.device, criterion=criterion, proximal_mu=proximal_mu,
                          before_step=functools.partial(drop_nonfinite_samples, optimizer),
                          bf16=autocast_bf16(cfg.train.precision, setup.device, mode),
                          max_steps=plan.steps_per_round if distributed else None)
    spent = [(float(s), float(q), int(n)) for s, q, n in engine.accountant.history]
    if not distributed:
        return model, spent, result
    if spent != [(engine_plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)]:
        raise RuntimeError("the distributed round took other than its one DP-SGD step")
    return model, after, result


def fit(
    cfg: RunConfig,
    data: SiteData,
    *,
    weights: dict[str, torch.Tensor],
    scaler: Standardizer,
    server_round: int,
    plan: DPPlan | None,
    history: History,
    seed: int,
    before_train: Callable[[History], None] | None = None,
    proximal_mu: float = 0.0,
) -> FitResult:
    """Train the global model locally for ``train.local-epochs`` epochs (distributed
    DP: one DP-SGD step at the site's noise share, see :func:`_train_dp`).

    With DP on, the first call plans the run's noise (``plan`` None) and every call
    restores the accountant ``history``; a round that would push ε past the target is
    refused with ``PrivacyBudgetExceeded`` before any training. ``before_train`` receives
    the history this round would leave (e.g. for the lifetime ledger) and may refuse.
    """
    if data.n_train < cfg.privacy.k_threshold:
        raise DataError(f"site has fewer training rows than privacy.k-threshold="
                        f"{cfg.privacy.k_threshold}; its example count may not leave the site")
    data = attack.poison_data(cfg, data)
    setup = _setup(cfg, data, weights=weights, scaler=scaler, seed=seed)
    if not cfg.privacy.enabled:
        model = setup.model
        result = train_epochs(model, setup.loader, setup.optimizer,
                              epochs=cfg.train.local_epochs, device=setup.device,
                              criterion=tasks.task_for(cfg).make_loss(), proximal_mu=proximal_mu,
                              bf16=autocast_bf16(cfg.train.precision, setup.device))
        metrics = TrainMetrics(num_examples=data.n_train, epsilon=float("inf"), delta=0.0,
                               noise_multiplier=0.0, sample_rate=0.0, max_grad_norm=0.0,
                               steps=result.steps)
        return _finish(cfg, data, weights, state_arrays(model), metrics, plan, history,
                       loss=result.mean_loss, steps=result.steps)
    plan, after, eps_after = plan_round(cfg, data, plan=plan, history=history,
                                        server_round=server_round)
    if before_train is not None:
        before_train(after)
    model, history, result = _train_dp(cfg, setup, plan=plan, history=history, after=after,
                                       proximal_mu=proximal_mu)
    epsilon = (eps_after if history == after else
               epsilon_from_history(history, delta=plan.delta, accountant=plan.accountant))
    # Opacus wraps the model (and torch.compile would too): strip their name prefixes.
    trained = {k.removeprefix("_module.").removeprefix("_orig_mod."): v
               for k, v in state_arrays(model).items()}
    metrics = _dp_metrics(cfg, plan, history, epsilon=epsilon, num_examples=data.n_train)
    return _finish(cfg, data, weights, trained, metrics, plan, history,
                   loss=result.mean_loss, steps=result.steps)


def _finish(cfg: RunConfig, data: SiteData, received: dict[str, torch.Tensor],
            trained: dict[str, torch.Tensor], metrics: TrainMetrics, plan: DPPlan | None,
            history: History, *, loss: float, steps: int) -> FitResult:
    # The training loss stays at the site: it is computed on the raw batches, outside the
    # DP-SGD mechanism, so sending it would leak around the (ε, δ) guarantee.
    logger.debug("local training loss %.4f over %d steps", loss, steps)
    trained = attack.corrupt_update(cfg, data.name, received, trained)
    return FitResult(trained, metrics, plan, history)


def _reserve_round(cfg: RunConfig, data: SiteData, accountant: SiteAccountant, *,
                   server_round: int) -> tuple[DPPlan | None, History]:
    """Reserve this round in the ledger before any row is read; the plan and the run's
    history *before* the round (the ledger's, under its lock) are returned.

    Without DP the round is recorded as ``no-dp`` (an infinite ε), refused when the site
    has a lifetime limit."""
    p = cfg.privacy
    if data.n_train < p.k_threshold:
        raise DataError(f"site has fewer training rows than privacy.k-threshold="
                        f"{p.k_threshold}; its example count may not leave the site")
    if not p.enabled:
        attempt = accountant.attempt("no-dp", server_round=server_round, n_train=data.n_train)
        if accountant.limit > 0:
            accountant.refuse(attempt)
            raise PrivacyBudgetExceeded(f"DP-SGD is off (infinite ε) but this site has a "
                                        f"lifetime limit ε={accountant.limit}")
        accountant.ledger.record(attempt, status="no-dp", history=[], epsilon_run=math.inf)
        return accountant.plan, accountant.history
    accountant.require_delta(data.n_train)
    planned: list[tuple[DPPlan, History]] = []

    def decide(before: History) -> tuple[History, float]:
        plan, _, eps_after = plan_round(cfg, data, plan=accountant.plan, history=before,
                                        server_round=server_round)
        if is_distributed(cfg):  # the site's consent, from public settings, before any row
            check_local_epsilon(accountant.policy, planned_local_epsilon(
                plan, run_share(cfg), after=planned_releases(cfg)))
        accountant.plan = plan  # saved with the history once the round is reserved
        planned.append((plan, before))
        return [(plan.noise_multiplier, plan.sample_rate, plan.steps_per_round)], eps_after

    attempt = accountant.attempt("reserved", server_round=server_round, n_train=data.n_train)
    if is_distributed(cfg):
        attempt = replace(attempt, annotate=lambda spend, after: ledger_fields(
            planned[-1][0], run_share(cfg), spend=spend, history=after))
    accountant.reserve(attempt, decide)
    return planned[-1]


def _fit_reserved(cfg: RunConfig, data: SiteData, accountant: SiteAccountant, *,
                  server_round: int, weights: dict[str, torch.Tensor], scaler: Standardizer,
                  seed: int, proximal_mu: float) -> FitResult:
    """:func:`fit` after the round is reserved. Any failure past the reservation is one
    fixed ``AttemptFailed``: the spend stays, and the server learns nothing of why."""
    plan, before = _reserve_round(cfg, data, accountant, server_round=server_round)
    reserved = accountant.history
    try:
        result = fit(cfg, data, weights=weights, scaler=scaler, server_round=server_round,
                     plan=plan, history=before, seed=seed, proximal_mu=proximal_mu)
        if cfg.privacy.enabled and result.history != reserved:
            raise RuntimeError("the round spent other than it reserved")
    except Exception as exc:  # noqa: BLE001 - nothing data-dependent may leave
        logger.error("round %d failed after its spend was reserved (%s)", server_round,
                     type(exc).__name__)
        raise AttemptFailed() from None
    return result


def train_round(cfg: RunConfig, data: SiteData, accountant: SiteAccountant, *,
                server_round: int, weights: dict[str, torch.Tensor], scaler: Standardizer,
                seed: int, proximal_mu: float = 0.0) -> FitResult:
    """The round a site runs: reserved in the ledger, then :func:`fit`.

    The reply gains ``epsilon-lifetime``: every release in the ledger composed at the
    site's δ. A request identical to the last released round (a resumed server asking
    again) gets that round's update back at no privacy cost (:mod:`medfl.privacy.replay`).
    Either way the accountant's new plan and history are saved.
    """
    digest = replay_lib.request_digest(server_round, weights, {
        "scaler": scaler.to_dict(), "seed": seed, "proximal_mu": proximal_mu})
    kept = accountant.replayed(digest)
    if kept is not None:
        logger.info("round %d: the same request as the last released round; its update "
                    "is sent again (no new privacy spend)", server_round)
        accountant.save()
        return FitResult(kept[0], kept[1], accountant.plan, accountant.history)
    result = _fit_reserved(cfg, data, accountant, server_round=server_round, weights=weights,
                           scaler=scaler, seed=seed, proximal_mu=proximal_mu)
    lifetime = accountant.lifetime_epsilon(data.n_train)
    metrics = replace(result.metrics, epsilon_lifetime=lifetime)
    accountant.plan, accountant.history = result.plan, result.history
    accountant.keep(digest, result.weights, metrics)
    accountant.save()
    return FitResult(result.weights, metrics, result.plan, result.history)
