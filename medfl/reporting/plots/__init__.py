"""Small figures for the run report, as inline SVG strings.

Every function takes plain report data (lists and dicts from ``report.json``), tolerates
missing pieces and returns ``""`` when there is nothing to draw, so the caller decides
how to say "not available". Figures are built on :class:`matplotlib.figure.Figure`
directly, never through ``pyplot``: no backend is selected or switched, nothing is
registered in a global figure manager, and a figure is garbage once its SVG is written.

Text stays text (``svg.fonttype = "none"``) with a generic sans-serif fallback, so the
page needs no font files; element ids are prefixed per figure so that many figures can
share one HTML page without id clashes.
"""

from __future__ import annotations

from medfl.reporting.plots.curves import (
    TRAINING_PANELS,
    epsilon_svg,
    reliability_svg,
    roc_svg,
    training_svg,
)
from medfl.reporting.plots.explain import feature_importance_svg, grid_max, saliency_svg
from medfl.reporting.plots.intervals import fairness_svg, forest_svg

__all__ = [
    "TRAINING_PANELS",
    "epsilon_svg",
    "fairness_svg",
    "feature_importance_svg",
    "forest_svg",
    "grid_max",
    "reliability_svg",
    "roc_svg",
    "saliency_svg",
    "training_svg",
]
