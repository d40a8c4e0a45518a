"""What one hospital does in a round, independent of Flower.

The ClientApp adapts Flower messages to these functions: resolve which site this node
is, compute its share of the feature statistics, train the global model with DP-SGD,
and evaluate the global model, returning only what the egress contract allows.
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfl import attack, tasks
from medfl.config import RunConfig
from medfl.data.augment import build_augmentation
from medfl.data.scaling import FeatureMoments, Standardizer, local_standardizer, site_moments
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError, PrivacyBudgetExceeded
from medfl.evaluation.cellstats import classification_report
from medfl.evaluation.stats import (
    PERSONAL,
    SiteEvalStats,
    segmentation_stats,
    site_eval_stats,
)
from medfl.evaluation.subgroups import cells
from medfl.models import state_arrays
from medfl.privacy import replay as replay_lib
from medfl.privacy.audit import AuditResult, loss_threshold_attack, per_record_loss
from medfl.privacy.dp import (
    DPPlan,
    History,
    attach_dp,
    choose_grad_sample_mode,
    dp_generator,
    dp_seed,
    epsilon_from_history,
    extend_history,
    make_dp_compatible,
)
from medfl.privacy.ledger import Ledger
from medfl.training import make_loader, make_optimizer, predict_proba, resolve_device, train_epochs

logger = logging.getLogger(__name__)


def resolve_site(cfg: RunConfig, node_config: dict[str, Any]) -> str:
    """The site this node serves.

    Deployment: ``node_config`` names it (``site='cleveland'``). Simulation: Flower sets
    ``partition-id`` / ``num-partitions``, and partition *i* is the task's *i*-th site
    (heart disease: the *i*-th hospital; tabular: the CSV's sites in sorted order; imaging:
    the manifest's sites in sorted order, or ``part-<i+1>`` under ``data.partition``).
    """
    if "site" in node_config:
        site = str(node_config["site"])
        tasks.task_for(cfg).check_site_name(site)
        if not site or not all(c.isalnum() or c in "-_." for c in site):
            raise ConfigError("node-config site must be a name of letters, digits, '-', '_' "
                              "or '.'")
        return site
    if "partition-id" not in node_config:
        raise ConfigError("node-config needs site='<name>' (deployment) or partition-id "
                          "(simulation); neither was given")
    pid, num = int(node_config["partition-id"]), int(node_config.get("num-partitions", 0))
    names = tasks.task_for(cfg).sites(num_partitions=num)
    if num != len(names):
        raise ConfigError(
            f"the {cfg.task.value} data has {len(names)} sites but the federation has {num} "
            f"supernodes; run with --federation-config 'num-supernodes={len(names)}'"
        )
    return names[pid]


def site_config(cfg: RunConfig, node_config: dict[str, Any]) -> RunConfig:
    """The run config as this site applies it.

    A deployed site (node-config ``site``) reads only files its own node-config names:
    ``data-path`` (its image manifest or tabular CSV) and, for ``task = "tabular"``,
    ``schema-path`` (its copy of the consortium's schema). The run config's
    ``data.manifest`` and ``data.schema`` are paths on the researcher's machine, chosen by
    the server, so they apply in simulation only.
    """
    if "site" in node_config and cfg.attack.kind != "none":
        raise ConfigError("attack.kind is a simulation option; a deployed site refuses a run "
                          "that asks it to corrupt its update")
    if "site" not in node_config:
        return cfg
    return tasks.task_for(cfg).deployed_config(node_config)


def site_state_dir(cfg: RunConfig, site: str, node_config: dict[str, Any]) -> Path:
    """Where this site keeps its privacy ledger.

    Deployment: ``node_config`` ``site-dir``. Simulation: ``<state-dir>/<site>/`` with
    ``state-dir`` from the run config, by default ``<project>/state``.
    """
    if "site-dir" in node_config:
        return Path(str(node_config["site-dir"]))
    return tasks.state_root(cfg) / site


def dp_state_path(cfg: RunConfig, site: str, node_config: dict[str, Any], run_key: int) -> Path:
    """The site's copy of a run's DP plan and accountant history (DP parameters only):
    a restarted SuperNode or a resumed run continues from it rather than from zero.

    The name carries the run key and a fingerprint of what the DP plan depends on, so a
    run that reuses a key with other settings (a harness restarting Flower's run ids, a
    server re-sending an old key) never continues another run's accountant."""
    p, t = cfg.privacy, cfg.train
    plan_inputs = (site, cfg.seed, cfg.num_server_rounds, t.local_epochs, t.batch_size,
                   p.enabled, p.target_epsilon, p.target_delta, p.max_grad_norm, p.accountant,
                   cfg.preprocessing.stats_noise_multiplier, cfg.task.value, cfg.model.name)
    tag = hashlib.sha256(repr(plan_inputs).encode()).hexdigest()[:12]
    return site_state_dir(cfg, site, node_config) / "dp-state" / f"run-{int(run_key)}-{tag}.json"


def open_ledger(cfg: RunConfig, site: str, node_config: dict[str, Any]) -> Ledger:
    """This site's lifetime privacy ledger (see :func:`site_state_dir`)."""
    return Ledger.open(site_state_dir(cfg, site, node_config), site)


#: node-config keys a hospital sets to bound what any run may ask of it.
SITE_POLICY_KEYS = ("max-epsilon", "min-k", "require-dp", "lifetime-epsilon")


def lifetime_limit(cfg: RunConfig, node_config: dict[str, Any]) -> float:
    """The lifetime ε limit in force: the tighter of the site's own (node-config
    ``lifetime-epsilon``) and the run's ``privacy.lifetime-epsilon``; 0 means none. The run
    config comes from the server, so it can tighten a site's limit, never loosen it."""
    limits = [v for v in (float(node_config.get("lifetime-epsilon", 0)),
                          cfg.privacy.lifetime_epsilon) if v > 0]
    return min(limits) if limits else 0.0


def enforce_site_policy(cfg: RunConfig, node_config: dict[str, Any]) -> None:
    """Refuse a run whose privacy settings are weaker than this site's own policy.

    The run config comes from the server, so a site must not trust it blindly:
    ``max-epsilon`` caps ``privacy.target-epsilon``, ``min-k`` floors
    ``privacy.k-threshold``, ``require-dp`` (default true when either is set) demands
    DP-SGD with secure noise. Without these keys (simulation) the run config is taken as is.
    """
    if not any(k in node_config for k in SITE_POLICY_KEYS):
        return
    p = cfg.privacy
    if "max-epsilon" in node_config and p.target_epsilon > float(node_config["max-epsilon"]):
        raise ConfigError(f"privacy.target-epsilon={p.target_epsilon} exceeds this site's "
                          f"max-epsilon={float(node_config['max-epsilon'])}")
    if "min-k" in node_config and p.k_threshold < int(node_config["min-k"]):
        raise ConfigError(f"privacy.k-threshold={p.k_threshold} is below this site's "
                          f"min-k={int(node_config['min-k'])}")
    if bool(node_config.get("require-dp", True)) and not (p.enabled and p.secure_noise):
        raise ConfigError("this site requires DP-SGD with secure noise (privacy.enabled=true, "
                          "privacy.secure-noise=true)")


def load_site(cfg: RunConfig, site: str, *, data_path: str | None = None,
              verify: bool = True, num_partitions: int | None = None) -> SiteData:
    """This site's data (see :meth:`medfl.tasks.Task.load_site`)."""
    return tasks.task_for(cfg).load_site(site, data_path=data_path, verify=verify,
                           num_partitions=num_partitions)


def load_node_site(cfg: RunConfig, site: str, node: dict[str, Any]) -> SiteData:
    """This site's data as its node config places it (``data-path``, ``verify-checksum``,
    and in simulation ``num-partitions``)."""
    return load_site(cfg, site, data_path=str(node["data-path"]) if "data-path" in node else None,
                     verify=bool(node.get("verify-checksum", True)),
                     num_partitions=(int(node["num-partitions"]) if "num-partitions" in node
                                     else None))


def release_noised_moments(cfg: RunConfig, ledger: Ledger, *, run_id: int, history: History,
                           limit: float) -> History:
    """Account the Gaussian release of the feature moments before it leaves the site.

    Refuses when the release alone would pass this run's target ε or the lifetime limit,
    and records it in the ledger (status ``released``). Returns the run's new history.
    """
    p = cfg.privacy
    after = extend_history(history, cfg.preprocessing.stats_noise_multiplier, 1.0, 1)
    eps = epsilon_from_history(after, delta=p.target_delta, accountant=p.accountant)
    if eps >= p.target_epsilon:
        raise PrivacyBudgetExceeded(
            f"the feature-moment release alone would spend ε={eps:.3f} of this run's target "
            f"ε={p.target_epsilon}; raise preprocessing.stats-noise-multiplier")
    ledger.check(run_id=run_id, history_after=after, delta=p.target_delta,
                 accountant=p.accountant, limit=limit)
    ledger.append(run_id=run_id, server_round=0, status="released", history=after,
                  epsilon_run=eps, delta=p.target_delta, accountant=p.accountant, limit=limit)
    return after


def round_seed(cfg: RunConfig, site: str, server_round: int) -> int:
    """A seed distinct per site and round, reproducible from the run's seed."""
    return cfg.seed * 1_000_003 + zlib.crc32(site.encode()) % 10_007 * 10_007 + server_round


def moments_rng(cfg: RunConfig, site: str) -> np.random.Generator:
    """The generator of the feature moments' noise: OS entropy under secure noise."""
    return np.random.default_rng(dp_seed(round_seed(cfg, site, 0),
                                         secure=cfg.privacy.secure_noise))


def feature_stats(cfg: RunConfig, data: SiteData, *, rng: np.random.Generator) -> FeatureMoments:
    """This site's clipped (and optionally noised) moments of the numeric features."""
    if data.n_train < cfg.privacy.k_threshold:
        raise DataError(
            f"site has fewer training rows than privacy.k-threshold="
            f"{cfg.privacy.k_threshold}; it cannot share feature statistics"
        )
    spec = tasks.task_for(cfg).feature_spec()
    return site_moments(
        data.x_train[:, list(spec.numeric_idx)].astype(np.float64), bounds=spec.bounds,
        noise_multiplier=cfg.preprocessing.stats_noise_multiplier, rng=rng,
    )


def site_scaler(cfg: RunConfig, data: SiteData, received: Standardizer | None) -> Standardizer:
    """The standardiser this site applies, per ``preprocessing.scaling`` (tabular only:
    images are normalised one by one, per ``data.intensity``)."""
    if not cfg.is_tabular:
        return Standardizer((), (), ())
    if cfg.preprocessing.scaling == "federated":
        if received is None:
            raise ConfigError("scaling 'federated' but the server sent no standardiser")
        return received
    if cfg.preprocessing.scaling == "site":
        return local_standardizer(data.x_train,
                                  columns=tasks.task_for(cfg).feature_spec().numeric_idx)
    return Standardizer((), (), ())


def _model(cfg: RunConfig, weights: dict[str, torch.Tensor] | None) -> torch.nn.Module:
    model = tasks.task_for(cfg).build_model()
    if weights is not None:
        model.load_state_dict(weights, strict=True)
    return model


@dataclass(frozen=True)
class FitResult:
    """What a training round produced; ``metrics`` is what may leave the site."""

    weights: dict[str, torch.Tensor]
    metrics: dict[str, float | int]
    plan: DPPlan | None
    history: History


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
    """Train the global model locally for ``train.local-epochs`` epochs.

    With DP on, the first call plans the run's noise (``plan`` None) and every call
    restores the accountant ``history``; a round that would push ε past the target is
    refused with ``PrivacyBudgetExceeded`` before any training. ``before_train`` receives
    the history this round would leave (e.g. for the lifetime ledger) and may refuse.
    """
    p = cfg.privacy
    if data.n_train < p.k_threshold:
        raise DataError(f"site has fewer training rows than privacy.k-threshold="
                        f"{p.k_threshold}; its example count may not leave the site")
    data = attack.poison_data(cfg, data)
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    model = _model(cfg, weights)
    if p.enabled:
        model = make_dp_compatible(model)
    model = model.to(device)
    optimizer = make_optimizer(model, cfg.train)
    x = scaler.transform(data.x_train)
    # Under DP the batch sampling and the noise come from two independent secret seeds
    # (see dp_seed); seeded mode derives both from the run seed.
    sampling_seed = dp_seed(seed, secure=p.secure_noise) if p.enabled else seed
    noise_seed = dp_seed(seed + 1, secure=p.secure_noise)
    augment = build_augmentation(cfg.train.augment, seed=sampling_seed + 7,
                                 segmentation=tasks.task_for(cfg).segmentation)
    loader = make_loader(x, data.y_train, batch_size=cfg.train.batch_size, shuffle=True,
                         seed=sampling_seed, transform=augment)
    if p.enabled:
        if plan is None:
            plan = DPPlan.make(
                n_train=data.n_train, batch_size=cfg.train.batch_size,
                local_epochs=cfg.train.local_epochs, rounds=cfg.num_server_rounds,
                target_epsilon=p.target_epsilon, delta=p.target_delta,
                max_grad_norm=p.max_grad_norm, accountant=p.accountant, prior=history,
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
        if before_train is not None:
            before_train(after)
        model, optimizer, loader, engine = attach_dp(
            model, optimizer, loader, plan=plan, history=history,
            noise_generator=dp_generator(noise_seed),
            grad_sample_mode=choose_grad_sample_mode(model, p.grad_sample_mode),
            secure_mode=p.secure_mode,
        )
    result = train_epochs(model, loader, optimizer, epochs=cfg.train.local_epochs,
                          device=device, criterion=tasks.task_for(cfg).make_loss(),
                          proximal_mu=proximal_mu)
    if p.enabled:
        history = [tuple(h) for h in engine.accountant.history]
        epsilon = (eps_after if history == after else
                   epsilon_from_history(history, delta=plan.delta, accountant=plan.accountant))
        weights_out = {k.removeprefix("_module."): v for k, v in state_arrays(model).items()}
        weights_out = {k.removeprefix("_orig_mod."): v for k, v in weights_out.items()}
        sgd = (plan.noise_multiplier, plan.sample_rate)
        dp_metrics = {
            "epsilon": epsilon, "delta": plan.delta,
            "noise-multiplier": plan.noise_multiplier, "sample-rate": plan.sample_rate,
            "max-grad-norm": plan.max_grad_norm,
            "steps": sum(n for s, q, n in history if (s, q) == sgd),
            # Other accounted releases (each one Gaussian step at sample rate 1), so that
            # ε can be recomputed from what the site reports.
            "prior-noise-multipliers": [float(s) for s, q, n in plan.prior],
        }
    else:
        weights_out = state_arrays(model)
        dp_metrics = {"epsilon": float("inf"), "delta": 0.0, "noise-multiplier": 0.0,
                      "sample-rate": 0.0, "max-grad-norm": 0.0, "steps": result.steps,
                      "prior-noise-multipliers": []}
    # The training loss stays at the site: it is computed on the raw batches, outside the
    # DP-SGD mechanism, so sending it would leak around the (ε, δ) guarantee.
    logger.debug("local training loss %.4f over %d steps", result.mean_loss, result.steps)
    # site-weight: a constant, so that central DP can average sites uniformly (its noise
    # is calibrated to one site's clipped update over the number of sites).
    weights_out = attack.corrupt_update(cfg, data.name, weights, weights_out)
    metrics = {"num-examples": data.n_train, "site-weight": 1.0, **dp_metrics}
    return FitResult(weights_out, metrics, plan, history)


def evaluate(
    cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor], scaler: Standardizer
) -> SiteEvalStats:
    """Evaluate the global model on this site's test set; already suppressed at ``k``."""
    device = resolve_device(cfg.device)
    model = _model(cfg, weights).to(device)
    scores = predict_proba(model, scaler.transform(data.x_test), device=device)
    if tasks.task_for(cfg).segmentation:
        return segmentation_stats(data.y_test, scores, threshold=cfg.evaluation.threshold,
                                  k=cfg.privacy.k_threshold)
    t, k = cfg.evaluation.threshold, cfg.privacy.k_threshold
    whole = classification_report(data.y_test, scores, data.sensitive_test, cells(cfg),
                                  threshold=t, k=k)[0]
    groups = None if whole.groups is None else tuple(
        [(g.n, g.mean, g.var) for g in whole.groups if g.cls == c] for c in (0, 1))
    return site_eval_stats(data.y_test, scores, threshold=t, k=k, groups=groups)


def personalise(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
                scaler: Standardizer, seed: int) -> dict[str, torch.Tensor]:
    """Fine-tune the global model on this site's training rows (personalised evaluation).

    ``evaluation.personal-epochs`` epochs of the run's optimiser at ``evaluation.personal-lr``
    (0: ``train.lr``), without DP: the fine-tuned model is used for this site's evaluation
    and never leaves it; only its k-suppressed test statistics do (PRIVACY.md).
    """
    e = cfg.evaluation
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    model = _model(cfg, weights).to(device)
    train_cfg = replace(cfg.train, lr=e.personal_lr or cfg.train.lr)
    loader = make_loader(scaler.transform(data.x_train), data.y_train,
                         batch_size=cfg.train.batch_size, shuffle=True, seed=seed)
    train_epochs(model, loader, make_optimizer(model, train_cfg), epochs=e.personal_epochs,
                 device=device, criterion=tasks.task_for(cfg).make_loss())
    return state_arrays(model)


def evaluation_metrics(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
                       scaler: Standardizer, seed: int) -> dict[str, Any]:
    """An evaluate reply's metrics: the global model's test statistics and, with
    ``evaluation.personal-epochs`` > 0, the locally fine-tuned model's under ``personal-``."""
    metrics = evaluate(cfg, data, weights=weights, scaler=scaler).to_metrics()
    if cfg.evaluation.personal_epochs > 0:
        tuned = personalise(cfg, data, weights=weights, scaler=scaler, seed=seed)
        personal = evaluate(cfg, data, weights=tuned, scaler=scaler).to_metrics()
        metrics.update({PERSONAL + k: v for k, v in personal.items()})
    return metrics


def audit(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
          scaler: Standardizer) -> AuditResult:
    """Loss-threshold membership inference against the global model on this site's data."""
    device = resolve_device(cfg.device)
    model = _model(cfg, weights).to(device)
    p_train = predict_proba(model, scaler.transform(data.x_train), device=device)
    p_test = predict_proba(model, scaler.transform(data.x_test), device=device)

    def loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        # Segmentation: one loss per image, the mean of its pixels' cross-entropies.
        per = per_record_loss(y.reshape(len(y), -1), p.reshape(len(p), -1))
        return per.mean(axis=1)

    return loss_threshold_attack(loss(data.y_train, p_train), loss(data.y_test, p_test),
                                 k=cfg.privacy.k_threshold)


def fit_with_ledger(
    cfg: RunConfig,
    data: SiteData,
    ledger: Ledger,
    *,
    run_id: int,
    server_round: int,
    plan: DPPlan | None,
    history: History,
    limit: float,
    replay: Path | None = None,
    **fit_kwargs: Any,
) -> FitResult:
    """:func:`fit`, checked against ``limit`` (see :func:`lifetime_limit`) and recorded in
    the site's lifetime ledger.

    A refused round is recorded too (status ``refused``) before the refusal propagates.
    The reply gains ``epsilon-lifetime``: every run in the ledger composed with this one.
    With ``replay`` (the run's DP state file), a request identical to the last released
    round (a resumed server asking again) gets that round's update back at no privacy cost
    (:mod:`medfl.privacy.replay`).
    """
    p = cfg.privacy
    digest = ""
    if replay is not None:
        scaler = fit_kwargs.get("scaler")
        digest = replay_lib.request_digest(server_round, fit_kwargs["weights"], {
            "scaler": scaler.to_dict() if scaler is not None else None,
            "seed": fit_kwargs.get("seed"), "proximal_mu": fit_kwargs.get("proximal_mu")})
        kept = replay_lib.find(replay, digest)
        if kept is not None:
            logger.info("round %d: the same request as the last released round; its update "
                        "is sent again (no new privacy spend)", server_round)
            return FitResult(*kept)

    def check(history_after: History) -> None:
        ledger.check(run_id=run_id, history_after=history_after, delta=p.target_delta,
                     accountant=p.accountant, limit=limit)

    def record(status: str, hist: History, eps: float) -> None:
        ledger.append(run_id=run_id, server_round=server_round, status=status, history=hist,
                      epsilon_run=eps, delta=p.target_delta, accountant=p.accountant,
                      limit=limit)

    try:
        if not p.enabled and limit > 0:
            raise PrivacyBudgetExceeded(
                f"DP-SGD is off (infinite ε) but this site has a lifetime limit ε={limit}")
        result = fit(cfg, data, server_round=server_round, plan=plan, history=history,
                     before_train=check if p.enabled else None, **fit_kwargs)
    except PrivacyBudgetExceeded:
        spent = (epsilon_from_history(history, delta=p.target_delta, accountant=p.accountant)
                 if p.enabled else 0.0)
        record("refused", history, spent)
        raise
    eps = float(result.metrics["epsilon"])
    record("trained" if p.enabled else "no-dp", result.history if p.enabled else [], eps)
    others = any(e["run_id"] != run_id for e in ledger.entries if e["status"] != "refused")
    lifetime = (ledger.lifetime_epsilon(delta=p.target_delta, accountant=p.accountant)
                if others else eps)  # one run only: its own ε, without recomputing it
    metrics = {**result.metrics, "epsilon-lifetime": lifetime}
    if replay is not None:
        replay_lib.keep(replay, digest, result.weights, metrics, plan=result.plan,
                        history=result.history)
    return FitResult(result.weights, metrics, result.plan, result.history)

