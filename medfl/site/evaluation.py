"""What a site computes about the global model on its own rows: the monitoring release
(the global model's, and a personalised copy's, whole-test-set statistics through one
Gaussian mechanism) and the membership-inference audit (policy-gated, outside DP)."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from medfl import tasks
from medfl.config import RunConfig
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.evaluation.stats import (
    MONITOR_SUMS,
    PERSONAL,
    SiteEvalStats,
    from_release,
    monitor_statistic,
)
from medfl.models import state_arrays
from medfl.privacy.audit import AuditResult, loss_threshold_attack, per_record_loss
from medfl.privacy.dp import dp_seed
from medfl.privacy.mechanisms import AUDIT, MONITOR, REPORT, gaussian_release
from medfl.site.identity import round_seed
from medfl.site.training import model_from
from medfl.training import make_loader, make_optimizer, predict_proba, resolve_device, train_epochs

#: The test-set releases' noise streams, apart from training's and the moments' (which
#: seed from round_seed alone)
_STREAMS = {REPORT: 0x7E57_0001, MONITOR: 0x7E57_0002, AUDIT: 0x7E57_0003}


def release_rng(cfg: RunConfig, site: str, release: str, *,
                server_round: int) -> np.random.Generator:
    """The generator of a test-set release's noise: OS entropy under
    ``privacy.secure-noise`` (:func:`medfl.privacy.dp.dp_seed`), else a stream of the
    run's seed distinct from every other release's."""
    seed = dp_seed(round_seed(cfg, site, server_round), secure=cfg.privacy.secure_noise)
    return np.random.default_rng([seed, _STREAMS[release]])


def statistic(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
              scaler: Standardizer) -> np.ndarray:
    """The exact whole-test-set statistic of a model (see
    :func:`medfl.evaluation.stats.monitor_statistic`); it never leaves the site as is."""
    device = resolve_device(cfg.device)
    model = model_from(cfg, weights).to(device)
    x = scaler.transform(data.x_test)
    scores = predict_proba(model, x, device=device) if len(x) else np.zeros(0)
    return monitor_statistic(data.y_test, scores, threshold=cfg.evaluation.threshold,
                             segmentation=tasks.task_for(cfg).segmentation)


def evaluate(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
             scaler: Standardizer) -> SiteEvalStats:
    """The global model's exact whole-test-set statistics, for use at the site (the
    site's own checks and benchmarks); what leaves is :func:`evaluation_metrics`."""
    return from_release(statistic(cfg, data, weights=weights, scaler=scaler), 0.0,
                        threshold=cfg.evaluation.threshold,
                        segmentation=tasks.task_for(cfg).segmentation, test_epsilon=0.0)


def personalise(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
                scaler: Standardizer, seed: int) -> dict[str, torch.Tensor]:
    """Fine-tune the global model on this site's training rows (personalised evaluation).

    ``evaluation.personal-epochs`` epochs of the run's optimiser at ``evaluation.personal-lr``
    (0: ``train.lr``), without DP: the fine-tuned model is used for this site's evaluation
    and never leaves it; only its noisy test statistics do, in the monitoring release
    (PRIVACY.md).
    """
    e = cfg.evaluation
    torch.manual_seed(seed)
    device = resolve_device(cfg.device)
    model = model_from(cfg, weights).to(device)
    train_cfg = replace(cfg.train, lr=e.personal_lr or cfg.train.lr)
    loader = make_loader(scaler.transform(data.x_train), data.y_train,
                         batch_size=cfg.train.batch_size, shuffle=True, seed=seed)
    train_epochs(model, loader, make_optimizer(model, train_cfg), epochs=e.personal_epochs,
                 device=device, criterion=tasks.task_for(cfg).make_loss())
    return state_arrays(model)


def evaluation_metrics(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
                       scaler: Standardizer, seed: int, sigma: float,
                       rng: np.random.Generator, test_epsilon: float) -> dict[str, Any]:
    """An evaluate reply's metrics: the monitoring release (see
    :mod:`medfl.evaluation.stats`), one Gaussian release over the global model's
    statistics and, with ``evaluation.personal-epochs`` > 0, the locally fine-tuned
    model's under ``personal-``.

    Each patient adds at most 1 to each component (unit 1) of each model's statistic, whose
    per-patient L2 norm is at most 1 (histogram) or sqrt(3) (segmentation sums); over
    ``m`` models the sensitivity is ``sqrt(m)`` or ``sqrt(3 m)``. ``sigma``: the noise
    multiplier the accountant reserved for this round (0: exact); ``test_epsilon``: the
    site's test-set ε after it.
    """
    parts = [statistic(cfg, data, weights=weights, scaler=scaler)]
    if cfg.evaluation.personal_epochs > 0:
        tuned = personalise(cfg, data, weights=weights, scaler=scaler, seed=seed)
        parts.append(statistic(cfg, data, weights=tuned, scaler=scaler))
    segmentation = tasks.task_for(cfg).segmentation
    per_model = len(MONITOR_SUMS) if segmentation else 1
    out = gaussian_release(np.concatenate(parts), 1.0,
                           sensitivity=math.sqrt(per_model * len(parts)), sigma=sigma, rng=rng)
    size = len(parts[0])
    metrics: dict[str, Any] = {}
    for i, prefix in enumerate(["", PERSONAL][:len(parts)]):
        stats = from_release(out.values[i * size:(i + 1) * size], float(out.std[0]),
                             threshold=cfg.evaluation.threshold, segmentation=segmentation,
                             test_epsilon=test_epsilon)
        metrics.update({prefix + k: v for k, v in stats.to_metrics().items()})
    return metrics


def _per_record_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    # Segmentation: one loss per image, the mean of its pixels' cross-entropies.
    per = per_record_loss(y.reshape(len(y), -1), p.reshape(len(p), -1))
    means: np.ndarray = per.mean(axis=1)
    return means


def audit_losses(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
                 scaler: Standardizer) -> tuple[np.ndarray, np.ndarray]:
    """Per-record losses of the global model on this site's training rows (members) and
    test rows (non-members); they never leave the site as they are."""
    device = resolve_device(cfg.device)
    model = model_from(cfg, weights).to(device)
    p_train = predict_proba(model, scaler.transform(data.x_train), device=device)
    p_test = predict_proba(model, scaler.transform(data.x_test), device=device)
    return _per_record_loss(data.y_train, p_train), _per_record_loss(data.y_test, p_test)


def audit(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
          scaler: Standardizer) -> AuditResult:
    """Loss-threshold membership inference against the global model on this site's data:
    the exact figures, for a hospital's own eyes (``medfl audit``)."""
    members, non_members = audit_losses(cfg, data, weights=weights, scaler=scaler)
    return loss_threshold_attack(members, non_members, k=cfg.privacy.k_threshold)
