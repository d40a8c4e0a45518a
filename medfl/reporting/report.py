"""``report.json``: the evidence a consortium reads to decide if the model is fit for each
hospital and patient group, built only from what the sites shared.

Inputs: the run's config, ``summary.json``, ``rounds.jsonl`` and ``evaluation.json`` (each
site's report statistics exactly as received). :func:`build_report` is a pure function of
them, so ``medfl report RUN_DIR`` rebuilds the same report later. The renderers
(``html.py``, ``model_card.py``) read only the :class:`Report` returned here (or loaded
from ``report.json`` with :meth:`Report.from_dict`).
"""

from __future__ import annotations

import math
from typing import Any, cast

import numpy as np

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.evaluation import population as pop
from medfl.evaluation.cellstats import CellStats, ReportStats
from medfl.evaluation.subgroups import Cell, attributes
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
    Explanations,
    Feature,
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


class _Populations:
    """Builds the report's populations from the sites' statistics."""

    def __init__(self, cfg: RunConfig, stats: dict[str, ReportStats], order: list[str]):
        self.cfg, self.stats, self.order = cfg, stats, [s for s in order if s in stats]
        self.cells: list[Cell] = tasks.task_for(cfg).cells()
        self.kind = "segmentation" if tasks.task_for(cfg).segmentation else "classification"
        t = cfg.evaluation.threshold
        self.cut = math.log(t) - math.log1p(-t)
        self.rng = np.random.default_rng(cfg.seed)

    def _cell(self, sites: list[str], i: int) -> list[tuple[str, CellStats]]:
        return [(s, self.stats[s].cells[i]) for s in sites if i < len(self.stats[s].cells)]

    def analysis(self, sites: list[str], i: int) -> tuple[pop.Analysis | None, list[str]]:
        """Classification analysis of cell ``i`` over ``sites`` and the sites it used."""
        rows = [(s, c) for s, c in self._cell(sites, i) if c.groups]
        if not rows:
            return None, []
        groups = [(j, g) for j, (_, c) in enumerate(rows) for g in c.groups or ()]
        exact: dict[str, float] = {}
        if len(rows) == 1 and rows[0][1].auroc is not None:
            exact["auroc"] = rows[0][1].auroc
        if all(c.brier_sum is not None for _, c in rows):
            exact["brier"] = _pooled_brier([c for _, c in rows])
        a = pop.analyse(pop.expand(groups, cut=self.cut),
                        threshold=self.cfg.evaluation.threshold, rng=self.rng, exact=exact)
        return a, [s for s, _ in rows]

    def metrics(self, sites: list[str], i: int) -> tuple[dict, list[str], pop.Analysis | None]:
        """Figures of cell ``i`` over ``sites`` (as :mod:`medfl.evaluation.population`
        records), the sites used, and the classification analysis behind them."""
        if self.kind == "segmentation":
            rows = [(s, c) for s, c in self._cell(sites, i) if c.n is not None]
            return pop.segmentation_metrics([c for _, c in rows]), [s for s, _ in rows], None
        a, used = self.analysis(sites, i)
        if a is None:
            out = pop.suppressed_metrics(pop.CLASSIFICATION)
            shown = [c for _, c in self._cell(sites, i) if c.brier_sum is not None]
            if shown:  # sums over >= k patients are shared even when a class is under k
                out["brier"] = pop.metric(_pooled_brier(shown))
            return out, [], None
        return pop.classification_metrics(a), used, a

    def _count(self, sites: list[str], i: int) -> int | None:
        """Test cases in cell ``i`` over ``sites``; None when every site withheld it."""
        shown = [c.n for _, c in self._cell(sites, i) if c.n is not None]
        return sum(shown) if shown else None

    def population(self, name: str, sites: list[str]) -> Population:
        """The population ``name`` over ``sites``: figures, curves, subgroups, gaps."""
        metrics, used, a = self.metrics(sites, 0)
        out = Population(
            name=name, scope="consortium" if name == "pooled" else "site",
            n_test=self._count(sites, 0), prevalence=a.prevalence if a else None,
            demographics=[], sites_included=used, metrics=_figures(metrics),
            roc=a.roc if a else None, reliability=a.reliability if a else None,
            subgroups=[], fairness=[])
        for attr, idx in attributes(self.cells).items():
            results = []
            for i in idx:
                subgroup, analysis = self._subgroup(attr, sites, i)
                out.demographics.append(Demographic(attr, subgroup.level, subgroup.n))
                out.subgroups.append(subgroup)
                shown = [c for _, c in self._cell(sites, i) if c.n is not None]
                results.append((i, analysis, shown))
            out.fairness += self._fairness(attr, results)
        return out

    def _subgroup(self, attr: str, sites: list[str], i: int
                  ) -> tuple[Subgroup, pop.Analysis | None]:
        """Cell ``i`` (a level of ``attr``) as a subgroup, and its analysis."""
        metrics, used, a = self.metrics(sites, i)
        n, k = self._count(sites, i), self.cfg.privacy.k_threshold
        reason = None
        if n is None:
            reason = f"a level of {attr} has fewer than k={k} patients (complementary suppression)"
        elif self.kind == "classification" and a is None:
            reason = f"a class has fewer than k={k} patients in a level of {attr}"
        return Subgroup(attribute=attr, level=self.cells[i].level, n=n,
                        suppressed=reason is not None, reason=reason,
                        metrics=_figures(metrics), sites_included=used), a

    def _fairness(self, attr: str, results: list) -> list[Comparison]:
        (ref_i, ref_a, ref_cells), rest = results[0], results[1:]
        out = []
        for i, a, comp_cells in rest:
            if self.kind == "segmentation":
                gaps = {"dice": pop.dice_gap(ref_cells, comp_cells)}
            elif ref_a is None or a is None:
                gaps = {g: dict(pop.SUPPRESSED_GAP) for g in CLASS_GAPS}
            else:
                gaps = {g: pop.gap(ref_a, a, _GAP_METRIC[g]) for g in CLASS_GAPS}
            out.append(Comparison(attribute=attr, reference=self.cells[ref_i].level,
                                  comparison=self.cells[i].level,
                                  gaps=gaps_from(gaps)))
        return out


