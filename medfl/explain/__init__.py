"""Explanations computed at a hospital site on its own data.

Per-row SHAP values, per-image Grad-CAM maps and overlays stay at the site; only
aggregates (:func:`mean_abs_shap`, :func:`saliency_grid`) are meant to leave it.
"""

from __future__ import annotations

from medfl.explain.gradcam import (
    default_target_layer,
    feature_layer,
    gradcam,
    overlay_png,
    saliency_grid,
)
from medfl.explain.shap_tabular import mean_abs_shap, shap_values

__all__ = ["default_target_layer", "feature_layer", "gradcam", "mean_abs_shap", "overlay_png",
           "saliency_grid", "shap_values"]
