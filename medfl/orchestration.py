"""Server-side steps that are not Flower: the standardiser, the bundle, the run's files."""

from __future__ import annotations

import json
import logging
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.data.heart import HEART_SITES
from medfl.data.scaling import FeatureMoments, Standardizer, pool_moments
from medfl.errors import DataError
from medfl.evaluation.release_sum import site_report_metrics
from medfl.evaluation.stats import SiteEvalStats
from medfl.models import state_arrays
from medfl.privacy.audit import AuditResult
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


def consortium_scaler(cfg: RunConfig, moments: dict[str, FeatureMoments],
                      *, expected: int) -> Standardizer:
    """Pool the sites' moments. Every expected site must have answered: a scaler fitted on
    a subset would silently shift the others' inputs."""
    if len(moments) < expected:
        raise DataError(
            f"only {len(moments)} of {expected} sites shared feature statistics "
            f"({sorted(moments)}); the consortium standardiser needs all of them"
        )
    spec = tasks.task_for(cfg).feature_spec()
    return pool_moments(list(moments.values()), bounds=spec.bounds, columns=spec.numeric_idx)


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
                            report_stats=site_report_metrics(report_stats))
    manifest = {
        "task": cfg.task.value,
        **tasks.task_for(cfg).model_io(scaler),
        "label_names": list(tasks.task_for(cfg).label_names()),
        "threshold": cfg.evaluation.threshold,
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
