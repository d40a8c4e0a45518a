"""What a site computes about the global model on its own rows: its evaluation statistics,
a personalised (locally fine-tuned) evaluation, and a membership-inference audit. Only the
k-suppressed aggregates these return may leave the site."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch

from medfl import tasks
from medfl.config import RunConfig
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.evaluation.cellstats import classification_report
from medfl.evaluation.stats import (
    PERSONAL,
    SiteEvalStats,
    segmentation_stats,
    site_eval_stats,
)
from medfl.models import state_arrays
from medfl.privacy.audit import AuditResult, loss_threshold_attack, per_record_loss
from medfl.site.training import model_from
from medfl.training import make_loader, make_optimizer, predict_proba, resolve_device, train_epochs


def evaluate(
    cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor], scaler: Standardizer
) -> SiteEvalStats:
    """Evaluate the global model on this site's test set; already suppressed at ``k``."""
    device = resolve_device(cfg.device)
    model = model_from(cfg, weights).to(device)
    scores = predict_proba(model, scaler.transform(data.x_test), device=device)
    if tasks.task_for(cfg).segmentation:
        return segmentation_stats(data.y_test, scores, threshold=cfg.evaluation.threshold,
                                  k=cfg.privacy.k_threshold)
    threshold, k = cfg.evaluation.threshold, cfg.privacy.k_threshold
    cell_list = tasks.task_for(cfg).cells()
    whole = classification_report(data.y_test, scores, data.sensitive_test, cell_list,
                                  threshold=threshold, k=k)[0]
    # the report's whole-test-set groups: one cut of these scores, never two (stats.py)
    groups = None
    if whole.groups is not None:
        groups = ([(g.n, g.mean, g.var) for g in whole.groups if g.cls == 0],
                  [(g.n, g.mean, g.var) for g in whole.groups if g.cls == 1])
    return site_eval_stats(data.y_test, scores, threshold=threshold, k=k, groups=groups)


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
    model = model_from(cfg, weights).to(device)
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
    metrics: dict[str, Any] = evaluate(cfg, data, weights=weights, scaler=scaler).to_metrics()
    if cfg.evaluation.personal_epochs > 0:
        tuned = personalise(cfg, data, weights=weights, scaler=scaler, seed=seed)
        personal = evaluate(cfg, data, weights=tuned, scaler=scaler).to_metrics()
        metrics.update({PERSONAL + k: v for k, v in personal.items()})
    return metrics


def _per_record_loss(y: np.ndarray, p: np.ndarray) -> np.ndarray:
    # Segmentation: one loss per image, the mean of its pixels' cross-entropies.
    per = per_record_loss(y.reshape(len(y), -1), p.reshape(len(p), -1))
    means: np.ndarray = per.mean(axis=1)
    return means


def audit(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
          scaler: Standardizer) -> AuditResult:
    """Loss-threshold membership inference against the global model on this site's data."""
    device = resolve_device(cfg.device)
    model = model_from(cfg, weights).to(device)
    p_train = predict_proba(model, scaler.transform(data.x_train), device=device)
    p_test = predict_proba(model, scaler.transform(data.x_test), device=device)
    return loss_threshold_attack(_per_record_loss(data.y_train, p_train),
                                 _per_record_loss(data.y_test, p_test),
                                 k=cfg.privacy.k_threshold)