def _pooled_brier(cells: list[CellStats]) -> float:
    """Mean Brier score over ``cells``, each sharing its Brier sum (so its ``n`` too)."""
    return (sum(cast(float, c.brier_sum) for c in cells)
            / sum(cast(int, c.n) for c in cells))


def _figures(records: dict[str, dict]) -> dict[str, Figure]:
    return {name: Figure.from_dict(record) for name, record in records.items()}


def _explanations(cfg: RunConfig, stats: dict[str, ReportStats],
                  order: list[str]) -> Explanations:
    task = tasks.task_for(cfg)
    shown = {s: st for s, st in stats.items() if st.explain and st.explain_n}
    if task.segmentation:
        return Explanations(method="none: the predicted mask is itself the model's spatial "
                                   "answer, reported through Dice, IoU and HD95")
    if not shown:
        return Explanations()
    total = sum(cast(int, st.explain_n) for st in shown.values())  # shown: explain_n set
    pooled = np.asarray(sum(np.asarray(st.explain) * cast(int, st.explain_n)
                            for st in shown.values()) / total)
    if task.is_tabular:
        names = task.feature_spec().feature_names
        feats = [Feature(name=n, mean_abs_shap=float(pooled[j]),
                         per_site={s: float(shown[s].explain[j]) if s in shown else None
                                   for s in order})
                 for j, n in enumerate(names)]
        feats.sort(key=lambda f: -(f.mean_abs_shap or 0.0))
        return Explanations(
            kind="shap", features=feats,
            method=("SHAP values of the model's logit against a public reference "
                    "row (all zeros in model-input space: the consortium-mean patient, "
                    "binary and one-hot features 0) for each site's test rows; each "
                    "site shares the mean |SHAP| per feature; pooled weighted by "
                    "test-set size."))
    g = int(round(math.sqrt(len(pooled))))

    def grid(v: Any) -> list[list[float]]:
        return np.asarray(v).reshape(g, g).round(5).tolist()

    return Explanations(
        kind="grad-cam", saliency_grid=grid(pooled),
        per_site={s: grid(shown[s].explain) if s in shown else None for s in order},
        method=(f"Grad-CAM of the positive logit on each site's test images, summed "
                f"into a {g}x{g} grid, each image normalised to 1; each site shares "
                "the mean share per cell; pooled weighted by test-set size."),
        site_local_note=("Grad-CAM overlays of individual images are in each "
                         "hospital's site-local report (<site-dir>/reports/<run>/"
                         "report.html); images are PHI and never leave the site."))


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


def _limitations(cfg: RunConfig, report: Report) -> list[str]:
    out = [medfl.DISCLAIMER,
           "Evaluated on each site's held-out split of its own data; no external "
           "validation set. Figures are estimates with the CIs shown."]
    for p in report.populations[1:]:
        out += _population_limits(p)
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


def _population_limits(p: Population) -> list[str]:
    """What a site's figures leave out: a test set or a class under k, hidden subgroups."""
    out = []
    auroc = p.metrics.get("auroc")
    if p.n_test is None:
        out.append(f"{p.name}: test set under k; no figures.")
    elif auroc is not None and auroc.suppressed:
        out.append(f"{p.name}: a class under k in its test set; discrimination "
                   "figures suppressed, and the site is missing from pooled figures "
                   "that need them.")
    hidden = sorted({str(s.attribute) for s in p.subgroups if s.suppressed})
    if hidden:
        out.append(f"{p.name}: subgroup figures suppressed for {', '.join(hidden)}.")
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
                 site_stats: dict[str, ReportStats], created_utc: str) -> Report:
    """The run's ``report.json`` (see the module docstring and the renderers)."""
    task = tasks.task_for(cfg)
    order = [s.name for s in summary.sites]
    pops = _Populations(cfg, site_stats, order)
    segmentation = pops.kind == "segmentation"
    report = Report(
        run_name=summary.run_name, created_utc=created_utc, task=cfg.task.value,
        kind=pops.kind, dataset=DatasetCard(**task.dataset_card()),
        disclaimer=medfl.DISCLAIMER,
        label_names=["background", "lesion"] if segmentation else list(task.label_names()),
        k_threshold=cfg.privacy.k_threshold,
        operating_threshold=Threshold(
            value=cfg.evaluation.threshold,
            rule="fixed, declared before the run (evaluation.threshold)"),
        methods=report_methods(cfg, pops.kind), training=_training(cfg, summary),
        privacy=_privacy(summary), rounds=_rounds(rounds),
        populations=[pops.population("pooled", pops.order),
                     *(pops.population(s, [s]) for s in pops.order)],
        explanations=_explanations(cfg, site_stats, order), personalised=_personalised(summary))
    n_train = {s.name: s.n_train for s in summary.sites}
    for p in report.populations:
        if p.pooled:
            p.n_train = sum(v for v in n_train.values() if v)
        else:
            p.n_train = n_train.get(p.name)
    report.limitations = _limitations(cfg, report)
    return report
