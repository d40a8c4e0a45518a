"""The report's Explanations section from the sites' noisy explanation sums.

Each site releases the noisy sum over its test cases of each case's explanation vector
(|SHAP| per feature clipped to L2 norm ``SHAP_CLIP``, or a Grad-CAM grid that sums to 1
per image; :mod:`medfl.evaluation.release`). A site's mean is its noisy sum over its noisy
whole-test-set count; the pooled mean is the sum of the sites' noisy sums over the sum of
their noisy counts. Means are clipped at 0 (a mean |SHAP| or a saliency share cannot be
negative; a negative one is noise).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from medfl import tasks
from medfl.config import RunConfig
from medfl.evaluation.release import SHAP_CLIP, ReportStats
from medfl.reporting.report_schema import Explanations, Feature


def whole_set_count(st: ReportStats) -> float:
    """A site's noisy count of test cases: the total of its whole-set cell (cell 0)."""
    if not st.cells:
        return 0.0
    cell = st.cells[0]
    if cell.hist is not None:
        return float(np.sum(cell.hist))
    if cell.sums is not None:
        return float(np.asarray(cell.sums)[0])
    return 0.0


def _means(stats: dict[str, ReportStats]) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The pooled mean explanation vector (over every site that released one) and each
    site's (a site whose noisy count is not positive has none)."""
    shown = {s: st for s, st in stats.items() if st.explain}
    per_site = {s: np.clip(np.asarray(st.explain) / whole_set_count(st), 0.0, None)
                for s, st in shown.items() if whole_set_count(st) > 0}
    total = sum(whole_set_count(st) for st in shown.values())
    if not shown or not total > 0:
        return None, per_site
    summed = np.sum([np.asarray(st.explain, dtype=np.float64) for st in shown.values()], 0)
    return np.clip(summed / total, 0.0, None), per_site


def explanations(cfg: RunConfig, stats: dict[str, ReportStats],
                 order: list[str]) -> Explanations:
    """The Explanations section (see the module docstring)."""
    task = tasks.task_for(cfg)
    if task.segmentation:
        return Explanations(method="none: the predicted mask is itself the model's spatial "
                                   "answer, reported through Dice, IoU and HD95")
    pooled, per_site = _means(stats)
    if pooled is None:
        return Explanations()
    noise = ("Each site released the sum over its test cases with Gaussian noise (test-set "
             "DP); each mean is that noisy sum over the site's noisy test-set size, the "
             "pooled one the sum of the sites' noisy sums over the sum of their noisy "
             "sizes, clipped at 0.")
    if task.is_tabular:
        names = task.feature_spec().feature_names
        feats = [Feature(name=n, mean_abs_shap=float(pooled[j]),
                         per_site={s: float(per_site[s][j]) if s in per_site else None
                                   for s in order})
                 for j, n in enumerate(names)]
        feats.sort(key=lambda f: -(f.mean_abs_shap or 0.0))
        return Explanations(
            kind="shap", features=feats,
            method=("SHAP values of the model's logit against a public reference row (all "
                    "zeros in model-input space: the consortium-mean patient, binary and "
                    "one-hot features 0) for each site's test rows; each case's |SHAP| "
                    f"vector clipped to L2 norm {SHAP_CLIP:g}. " + noise))
    g = int(round(math.sqrt(len(pooled))))

    def grid(v: Any) -> list[list[float]]:
        return np.asarray(v).reshape(g, g).round(5).tolist()

    return Explanations(
        kind="grad-cam", saliency_grid=grid(pooled),
        per_site={s: grid(per_site[s]) if s in per_site else None for s in order},
        method=(f"Grad-CAM of the positive logit on each site's test images, summed into a "
                f"{g}x{g} grid, each image normalised to 1. " + noise),
        site_local_note=("Grad-CAM overlays of individual images are in each hospital's "
                         "site-local report (<site-dir>/reports/<run>/report.html); images "
                         "are PHI and never leave the site."))
