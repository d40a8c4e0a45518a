"""Two hand-built ``report.json`` dicts (schema 1) for the renderers.

Every number is chosen by hand, so a test can look for its exact formatting; the site
names are distinctive words that occur nowhere else in the reports, so a test can check
that a site's view does not mention the others. Counts are noisy ones (test-set DP), with
the noise standard deviation beside them; figures under the utility floor k are
suppressed.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

CLASS_SITES = ("cleveland", "hungary", "switzerland", "longbeach")
SEG_SITES = ("northgate", "riverside", "lakeview", "hillcrest")
SUPP = {"value": None, "ci": None, "suppressed": True, "estimated": False}


def m(value: float | None, lo: float | None = None, hi: float | None = None, *,
      estimated: bool = False) -> dict[str, Any]:
    return {"value": value, "ci": None if lo is None else [lo, hi], "suppressed": False,
            "estimated": estimated}


def g(value: float, lo: float, hi: float, *, flagged: bool = False) -> dict[str, Any]:
    return {"value": value, "ci": [lo, hi], "flagged": flagged, "suppressed": False}


G_SUPP = {"value": None, "ci": None, "flagged": False, "suppressed": True}


def _class_metrics(auroc: dict, shift: float = 0.0) -> dict[str, dict]:
    base = {"accuracy": 0.791, "sensitivity": 0.812, "specificity": 0.768, "ppv": 0.774,
            "npv": 0.806, "f1": 0.792, "brier": 0.152, "ece": 0.041}
    width = {"brier": 0.02, "ece": 0.015}
    return {"auroc": auroc, **{k: m(round(v + shift, 3), round(v + shift - width.get(k, 0.05), 3),
                                    round(v + shift + width.get(k, 0.05), 3))
                               for k, v in base.items()}}


FLOOR = ("noisy class count under k=10 (negatives ≈ 4): too few patients for readable "
         "figures (a utility floor, not a privacy measure)")
N_SD = 12.4  # noise sd of a subgroup's count


def _sub(attribute: str, level: str, n: int | None, metrics: dict | None,
         reason: str | None = None, sites: list[str] | None = None) -> dict[str, Any]:
    supp = metrics is None
    return {"attribute": attribute, "level": level, "n": n, "n_noise_sd": N_SD,
            "suppressed": supp, "reason": reason, "metrics": {} if supp else metrics,
            "sites_included": sites or []}


def _roc(bend: float) -> dict[str, list[float]]:
    fpr = [i / 10 for i in range(11)]
    return {"fpr": fpr, "tpr": [round(x ** bend, 3) for x in fpr]}


def _reliability(slope: float) -> list[dict[str, Any]]:
    return [{"predicted": p, "observed": round(min(1.0, p * slope), 3), "n": 10 + int(60 * p)}
            for p in (0.1, 0.3, 0.5, 0.7, 0.9)]


def _class_pop(name: str, n_train: int, n_test: int | None, prevalence: float | None,
               auroc: dict, **extra: Any) -> dict[str, Any]:
    pop = {"name": name, "scope": "site", "n_train": n_train, "n_test": n_test,
           "n_test_noise_sd": 17.6, "prevalence": prevalence,
           "demographics": [{"attribute": "sex", "level": "female", "n": 28, "n_noise_sd": N_SD},
                            {"attribute": "sex", "level": "male", "n": 63, "n_noise_sd": N_SD}],
           "sites_included": [name], "metrics": _class_metrics(auroc),
           "roc": _roc(0.4), "reliability": _reliability(1.05),
           "subgroups": [_sub("sex", "female", 28, {"auroc": m(0.801, 0.702, 0.884)}),
                         _sub("sex", "male", 63, {"auroc": m(0.866, 0.790, 0.921)})],
           "fairness": [{"attribute": "sex", "reference": "male", "comparison": "female",
                         "gaps": {"auroc": g(-0.065, -0.171, 0.041),
                                  "tpr": g(-0.044, -0.180, 0.092)}}]}
    pop.update(extra)
    return pop


def classification_report() -> dict[str, Any]:
    """Heart disease, four sites: switzerland's figures are under the floor (few
    negatives), hungary has a subgroup under the floor and an estimated AUROC, longbeach
    no curves."""
    every = list(CLASS_SITES)
    pooled = _class_pop(
        "pooled", 606, 262, 0.473, m(0.853, 0.801, 0.897), scope="consortium",
        sites_included=every, roc=_roc(0.3), reliability=_reliability(0.98),
        n_test_noise_sd=35.2,
        demographics=[{"attribute": "sex", "level": "female", "n": 61, "n_noise_sd": 24.8},
                      {"attribute": "sex", "level": "male", "n": 201, "n_noise_sd": 24.8}],
        subgroups=[_sub("sex", "female", 61, {"auroc": m(0.812, 0.731, 0.880)}, sites=every),
                   _sub("sex", "male", 201, {"auroc": m(0.861, 0.812, 0.903)}, sites=every),
                   _sub("age", "< 55", 104, {"auroc": m(0.874, 0.809, 0.925)}, sites=every),
                   _sub("age", ">= 55", 158, {"auroc": m(0.833, 0.771, 0.889)}, sites=every)],
        fairness=[{"attribute": "sex", "reference": "male", "comparison": "female",
                   "gaps": {"auroc": g(-0.049, -0.131, 0.033), "tpr": g(-0.142, -0.251, -0.033,
                                                                        flagged=True),
                            "fpr": g(0.021, -0.060, 0.102),
                            "calibration": g(0.012, -0.020, 0.044)}}])
    swiss = _class_pop(
        "switzerland", 86, 37, None, SUPP,
        demographics=[{"attribute": "sex", "level": "female", "n": 3, "n_noise_sd": N_SD},
                      {"attribute": "sex", "level": "male", "n": 33, "n_noise_sd": N_SD}],
        roc=None, reliability=None,
        subgroups=[_sub("sex", "female", 3, None, FLOOR),
                   _sub("sex", "male", 33, {"auroc": SUPP})],
        fairness=[{"attribute": "sex", "reference": "male", "comparison": "female",
                   "gaps": {"auroc": G_SUPP, "tpr": G_SUPP}}])
    swiss["metrics"]["specificity"] = SUPP
    swiss["metrics"]["npv"] = SUPP
    hungary = _class_pop("hungary", 206, 88, 0.364, m(0.884, 0.817, 0.936, estimated=True),
                         roc=_roc(0.25), reliability=_reliability(0.9))
    hungary["subgroups"][0] = _sub("sex", "female", 7, None, FLOOR)
    sites = [_class_pop("cleveland", 212, 91, 0.459, m(0.871, 0.798, 0.925)),
             hungary, swiss,
             _class_pop("longbeach", 102, 46, 0.739, m(0.712, 0.561, 0.839), roc=None,
                        reliability=None)]
    eps = {"cleveland": 2.87, "hungary": 2.91, "switzerland": 2.95, "longbeach": 2.84}
    features = ["cp", "thal", "ca", "oldpeak", "thalach", "exang", "sex", "age", "slope",
                "chol", "trestbps", "restecg", "fbs"]
    return {
        "schema_version": 1, "run_name": "heart-demo-20261130", "created_utc":
        "2026-11-30T09:15:00Z", "task": "heart-disease", "kind": "classification",
        "dataset": {"name": "UCI Heart Disease (four hospitals)",
                    "provenance": "UCI Machine Learning Repository, doi:10.24432/C52P4X",
                    "licence": "CC BY 4.0"},
        "disclaimer": "Research software: not a medical device and not for clinical use.",
        "label_names": ["absent", "present"], "k_threshold": 10,
        "operating_threshold": {"value": 0.5, "rule": "fixed in the run config"},
        "methods": {"statistics": "Sites released noisy score histograms per cell.",
                    "metrics": "Pooled from the sum of the sites' histograms.",
                    "ci": "95% CIs by a parametric bootstrap with the noise.",
                    "suppression": "A cell under k by its noisy class counts is not shown.",
                    "fairness": "Gap = comparison minus reference; flagged if the CI "
                                "excludes 0."},
        "training": {"strategy": "FedAvg", "model": "logreg", "rounds": 3,
                     "rounds_planned": 3, "local_epochs": 1, "batch_size": 32,
                     "optimizer": "sgd", "lr": 0.5, "seed": 42},
        "privacy": {"dp_sgd": True, "mechanisms": ["DP-SGD at each site (Opacus)",
                                                    "Gaussian noise on test-set statistics"],
                    "target_epsilon": 3.0, "delta": 0.001, "accountant": "prv",
                    "k_threshold": 10,
                    "non_dp_releases": ["training-set size per site (FedAvg weight)"],
                    "sites": [{"name": s, "epsilon": e, "delta": 0.001,
                               "noise_multiplier": 1.12, "steps": 21} for s, e in eps.items()]},
        "rounds": [{"round": r, "metrics": {"accuracy": a, "auroc": u, "loss": lo, "dice": None},
                    "epsilon": {s: round(e * r / 3, 2) for s, e in eps.items()},
                    "problems": [{"site": "longbeach", "status": "failed",
                                  "reason": "timeout"}] if r == 2 else []}
                   for r, a, u, lo in ((1, 0.70, 0.79, 0.61), (2, 0.76, 0.84, 0.52),
                                       (3, 0.791, 0.853, 0.48))],
        "populations": [pooled, *sites],
        "explanations": {
            "kind": "shap", "method": "KernelSHAP on each site's test set (>= k cases)",
            "features": [{"name": f, "mean_abs_shap": round(0.5 / (i + 1), 3),
                          "per_site": {s: round(0.45 / (i + 1), 3) for s in CLASS_SITES}}
                         for i, f in enumerate(features)],
            "saliency_grid": None, "per_site": {},
            "site_local_note": "Per-patient explanations stay at each site."},
        "cross_site": None,
        "limitations": ["Four hospitals from 1988; case mix differs from today's."],
    }


def segmentation_report() -> dict[str, Any]:
    """Synthetic lesions, four sites, Dice/IoU/HD95, Grad-CAM-like saliency grids."""
    def pop(name: str, dice: float, scope: str = "site") -> dict[str, Any]:
        metrics = {"dice": m(dice, dice - 0.04, dice + 0.04), "iou": m(dice - 0.12, dice - 0.16,
                                                                        dice - 0.08),
                   "hd95": m(6.4, 4.9, 7.9)}
        pooled = scope == "consortium"
        return {"name": name, "scope": scope, "n_train": 480 if pooled else 120,
                "n_test": 160 if pooled else 40, "prevalence": None,
                "demographics": [{"attribute": "sex", "level": "female", "n": 19},
                                 {"attribute": "sex", "level": "male", "n": 21}],
                "sites_included": list(SEG_SITES) if scope == "consortium" else [name],
                "metrics": metrics, "roc": None, "reliability": None,
                "subgroups": [_sub("sex", "female", 19, {"dice": m(dice - 0.02, dice - 0.08,
                                                                   dice + 0.04)}),
                              _sub("sex", "male", 21, {"dice": m(dice + 0.02, dice - 0.04,
                                                                 dice + 0.08)})],
                "fairness": [{"attribute": "sex", "reference": "male", "comparison": "female",
                              "gaps": {"dice": g(-0.04, -0.12, 0.04)}}]}
    grid = [[(1 + ((r - 3.5) ** 2 + (c - 3.5) ** 2 < 6) * 4) / 184 for c in range(8)]
            for r in range(8)]
    rep = classification_report()
    rep.update({
        "run_name": "seg-demo-20261130", "task": "segmentation", "kind": "segmentation",
        "dataset": {"name": "Synthetic hospitals",
                    "provenance": "Generated by MONAI; no real patients",
                    "licence": None},
        "label_names": ["background", "lesion"],
        "training": {**rep["training"], "model": "unet", "lr": 0.01, "optimizer": "adam"},
        "privacy": {**rep["privacy"], "sites": [{"name": s, "epsilon": 1.9, "delta": 1e-5,
                                                 "noise_multiplier": 0.9, "steps": 60}
                                                for s in SEG_SITES]},
        "rounds": [{"round": r, "metrics": {"accuracy": None, "auroc": None, "loss": 0.9 / r,
                                            "dice": 0.5 + 0.08 * r},
                    "epsilon": {s: 0.6 * r for s in SEG_SITES}, "problems": []}
                   for r in (1, 2, 3)],
        "populations": [pop("pooled", 0.742, "consortium"),
                        *(pop(s, d) for s, d in zip(SEG_SITES, (0.761, 0.733, 0.702, 0.779),
                                                 strict=True))],
        "explanations": {"kind": "grad-cam", "method": "Grad-CAM, 8 x 8 shares", "features": [],
                         "saliency_grid": grid,
                         "per_site": {**{s: grid for s in SEG_SITES[:3]}, SEG_SITES[3]: None},
                         "site_local_note": "Overlays stay at each site."},
        "limitations": ["Synthetic images: no evidence about real scans."]})
    return rep


def rename_site(report: dict[str, Any], old: str, new: str) -> dict[str, Any]:
    """``report`` with the site ``old`` called ``new`` everywhere (values and keys)."""
    return json.loads(json.dumps(report).replace(json.dumps(old), json.dumps(new)))


@pytest.fixture
def class_report() -> dict[str, Any]:
    return classification_report()


@pytest.fixture
def seg_report() -> dict[str, Any]:
    return segmentation_report()


@pytest.fixture(params=["classification", "segmentation"])
def any_report(request: pytest.FixtureRequest) -> dict[str, Any]:
    return classification_report() if request.param == "classification" \
        else segmentation_report()
