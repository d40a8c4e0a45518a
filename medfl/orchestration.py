"""Server-side steps that are not Flower: the standardiser, the bundle, the run's files."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.data.heart import HEART_SITES
from medfl.data.missing import pool_with_imputation
from medfl.data.prevalence import pooled_prevalence
from medfl.data.scaling import FeatureMoments, Standardizer
from medfl.errors import SiteRefused
from medfl.evaluation.release_sum import site_report_metrics
from medfl.evaluation.stats import SiteEvalStats
from medfl.models import state_arrays
from medfl.privacy.audit import AuditResult
from medfl.reporting.class_weight import class_weight_record
from medfl.reporting.files import EVALUATION_FILE, write_reports
from medfl.reporting.run_dir import RunDirectory
from medfl.reporting.summary import build_summary
from medfl.serving.bundle import save_bundle
from medfl.serving.signing import sign_bundle
from medfl.site.metrics import TrainMetrics

logger = logging.getLogger(__name__)


def initial_weights(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """The global model's starting weights, reproducible from the run's seed."""
    torch.manual_seed(cfg.seed)
    return state_arrays(tasks.task_for(cfg).build_model())


def consortium_scaler(cfg: RunConfig, moments: dict[str, FeatureMoments], *, expected: int,
                      refusals: dict[int, str] | None = None) -> Standardizer:
    """Pool the sites' moments (and the means of the features to impute). Every expected
    site must have answered: a scaler fitted on a subset would silently shift the others'
    inputs. Otherwise ``SiteRefused`` names the
    sites that refused (``refusals``: node id -> the reason it sent) and what to do."""
    if len(moments) < expected:
        raise SiteRefused(refusal_message(len(moments), expected, refusals or {}))
    scaler = pool_with_imputation(list(moments.values()), tasks.task_for(cfg).feature_spec())
    return replace(scaler, prevalence=pooled_prevalence(list(moments.values())))


def refusal_message(answered: int, expected: int, refusals: dict[int, str]) -> str:
    """One line for a run stopped because sites refused the feature-statistics query: who
    refused and why (the reasons sites sent, which they vet), and what the consortium can
    do. A site whose reason does not name it is named by its node id."""
    who = "; ".join(f"node {node}: {reason}" for node, reason in sorted(refusals.items()))
    silent = expected - answered - len(refusals)
    if silent > 0:
        who += ("; " if who else "") + f"{silent} site(s) did not answer in time"
    return (f"the run stopped before training: only {answered} of {expected} sites shared "
            f"feature statistics ({who}). Every site in the run must take part: drop that "
            "site (stop its SuperNode), merge its patients into another site, or, if the "
            "consortium agrees to go on without it, lower strategy.min-nodes (and "
            "strategy.min-round-nodes) to the sites that remain")


def stop_refused(run_dir: RunDirectory, error: SiteRefused) -> None:
    """End a run that a site refused: one error line in the server's log (no traceback:
    nothing is wrong with the server) and the run folder marked failed, so it is never
    read as a finished run."""
    run_dir.mark_failed(str(error))
    logger.error("MedFL run %s stopped: %s", run_dir.path.name, error)


def site_order(names: list[str]) -> list[str]:
    """Order site names for reports: the UCI heart-disease sites first, in their
    canonical order, then any other names alphabetically."""
    known = [s for s in HEART_SITES if s in names]
    return known + sorted(set(names) - set(known))


def finish_run(
    run_dir: RunDirectory,
    cfg: RunConfig,
    *,
    weights: dict[str, torch.Tensor],
    scaler: Standardizer | None,
    train: dict[str, TrainMetrics],
    evaluation: dict[str, SiteEvalStats],
    rounds_trained: dict[str, list[int]],
    audits: dict[str, AuditResult] | None = None,
    central: dict[str, Any] | None = None,
    report_stats: dict[str, dict[str, Any]] | None = None,
    personal: dict[str, SiteEvalStats] | None = None,
) -> dict[str, Any]:
    """Write the bundle, ``summary.json`` and the reports, then point ``latest`` at the run;
    returns ``summary.json``'s final content (with the report's figures merged in).

    ``report_stats``: each site's report statistics as received (``query.report``), or
    under secure aggregation their sum (:mod:`medfl.evaluation.release_sum`);
    ``personal``: each site's personalised evaluation (``evaluation.personal-epochs``).
    """
    names = site_order(sorted(set(train) | set(evaluation) | set(rounds_trained)))
    summary = build_summary(cfg, site_order=names, train=train, evaluation=evaluation,
                            rounds_trained=rounds_trained, run_name=run_dir.path.name,
                            audits=audits or {}, central=central, personal=personal,
                            report_stats=site_report_metrics(report_stats),
                            class_weight=class_weight_record(
                                cfg, scaler.prevalence if scaler is not None else None))
    manifest = {
        "task": cfg.task.value,
        **tasks.task_for(cfg).model_io(scaler),
        "label_names": list(tasks.task_for(cfg).label_names()),
        "threshold": cfg.evaluation.threshold,
        "class_weight": summary.class_weight,
        "metrics": {"global": summary.pooled.metrics.to_dict(),
                    "mean_site_accuracy": summary.mean_site_accuracy},
        "privacy": [{"site": s.name, "epsilon": s.epsilon, "delta": s.delta}
                    for s in summary.sites],
        "created": {"utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                    "medfl_version": medfl.__version__, "run_name": run_dir.path.name},
        "disclaimer": medfl.DISCLAIMER,
    }
    from medfl.reporting.run_dir import jsonable

    save_bundle(run_dir.path / "model", weights, jsonable(manifest))
    run_dir.write_json("summary.json", summary.to_dict())
    run_dir.write_json(EVALUATION_FILE, report_stats or {})
    try:
        write_reports(run_dir.path)
    except Exception:  # noqa: BLE001 - the model and summary stand; the report can be rebuilt
        logger.exception("writing the report failed; rebuild it with `medfl report %s`",
                         run_dir.path.name)
    signing_key = os.environ.get("MEDFL_SIGNING_KEY")
    if signing_key:  # the consortium's key, held by the server: serving can then verify
        # After the reports: the signature also covers the served report.json and card.
        sign_bundle(run_dir.path / "model", Path(signing_key))
    run_dir.mark_latest()
    return json.loads((run_dir.path / "summary.json").read_text())
