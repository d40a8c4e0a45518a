"""Explanation figures: feature importance bars (SHAP) and saliency heatmaps (Grad-CAM)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.colors import BoundaryNorm
from matplotlib.ticker import PercentFormatter

from medfl.reporting.plots.style import PALETTE, finite, literal, styled_figure, to_svg


def feature_importance_svg(features: Sequence[Mapping[str, Any]] | None, *, top: int = 15,
                           title: str = "Feature importance (mean |SHAP|)") -> str:
    """Horizontal bars of mean |SHAP| for the ``top`` most important features."""
    rows = [(str(f.get("name", "?")), finite(f.get("mean_abs_shap"))) for f in features or []
            if isinstance(f, Mapping)]
    shown = sorted([(name, v) for name, v in rows if v is not None], key=lambda r: -r[1])[:top]
    if not shown:
        return ""
    with styled_figure(4.6, 0.9 + 0.27 * len(shown)) as fig:
        ax = fig.add_subplot()
        ys = range(len(shown))
        ax.barh(ys, [r[1] for r in shown], color=PALETTE[0], height=0.65)
        ax.set_yticks(ys, [literal(r[0]) for r in shown])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set(xlabel="mean |SHAP value|", title=title)
        return to_svg(fig, title)


def _grid(g: Any) -> list[list[float]] | None:
    if not isinstance(g, Sequence) or not g or not all(isinstance(r, Sequence) for r in g):
        return None
    rows = [[finite(v) for v in r] for r in g]
    if len({len(r) for r in rows}) != 1 or any(v is None for r in rows for v in r):
        return None
    return rows  # type: ignore[return-value]


def grid_max(grids: Mapping[str, Any] | None) -> float | None:
    """The largest share in any well-formed grid of ``grids`` (for a shared scale)."""
    values = [v for raw in (grids or {}).values() if (g := _grid(raw)) for r in g for v in r]
    return max(values) if values else None


def saliency_svg(grid: Any, *, vmax: float | None = None, title: str = "") -> str:
    """Heatmap of saliency shares (e.g. an 8x8 grid summing to 1) with a colour bar in
    percent; ``vmax`` sets the top of the scale so that several maps compare (see
    :func:`grid_max`). Returns ``""`` unless ``grid`` is a rectangular grid of numbers."""
    g = _grid(grid)
    if g is None:
        return ""
    top = finite(vmax) or max(v for r in g for v in r) or 1.0
    # A few discrete levels keep the colour bar vector (a continuous one is rasterised).
    norm = BoundaryNorm([top * i / 8 for i in range(9)], 256)
    with styled_figure(2.9, 2.6) as fig:
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(g, cmap="magma", norm=norm)
        ax.set(aspect="equal", xticks=[], yticks=[], title=literal(title))
        ax.invert_yaxis()
        ax.grid(False)
        bar = fig.colorbar(mesh, ax=ax, shrink=0.9, ticks=norm.boundaries[::2],
                           format=PercentFormatter(1.0, decimals=1))
        bar.set_label("share of saliency")
        return to_svg(fig, f"Saliency: {title}")
