"""``report.json``: the evidence a consortium reads to decide if the model is fit for each
hospital and patient group, built only from what the sites shared.

Inputs: the run's config, ``summary.json``, ``rounds.jsonl`` and ``evaluation.json`` (each
site's report statistics exactly as received). :func:`build_report` is a pure function of
them, so ``medfl report RUN_DIR`` rebuilds the same report later. The renderers
(``html.py``, ``model_card.py``) read only the dict returned here.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.evaluation import population as pop
from medfl.evaluation.cellstats import CellStats, ReportStats
from medfl.evaluation.subgroups import Cell, attributes, cells

SCHEMA_VERSION = 1
CLASS_GAPS = ("auroc", "tpr", "fpr", "calibration")
_GAP_METRIC = {"auroc": "auroc", "tpr": "sensitivity", "fpr": "fpr",
               "calibration": "calibration"}


def _methods(cfg: RunConfig, kind: str) -> dict[str, str]:
    k = cfg.privacy.k_threshold
    stats = ("Each site evaluated the final global model on its own test set and shared, "
             "per cell (the whole test set and each declared subgroup), only aggregates over "
             f"at least k={k} patients: for each class, its sorted scores (logit scale) cut "
             "into groups of at least k with their size, mean and variance, cut at the "
             "operating threshold when both sides hold k or more; the summed log-loss and "
             "Brier score; the site's exact AUROC.")
    if kind == "segmentation":
        stats = (f"Each site shared, per cell of at least k={k} images, the sums and sums of "
                 "squares of per-image Dice, IoU (MONAI, lesion class) and 95th-percentile "
                 "Hausdorff distance (pixels, over images where both masks are non-empty).")
    return {
        "statistics": stats,
        "metrics": (
            "Per-image Dice, IoU and HD95 averaged over images, pooled from the sites' sums."
            if kind == "segmentation" else
            "The server expands each shared group into pseudo-patients with the group's exact "
            "size, mean and variance, kept on the group's side of the threshold, and computes "
            "the metrics on them as on real patients. Confusion-based figures are exact when "
            "every group lies on one side of the threshold; otherwise they are marked "
            "estimated. A single site's AUROC and Brier score are its exact values."),
        "ci": ("95% CIs: t-intervals from the sums of squares; gaps: Welch t-intervals "
               "(Welch-Satterthwaite degrees of freedom). Images are treated as independent "
               "(clustering by site is ignored). HD95 averages only the images where both "
               "masks are non-empty (count given): a missed lesion drops out of it."
               if kind == "segmentation" else
               f"95% CIs: percentile bootstrap with {pop.B} replicates over pseudo-patients "
               "resampled within each site and class, clipped to the metric's range. The "
               "class sizes stay fixed, so intervals of prevalence-dependent figures (PPV, "
               "NPV, accuracy, F1, Brier score, ECE) leave out that source of variation and "
               "are somewhat narrow; an estimated split is resampled as if it were data."),
        "suppression": (f"Cells under k={k} patients are suppressed at the site, as is a "
                        "class's detail under k; an attribute's levels are shown only if "
                        "every level passes (complementary suppression). Suppressed cells "
                        "are shown as suppressed, never as 0."),
        "fairness": ("Gaps are a level's figure minus the reference level's (the first "
                     "listed); flagged when the 95% CI excludes 0, unadjusted for multiple "
                     "comparisons: with many gaps tested, about 1 in 20 true zero gaps is "
                     "flagged by chance. Calibration gap: "
                     "difference of calibration-in-the-large (mean predicted risk minus "
                     "observed rate)." if kind != "segmentation" else
                     "Dice gap: a level's mean Dice minus the reference level's; flagged "
                     "when the 95% CI excludes 0 (unadjusted for multiple comparisons)."),
    }


class _Populations:
    """Builds the report's populations from the sites' statistics."""

    def __init__(self, cfg: RunConfig, stats: dict[str, ReportStats], order: list[str]):
        self.cfg, self.stats, self.order = cfg, stats, [s for s in order if s in stats]
        self.cells: list[Cell] = cells(cfg)
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
        groups = [(j, g) for j, (_, c) in enumerate(rows) for g in c.groups]
        exact: dict[str, float] = {}
        if len(rows) == 1 and rows[0][1].auroc is not None:
            exact["auroc"] = rows[0][1].auroc
        if all(c.brier_sum is not None for _, c in rows):
            exact["brier"] = sum(c.brier_sum for _, c in rows) / sum(c.n for _, c in rows)
        a = pop.analyse(pop.expand(groups, cut=self.cut),
                        threshold=self.cfg.evaluation.threshold, rng=self.rng, exact=exact)
        return a, [s for s, _ in rows]

    def metrics(self, sites: list[str], i: int) -> tuple[dict, list[str], pop.Analysis | None]:
        if self.kind == "segmentation":
            rows = [(s, c) for s, c in self._cell(sites, i) if c.n is not None]
            return pop.segmentation_metrics([c for _, c in rows]), [s for s, _ in rows], None
        a, used = self.analysis(sites, i)
        if a is None:
            out = pop.suppressed_metrics(pop.CLASSIFICATION)
            shown = [c for _, c in self._cell(sites, i) if c.brier_sum is not None]
            if shown:  # sums over >= k patients are shared even when a class is under k
                out["brier"] = pop.metric(sum(c.brier_sum for c in shown)
                                          / sum(c.n for c in shown))
            return out, [], None
        return pop.classification_metrics(a), used, a

    def population(self, name: str, sites: list[str]) -> dict[str, Any]:
        metrics, used, a = self.metrics(sites, 0)
        n_shown = [c.n for _, c in self._cell(sites, 0) if c.n is not None]
        out = {
            "name": name, "scope": "consortium" if name == "pooled" else "site",
            "n_test": sum(n_shown) if n_shown else None,
            "prevalence": a.prevalence if a else None,
            "demographics": [], "sites_included": used, "metrics": metrics,
            "roc": a.roc if a else None, "reliability": a.reliability if a else None,
            "subgroups": [], "fairness": [],
        }
        for attr, idx in attributes(self.cells).items():
            results = []
            for i in idx:
                cell_rows = self._cell(sites, i)
                ns = [c.n for _, c in cell_rows if c.n is not None]
                m, used_i, a_i = self.metrics(sites, i)
                n = sum(ns) if ns else None
                reason = None
                k = self.cfg.privacy.k_threshold
                if n is None:
                    reason = (f"a level of {attr} has fewer than k={k} patients "
                              "(complementary suppression)")
                elif self.kind == "classification" and a_i is None:
                    reason = f"a class has fewer than k={k} patients in a level of {attr}"
                out["demographics"].append({"attribute": attr, "level": self.cells[i].level,
                                            "n": n})
                out["subgroups"].append({"attribute": attr, "level": self.cells[i].level,
                                         "n": n, "suppressed": reason is not None,
                                         "reason": reason, "metrics": m,
                                         "sites_included": used_i})
                results.append((i, a_i, [c for _, c in cell_rows if c.n is not None]))
            out["fairness"] += self._fairness(attr, results)
        return out

    def _fairness(self, attr: str, results: list) -> list[dict]:
        (ref_i, ref_a, ref_cells), rest = results[0], results[1:]
        out = []
        for i, a, comp_cells in rest:
            if self.kind == "segmentation":
                gaps = {"dice": pop.dice_gap(ref_cells, comp_cells)}
            elif ref_a is None or a is None:
                gaps = {g: dict(pop.SUPPRESSED_GAP) for g in CLASS_GAPS}
            else:
                gaps = {g: pop.gap(ref_a, a, _GAP_METRIC[g]) for g in CLASS_GAPS}
            out.append({"attribute": attr, "reference": self.cells[ref_i].level,
                        "comparison": self.cells[i].level, "gaps": gaps})
        return out


def _explanations(cfg: RunConfig, stats: dict[str, ReportStats], order: list[str]) -> dict:
    shown = {s: st for s, st in stats.items() if st.explain and st.explain_n}
    base = {"kind": None, "method": "", "features": [], "saliency_grid": None, "per_site": {},
            "site_local_note": ""}
    if tasks.task_for(cfg).segmentation:
        return {**base, "method": "none: the predicted mask is itself the model's spatial "
                                  "answer, reported through Dice, IoU and HD95"}
    if not shown:
        return base
    total = sum(st.explain_n for st in shown.values())
    pooled = sum(np.asarray(st.explain) * st.explain_n for st in shown.values()) / total
    if cfg.is_tabular:
        names = tasks.task_for(cfg).feature_spec().feature_names
        feats = [{"name": n, "mean_abs_shap": float(pooled[j]),
                  "per_site": {s: (float(shown[s].explain[j]) if s in shown else None)
                               for s in order}} for j, n in enumerate(names)]
        feats.sort(key=lambda f: -f["mean_abs_shap"])
        return {**base, "kind": "shap", "features": feats,
                "method": ("SHAP values of the model's logit against a public reference "
                           "row (all zeros in model-input space: the consortium-mean patient, "
                           "binary and one-hot features 0) for each site's test rows; each "
                           "site shares the mean |SHAP| per feature; pooled weighted by "
                           "test-set size.")}
    g = int(round(math.sqrt(len(pooled))))
    grid = lambda v: np.asarray(v).reshape(g, g).round(5).tolist()  # noqa: E731
    return {**base, "kind": "grad-cam", "saliency_grid": grid(pooled),
            "per_site": {s: (grid(shown[s].explain) if s in shown else None) for s in order},
            "method": (f"Grad-CAM of the positive logit on each site's test images, summed "
                       f"into a {g}x{g} grid, each image normalised to 1; each site shares "
                       "the mean share per cell; pooled weighted by test-set size."),
            "site_local_note": ("Grad-CAM overlays of individual images are in each "
                                "hospital's site-local report (<site-dir>/reports/<run>/"
                                "report.html); images are PHI and never leave the site.")}


def _rounds(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in records:
        g = r.get("global") or {}
        out.append({
            "round": r.get("round"),
            "metrics": {m: g.get(m) for m in ("accuracy", "auroc", "loss", "dice")},
            "epsilon": {s: t.get("epsilon") for s, t in (r.get("train") or {}).items()},
            "problems": [{k: p.get(k) for k in ("site", "status", "reason")}
                         for p in (r.get("train_problems") or [])
                         + (r.get("evaluate_problems") or [])],
        })
    return out


def _limitations(cfg: RunConfig, report: dict[str, Any]) -> list[str]:
    out = [medfl.DISCLAIMER,
           "Evaluated on each site's held-out split of its own data; no external "
           "validation set. Figures are estimates with the CIs shown."]
    for p in report["populations"][1:]:
        if p["n_test"] is None:
            out.append(f"{p['name']}: test set under k; no figures.")
        elif p["metrics"].get("auroc", {}).get("suppressed"):
            out.append(f"{p['name']}: a class under k in its test set; discrimination "
                       "figures suppressed, and the site is missing from pooled figures "
                       "that need them.")
        hidden = sorted({s["attribute"] for s in p["subgroups"] if s["suppressed"]})
        if hidden:
            out.append(f"{p['name']}: subgroup figures suppressed for {', '.join(hidden)}.")
    flagged = [(p["name"], f["attribute"], f["comparison"], g)
               for p in report["populations"] for f in p["fairness"]
               for g, v in f["gaps"].items() if v["flagged"]]
    for name, attr, level, g in flagged:
        out.append(f"{name}: the {g} gap for {attr} = {level} has a 95% CI excluding 0.")
    tested = sum(1 for p in report["populations"] for f in p["fairness"]
                 for v in f["gaps"].values() if not v["suppressed"])
    if tested:
        out.append(f"{tested} fairness gaps were tested without correction for multiple "
                   "comparisons; read flags as prompts for a closer look, not findings.")
    out += tasks.task_for(cfg).report_caveats()
    return out


def _personalised(summary: dict[str, Any]) -> dict[str, Any] | None:
    """The personalised evaluation's headline (evaluation.personal-epochs), or None."""
    p = summary.get("personal")
    if p is None:
        return None
    return {"method": p["method"], "mean_site_accuracy": p.get("mean_site_accuracy"),
            "mean_site_dice": p.get("mean_site_dice"), "pooled": p["metrics"],
            "sites": {s["name"]: s.get("personal_metrics") for s in summary["sites"]}}


