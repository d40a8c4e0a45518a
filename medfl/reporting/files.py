"""Write (or rewrite) a run's report files from its directory: ``report.json``,
``report.html``, ``sites/<site>/report.html``, ``MODEL_CARD.md``, and the report's figures
in ``summary.json``. ``medfl report RUN_DIR`` and the ServerApp both call :func:`write_reports`.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from medfl import tasks
from medfl.config import parse_recorded_config
from medfl.errors import ConfigError, DataError
from medfl.evaluation.release import ReportStats
from medfl.evaluation.release_sum import site_releases
from medfl.io import atomic_write_json, atomic_write_text
from medfl.reporting.population_schema import Population
from medfl.reporting.report import build_report
from medfl.reporting.report_schema import Report
from medfl.reporting.run_dir import jsonable
from medfl.reporting.schema import read_json
from medfl.reporting.summary_schema import Metrics, Summary

#: the sites' report statistics exactly as received (aggregates only; see PRIVACY.md), or
#: under secure aggregation their sum (:mod:`medfl.evaluation.release_sum`)
EVALUATION_FILE = "evaluation.json"
SUMMARY_METRICS = ("accuracy", "auroc", "sensitivity", "specificity", "ppv", "npv", "f1",
                   "brier", "ece", "dice", "iou", "hd95")


def _rounds(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    out = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                raise ConfigError(f"rounds.jsonl line {i} is not valid JSON") from None
    return out


def _figures(population: Population) -> Metrics:
    """A population's report figures in summary.json's shape."""
    m = population.metrics
    values = {k: m[k].value for k in SUMMARY_METRICS if k in m}
    subgroups: dict[str, dict[str, Any]] = {}
    for s in population.subgroups:
        subgroups.setdefault(str(s.attribute), {})[str(s.level)] = {
            "n": s.n, "suppressed": s.suppressed,
            **{k: v.value for k, v in s.metrics.items()}}
    return Metrics(values, ci={k: v.ci for k, v in m.items()},
                   estimated=sorted(k for k, v in m.items() if v.estimated),
                   subgroups=subgroups)


def _merge(metrics: Metrics, figures: Metrics) -> None:
    """``metrics`` gains the report's ``figures`` (a figure of both: the report's)."""
    metrics.values.update(figures.values)
    metrics.ci, metrics.estimated = figures.ci, figures.estimated
    metrics.subgroups = figures.subgroups


def _site_values(report: Report, name: str) -> list[float]:
    """Figure ``name`` of each site whose report figure is defined (and shown)."""
    figures = [p.metrics.get(name) for p in report.site_populations]
    return [f.value for f in figures if f is not None and f.value is not None]


def _site_mean(report: Report, name: str) -> float | None:
    """The unweighted mean of figure ``name`` over the sites whose report figure is
    defined (and shown)."""
    values = _site_values(report, name)
    return sum(values) / len(values) if values else None


def merge_into_summary(summary: Summary, report: Report) -> Summary:
    """summary.json's per-site and global metrics gain the report's figures, CIs and
    subgroups, and the headline mean per-site accuracy (or Dice) is recomputed from them.

    The report's release is far less noisy than the monitoring evaluation that the
    summary was first written from, so its figures replace the monitoring ones (a site
    the report has no figures for keeps its monitoring ones); a site whose report figure
    is undefined or under the utility floor is left out of the mean.
    """
    pops = {p.name: p for p in report.populations}
    for site in summary.sites:
        if site.name in pops:
            _merge(site.metrics, _figures(pops[site.name]))
            site.n_test = pops[site.name].n_test  # the report's (less noisy) count
    pooled = pops["pooled"]
    _merge(summary.pooled.metrics, _figures(pooled))
    summary.pooled.auroc_method = report.methods["metrics"]
    summary.pooled.n_test = pooled.n_test
    summary.pooled.auroc_sites_excluded = len(
        [s for s in summary.sites if s.name not in (pooled.sites_included or [])])
    headline = "dice" if summary.segmentation else "accuracy"
    if report.site_populations and summary.segmentation:
        summary.mean_site_dice = _site_mean(report, "dice")
    elif report.site_populations:
        summary.mean_site_accuracy = _site_mean(report, "accuracy")
    if report.site_populations:
        summary.sites_reported = len(_site_values(report, headline))
    return summary


def read_site_stats(raw: dict[str, Any], *, n_cells: int) -> dict[str, ReportStats]:
    """Each site's report release from ``evaluation.json``'s content (under secure
    aggregation: the one pooled release, under ``SECURE_SUM_KEY``); ``DataError``
    naming the site when one does not hold ``n_cells`` cells."""
    out = {}
    for site, m in site_releases(raw)[0].items():
        try:
            out[site] = ReportStats.from_metrics(m, n_cells=n_cells)
        except (ValueError, TypeError, KeyError) as e:
            raise DataError(f"{EVALUATION_FILE}: the report release of site {site!r} "
                            f"does not hold this run's {n_cells} cells ({e}); rerun the "
                            "final evaluation or rebuild with the MedFL that wrote "
                            "it") from None
    return out


def write_reports(run_path: Path) -> dict[str, Any]:
    """Build ``report.json`` from the run directory, merge its figures into
    ``summary.json``, then render every report page; returns ``report.json``'s content.

    Raises ``ConfigError`` when a file the report needs is missing or unreadable, and
    ``DataError`` when ``summary.json`` has a schema this version does not read. Every
    file is replaced atomically, so a failure leaves the previous version intact.
    """
    run_path = Path(run_path)
    config = read_json(run_path / "config.json")
    cfg = parse_recorded_config(config)
    summary = Summary.load(run_path / "summary.json")
    raw = read_json(run_path / EVALUATION_FILE)
    n_cells = len(tasks.task_for(cfg).cells())
    stats = read_site_stats(raw, n_cells=n_cells)
    report = build_report(
        cfg, summary=summary, rounds=_rounds(run_path / "rounds.jsonl"), site_stats=stats,
        created_utc=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        secure_sites=site_releases(raw)[1])
    content = jsonable(report.to_dict())
    atomic_write_json(run_path / "report.json", content)
    atomic_write_json(run_path / "summary.json",
                      jsonable(merge_into_summary(summary, report).to_dict()))
    render_reports(run_path, Report.from_dict(content))
    return content


def render_reports(run_path: Path, report: Report) -> None:
    """``report.html``, ``sites/<site>/report.html`` and ``MODEL_CARD.md`` from a report."""
    from medfl.reporting.html import render_report_html
    from medfl.reporting.model_card import render_model_card

    atomic_write_text(run_path / "report.html", render_report_html(report))
    for p in report.populations[1:]:
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", p.name):
            raise ConfigError("a site name is not a plain folder name (letters, digits, "
                              "'.', '_', '-', not starting with '.'); its page is not written")
        atomic_write_text(run_path / "sites" / p.name / "report.html",
                          render_report_html(report, site=p.name))
    atomic_write_text(run_path / "MODEL_CARD.md", render_model_card(report))
