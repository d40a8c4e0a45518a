"""``report.json``: the evidence a consortium reads to decide if the model is fit for each
hospital and patient group, built only from what the sites shared.

Inputs: the run's config, ``summary.json``, ``rounds.jsonl`` and ``evaluation.json`` (each
site's report release exactly as received: noisy histograms or sums, with the noise's
standard deviation; :class:`~medfl.evaluation.release.ReportStats`). Every population's
figures are computed from the sum of its sites' noisy releases
(:mod:`medfl.evaluation.population`, :mod:`medfl.evaluation.population_seg`).
:func:`build_report` is a pure function of them, so ``medfl report RUN_DIR`` rebuilds the
same report later (the bootstrap is seeded with the run's seed). The renderers
(``html.py``, ``model_card.py``) read only the :class:`Report` returned here (or loaded
from ``report.json`` with :meth:`Report.from_dict`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.evaluation import population as pop
from medfl.evaluation.histograms import operating_point
from medfl.evaluation.population_seg import (
    PooledSums,
    dice_gap,
    image_diagonal,
    segmentation_metrics,
)
from medfl.evaluation.population_seg import floor_reason as seg_floor_reason
from medfl.evaluation.release import ReportStats
from medfl.evaluation.subgroups import Cell, attributes
from medfl.reporting.class_weight import class_weight_text
from medfl.reporting.explanations import explanations
from medfl.reporting.methods import report_methods
from medfl.reporting.population_schema import (
    Comparison,
    Demographic,
    Figure,
    Population,
    Subgroup,
    gaps_from,
)
from medfl.reporting.report_schema import (
    SCHEMA_VERSION,
    DatasetCard,
    Personalised,
    Problem,
    Report,
    ReportPrivacy,
    RoundRecord,
    SitePrivacy,
    Threshold,
    Training,
)
from medfl.reporting.summary_schema import Summary

__all__ = ["SCHEMA_VERSION", "build_report"]
CLASS_GAPS = ("auroc", "tpr", "fpr", "calibration")
_GAP_METRIC = {"auroc": "auroc", "tpr": "sensitivity", "fpr": "fpr",
               "calibration": "calibration"}
_Cell = pop.Analysis | PooledSums
#: The report's word on per-site figures under secure aggregation.
SECURE_NOTE = ("Secure aggregation (SecAgg+): the server saw only the sum over sites of the "
               "report's statistics, so the figures are the consortium's; under secure "
               "aggregation each site's own figures stay at the site: see its site-local "
               "report (<site-dir>/reports/<run>/report.html).")

class _Populations:
    """Builds the report's populations from the sites' noisy report releases: every
    population's cells are sums over its sites' releases (one site's own, or every
    reporting site's for the pooled population)."""

    def __init__(self, cfg: RunConfig, stats: dict[str, ReportStats], order: list[str]):
        self.cfg, self.stats = cfg, stats
        self.order = [s for s in order if s in stats] + sorted(set(stats) - set(order))
        task = tasks.task_for(cfg)
        self.cells: list[Cell] = task.cells()
        self.kind = "segmentation" if task.segmentation else "classification"
        self.k = cfg.privacy.k_threshold
        self.diagonal = image_diagonal(cfg.data.image_size) if task.segmentation else 1.0
        self.rng = np.random.default_rng(cfg.seed)
        self._done: dict[tuple[tuple[str, ...], int], _Cell] = {}

    def _rows(self, sites: list[str], i: int) -> list[pop.SiteCell]:
        out = []
        for s in sites:
            st = self.stats[s]
            std = st.hist_std if self.kind == "classification" else st.sums_std
            out.append(pop.SiteCell(s, st.cells[i], std))
        return out

    def cell(self, sites: list[str], i: int) -> _Cell:
        """Cell ``i`` pooled over ``sites`` (analysed once, so that a gap pairs the same
        replicates its subgroups show)."""
        key = (tuple(sites), i)
        if key not in self._done:
            rows = self._rows(sites, i)
            if self.kind == "segmentation":
                self._done[key] = PooledSums.pool(rows)
            else:
                self._done[key] = pop.analyse(
                    pop.PooledHistogram.pool(rows), threshold=self.cfg.evaluation.threshold,
                    k=self.k, rng=self.rng)
        return self._done[key]

    def second_operating_point(self) -> dict[str, Any] | None:
        """The pooled histogram's second operating point (``evaluation.operating-
        sensitivity``; :func:`medfl.evaluation.histograms.operating_point`)."""
        target = self.cfg.evaluation.operating_sensitivity
        hist = pop.PooledHistogram.pool(self._rows(self.order, 0)).hist
        point = operating_point(hist, threshold=self.cfg.evaluation.threshold,
                                sensitivity=target)
        return None if point is None else {"target": target, **point}

    def metrics(self, c: _Cell) -> dict[str, dict]:
        """The figures of a pooled cell (as :mod:`medfl.evaluation.population` records)."""
        if isinstance(c, PooledSums):
            return segmentation_metrics(c, k=self.k, diagonal=self.diagonal)
        return pop.classification_metrics(c)

    @staticmethod
    def count(c: _Cell) -> tuple[int, float]:
        """A cell's noisy count, rounded (never below 0), and its noise sd."""
        if isinstance(c, PooledSums):
            n, var = c.get("n")
            return max(int(round(n)), 0), math.sqrt(var)
        return max(int(round(c.n)), 0), c.n_sd

    def reason(self, c: _Cell) -> str | None:
        """Why a cell's figures are not shown, or None."""
        if isinstance(c, PooledSums):
            return seg_floor_reason(c, k=self.k)
        return c.reason

    def population(self, name: str, sites: list[str]) -> Population:
        """The population ``name`` over ``sites``: figures, curves, subgroups, gaps."""
        whole = self.cell(sites, 0)
        analysis = whole if isinstance(whole, pop.Analysis) else None
        n, sd = self.count(whole)
        out = Population(
            name=name, scope="consortium" if name == "pooled" else "site",
            n_test=n, n_test_noise_sd=sd,
            prevalence=analysis.prevalence if analysis else None,
            demographics=[], sites_included=list(sites), metrics=_figures(self.metrics(whole)),
            roc=analysis.roc if analysis else None,
            reliability=analysis.reliability if analysis else None,
            subgroups=[], fairness=[])
        for attr, idx in attributes(self.cells).items():
            for i in idx:
                subgroup = self._subgroup(attr, sites, i)
                out.demographics.append(Demographic(attr, subgroup.level, subgroup.n,
                                                    subgroup.n_noise_sd))
                out.subgroups.append(subgroup)
            out.fairness += self._fairness(attr, sites, idx)
        return out

    def _subgroup(self, attr: str, sites: list[str], i: int) -> Subgroup:
        """Cell ``i`` (a level of ``attr``) over ``sites`` as a subgroup."""
        c = self.cell(sites, i)
        n, sd = self.count(c)
        reason = self.reason(c)
        return Subgroup(attribute=attr, level=self.cells[i].level, n=n, n_noise_sd=sd,
                        suppressed=reason is not None, reason=reason,
                        metrics=_figures(self.metrics(c)), sites_included=list(sites))

    def _fairness(self, attr: str, sites: list[str], idx: list[int]) -> list[Comparison]:
        ref = self.cell(sites, idx[0])
        out = []
        for i in idx[1:]:
            comp = self.cell(sites, i)
            if isinstance(ref, PooledSums) and isinstance(comp, PooledSums):
                gaps = {"dice": dice_gap(ref, comp, k=self.k)}
            elif isinstance(ref, pop.Analysis) and isinstance(comp, pop.Analysis):
                gaps = {g: pop.gap(ref, comp, _GAP_METRIC[g]) for g in CLASS_GAPS}
            else:  # pragma: no cover - one run has one kind
                raise TypeError("cells of one attribute are of different kinds")
            out.append(Comparison(attribute=attr, reference=self.cells[idx[0]].level,
                                  comparison=self.cells[i].level, gaps=gaps_from(gaps)))
        return out


def _figures(records: dict[str, dict]) -> dict[str, Figure]:
    return {name: Figure.from_dict(record) for name, record in records.items()}


def _rounds(records: list[dict[str, Any]]) -> list[RoundRecord]:
    """The rounds of ``rounds.jsonl`` (as written by the ServerApp) in the report's terms."""
    out = []
    for r in records:
        pooled = r.get("global") or {}
        problems = [*(r.get("train_problems") or []), *(r.get("evaluate_problems") or [])]
        out.append(RoundRecord(
            round=r.get("round"),
            metrics={m: pooled.get(m) for m in ("accuracy", "auroc", "loss", "dice")},
            epsilon={s: t.get("epsilon") for s, t in (r.get("train") or {}).items()},
            problems=[Problem(p.get("site"), p.get("status"), p.get("reason"))
                      for p in problems]))
    return out


def noisy(stats: dict[str, ReportStats]) -> bool:
    """Whether any site's report release carries DP noise."""
    return any(st.hist_std > 0 or any(v > 0 for v in st.sums_std) for st in stats.values())


def _limitations(cfg: RunConfig, report: Report, *, with_noise: bool,
                 secure: bool = False) -> list[str]:
    out = [medfl.DISCLAIMER,
           "Evaluated on each site's held-out split of its own data; no external "
           "validation set. Figures are estimates with the CIs shown."]
    if secure:
        out.append(SECURE_NOTE)
    if with_noise:
        out.append("Every figure is computed from statistics that each site released with "
                   "Gaussian noise (differential privacy on its test set; ε per site under "
                   "Privacy), and every count is a noisy one (marked ≈). The 95% CIs include "
                   "both the sampling error and that noise, so they are wider than "
                   "intervals from exact statistics, most of all for small sites and "
                   "subgroups.")
    flagged = [(p.name, f.attribute, f.comparison, g)
               for p in report.populations for f in p.fairness
               for g, v in f.gaps.items() if v.flagged]
    for name, attr, level, g in flagged:
        out.append(f"{name}: the {g} gap for {attr} = {level} has a 95% CI excluding 0.")
    tested = sum(1 for p in report.populations for f in p.fairness
                 for v in f.gaps.values() if not v.suppressed)
    if tested:
        out.append(f"{tested} fairness gaps were tested without correction for multiple "
                   "comparisons; read flags as prompts for a closer look, not findings.")
    out += tasks.task_for(cfg).report_caveats()
    return out


def _personalised(summary: Summary) -> Personalised | None:
    """The personalised evaluation's headline (evaluation.personal-epochs), or None."""
    p = summary.personal
    if p is None:
        return None
    return Personalised(method=p.method, mean_site_accuracy=p.mean_site_accuracy,
                        mean_site_dice=p.mean_site_dice, pooled=p.metrics,
                        sites={s.name: s.personal_metrics for s in summary.sites})


def _privacy(summary: Summary) -> ReportPrivacy:
    privacy = summary.privacy
    per_patient = privacy.per_patient_epsilon or {}
    return ReportPrivacy(
        dp_sgd=privacy.dp_sgd, mechanisms=privacy.mechanisms,
        target_epsilon=privacy.target_epsilon, delta=privacy.target_delta,
        accountant=privacy.accountant, k_threshold=privacy.k_threshold,
        non_dp_releases=privacy.non_dp_releases,
        sites=[SitePrivacy(s.name, s.epsilon, s.delta, s.noise_multiplier, s.steps,
                           test_epsilon=s.test_epsilon,
                           per_patient_epsilon=per_patient.get(s.name))
               for s in summary.sites],
        test_epsilon_target=privacy.test_epsilon_target, composition=privacy.composition)


def _training(cfg: RunConfig, summary: Summary) -> Training:
    return Training(strategy=summary.strategy, model=summary.model, rounds=summary.rounds,
                    rounds_planned=summary.rounds_planned,
                    local_epochs=cfg.train.local_epochs, batch_size=cfg.train.batch_size,
                    optimizer=cfg.train.optimizer, lr=cfg.train.lr, seed=cfg.seed)


def build_report(cfg: RunConfig, *, summary: Summary, rounds: list[dict[str, Any]],
                 site_stats: dict[str, ReportStats], created_utc: str,
                 secure_sites: list[str] | None = None) -> Report:
    """The run's ``report.json`` (see the module docstring and the renderers).

    ``secure_sites``: the sites in a secure sum (secure aggregation: ``site_stats`` then
    holds only that sum, as one release): it gives the pooled figures, and no site has
    report figures of its own (:data:`SECURE_NOTE`).
    """
    task = tasks.task_for(cfg)
    order = [s.name for s in summary.sites]
    pops = _Populations(cfg, site_stats, order)
    own_figures = pops.order if secure_sites is None else []
    segmentation = pops.kind == "segmentation"
    report = Report(
        run_name=summary.run_name, created_utc=created_utc, task=cfg.task.value,
        kind=pops.kind, dataset=DatasetCard(**task.dataset_card()),
        disclaimer=medfl.DISCLAIMER,
        label_names=["background", "lesion"] if segmentation else list(task.label_names()),
        k_threshold=cfg.privacy.k_threshold,
        operating_threshold=Threshold(
            value=cfg.evaluation.threshold,
            rule="fixed, declared before the run (evaluation.threshold)",
            class_weight=class_weight_text(summary.class_weight),
            second=None if segmentation else pops.second_operating_point()),
        methods=report_methods(cfg, pops.kind, site_stats), training=_training(cfg, summary),
        privacy=_privacy(summary), rounds=_rounds(rounds),
        populations=[pops.population("pooled", pops.order),
                     *(pops.population(s, [s]) for s in own_figures)],
        explanations=explanations(cfg, site_stats, order),
        personalised=_personalised(summary))
    if secure_sites is not None:
        report.populations[0].sites_included = list(secure_sites)
    n_train = {s.name: s.n_train for s in summary.sites}
    for p in report.populations:  # the training cases of the same sites as the figures
        p.n_train = sum(n_train.get(s) or 0 for s in p.sites_included or []) if p.pooled \
            else n_train.get(p.name)
    report.limitations = _limitations(cfg, report, with_noise=noisy(site_stats),
                                      secure=secure_sites is not None)
    return report