def build_report(cfg: RunConfig, *, summary: dict[str, Any], rounds: list[dict[str, Any]],
                 site_stats: dict[str, ReportStats], created_utc: str) -> dict[str, Any]:
    """The run's ``report.json`` (see the module docstring and the renderers)."""
    order = [s["name"] for s in summary["sites"]]
    pops = _Populations(cfg, site_stats, order)
    privacy = summary["privacy"]
    report = {
        "schema_version": SCHEMA_VERSION, "run_name": summary["run_name"],
        "created_utc": created_utc, "task": cfg.task.value, "kind": pops.kind,
        "dataset": tasks.task_for(cfg).dataset_card(), "disclaimer": medfl.DISCLAIMER,
        "label_names": (["background", "lesion"] if pops.kind == "segmentation"
                        else list(tasks.task_for(cfg).label_names())),
        "k_threshold": cfg.privacy.k_threshold,
        "operating_threshold": {"value": cfg.evaluation.threshold,
                                "rule": "fixed, declared before the run (evaluation.threshold)"},
        "methods": _methods(cfg, pops.kind),
        "training": {"strategy": summary["strategy"], "model": summary["model"],
                     "rounds": summary["rounds"], "rounds_planned": summary["rounds_planned"],
                     "local_epochs": cfg.train.local_epochs, "batch_size": cfg.train.batch_size,
                     "optimizer": cfg.train.optimizer, "lr": cfg.train.lr, "seed": cfg.seed},
        "privacy": {"dp_sgd": privacy["dp_sgd"], "mechanisms": privacy["mechanisms"],
                    "target_epsilon": privacy["target_epsilon"],
                    "delta": privacy["target_delta"], "accountant": privacy["accountant"],
                    "k_threshold": privacy["k_threshold"],
                    "non_dp_releases": privacy["non_dp_releases"],
                    "sites": [{"name": s["name"], "epsilon": s["epsilon"], "delta": s["delta"],
                               "noise_multiplier": s["noise_multiplier"], "steps": s["steps"]}
                              for s in summary["sites"]]},
        "rounds": _rounds(rounds),
        "populations": [pops.population("pooled", pops.order)]
        + [pops.population(s, [s]) for s in pops.order],
        "explanations": _explanations(cfg, site_stats, order),
        "cross_site": None,
        "personalised": _personalised(summary),
    }
    n_train = {s["name"]: s["n_train"] for s in summary["sites"]}
    for p in report["populations"]:
        p["n_train"] = (sum(v for v in n_train.values() if v) if p["name"] == "pooled"
                        else n_train.get(p["name"]))
    report["limitations"] = _limitations(cfg, report)
    return report
