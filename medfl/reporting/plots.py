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

import hashlib
import io
import math
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib as mpl
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, PercentFormatter
from matplotlib.transforms import blended_transform_factory

__all__ = [
    "epsilon_svg",
    "fairness_svg",
    "feature_importance_svg",
    "forest_svg",
    "grid_max",
    "reliability_svg",
    "roc_svg",
    "saliency_svg",
    "training_svg",
    "TRAINING_PANELS",
]

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; black is kept
# for the emphasised series (the pooled population).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
EMPHASIS = "#000000"
FLAG = "#D55E00"
MUTED = "#666666"

_RC = {
    "svg.fonttype": "none",
    "svg.hashsalt": "medfl-report",  # deterministic clip-path ids
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
}


def _num(x: Any) -> float | None:
    """``x`` as a finite float, or None for null, NaN, ±inf and non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def _ci(x: Any) -> tuple[float, float] | None:
    if not isinstance(x, Sequence) or len(x) != 2:
        return None
    lo, hi = _num(x[0]), _num(x[1])
    return (lo, hi) if lo is not None and hi is not None else None


def _txt(s: Any) -> str:
    # Names come from config files; a "$" pair would otherwise switch on mathtext.
    return str(s).replace("$", r"\$")


@contextmanager
def _figure(width: float, height: float) -> Iterator[Figure]:
    """A figure of ``width`` x ``height`` inches with the report's fixed style."""
    with mpl.rc_context(_RC):
        yield Figure(figsize=(width, height), layout="constrained")


def _svg(fig: Figure, label: str) -> str:
    """The figure as an ``<svg>`` element: no XML prologue or metadata, ids prefixed
    with a hash of the content, width fluid up to the natural size."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                             "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.S)
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m[1]}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m[1]})", svg)
    natural = float(re.search(r'width="([\d.]+)pt"', svg)[1]) * 4 / 3  # pt -> CSS px
    aria = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    svg = re.sub(r'width="[\d.]+pt" height="[\d.]+pt"',
                 f'width="100%" style="max-width:{natural:.0f}px;height:auto" '
                 f'role="img" aria-label="{aria}"', svg, count=1)
    return svg.strip()


def _colours(names: Sequence[str], emphasis: str | None) -> dict[str, str]:
    rest = iter(PALETTE * (1 + len(names) // len(PALETTE)))
    return {n: EMPHASIS if n == emphasis else next(rest) for n in names}


def roc_svg(curves: Mapping[str, Mapping[str, Any] | None] | None, *,
            emphasis: str | None = None, title: str = "ROC curves") -> str:
    """ROC curves, one line per population, with the chance diagonal.

    Parameters
    ----------
    curves : mapping of legend label to ``{"fpr": [...], "tpr": [...]}`` or None
        Rates in [0, 1], equal lengths; entries that are None or malformed are skipped.
    emphasis : str, optional
        The label drawn as a thick black line (the pooled population).
    """
    valid = {}
    for name, c in (curves or {}).items():
        if not isinstance(c, Mapping):
            continue
        fpr, tpr = [_num(v) for v in c.get("fpr") or []], [_num(v) for v in c.get("tpr") or []]
        if len(fpr) >= 2 and len(fpr) == len(tpr) and None not in fpr and None not in tpr:
            valid[name] = (fpr, tpr)
    if not valid:
        return ""
    colour = _colours(list(valid), emphasis)
    with _figure(4.2, 3.9) as fig:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="chance")
        for name, (fpr, tpr) in valid.items():
            ax.plot(fpr, tpr, color=colour[name], lw=2.4 if name == emphasis else 1.4,
                    label=_txt(name), zorder=3 if name == emphasis else 2)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate (1 − specificity)",
               ylabel="True-positive rate (sensitivity)", title=_txt(title), aspect="equal")
        ax.legend(loc="lower right", frameon=False)
        return _svg(fig, title)


def reliability_svg(series: Mapping[str, Sequence[Mapping[str, Any]] | None] | None, *,
                    emphasis: str | None = None, title: str = "Reliability") -> str:
    """Reliability diagram: mean predicted probability against observed frequency per
    bin, marker area proportional to the bin's patient count, with the diagonal."""
    valid = {}
    for name, bins in (series or {}).items():
        pts = [(_num(b.get("predicted")), _num(b.get("observed")), _num(b.get("n")) or 0.0)
               for b in bins or [] if isinstance(b, Mapping)]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            valid[name] = pts
    if not valid:
        return ""
    colour = _colours(list(valid), emphasis)
    biggest = max(p[2] for pts in valid.values() for p in pts) or 1.0
    with _figure(4.2, 3.9) as fig:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="perfect calibration")
        for name, pts in valid.items():
            x, y, n = zip(*pts, strict=True)
            ax.plot(x, y, color=colour[name], lw=1.0, alpha=0.8)
            ax.scatter(x, y, s=[15 + 160 * v / biggest for v in n], color=colour[name],
                       alpha=0.75, edgecolors="white", linewidths=0.5, label=_txt(name),
                       zorder=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Mean predicted probability",
               ylabel="Observed frequency", title=_txt(title), aspect="equal")
        ax.legend(loc="upper left", frameon=False, markerscale=0.7)
        return _svg(fig, title)


def _row_label(row: Mapping[str, Any]) -> str:
    n = row.get("n")
    return f"{_txt(row.get('attribute', '?'))}: {_txt(row.get('level', '?'))}" + (
        f" (n={n})" if isinstance(n, int) and not row.get("suppressed") else "")


def _interval_rows(ax: Any, labels: list[str], points: list[float]) -> None:
    """One row per label, top to bottom; the x-range fits the drawn ``points``."""
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.grid(axis="y", visible=False)
    lo, hi = min(points), max(points)
    pad = max((hi - lo) * 0.08, 0.02)
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # narrow axes: no colliding ticks


def _note(ax: Any, y: float, text: str) -> None:
    ax.text(0.01, y, text, transform=blended_transform_factory(ax.transAxes, ax.transData),
            va="center", fontsize=9, color=MUTED, style="italic")


def forest_svg(rows: Sequence[Mapping[str, Any]] | None, *, metric: str, k: int,
               label: str | None = None, compare: Sequence[Mapping[str, Any]] | None = None,
               names: tuple[str, str] = ("this population", "pooled"),
               reference: float | None = None, title: str | None = None) -> str:
    """Forest plot of one metric per subgroup: point estimate and 95% CI whiskers.

    Parameters
    ----------
    rows : subgroup records (``attribute``, ``level``, ``n``, ``suppressed``, ``metrics``)
    metric : key of ``metrics`` to plot, e.g. ``"auroc"``; ``label`` names it on the axis
    k : suppression threshold, quoted in the note written (instead of a point) for
        suppressed subgroups
    compare : subgroup records of a second population (the pooled one), drawn hollow
        beside the matching ``(attribute, level)`` rows
    reference : value of the metric over the whole population (dashed vertical line)

    Returns ``""`` when no subgroup has a value to draw (the table says why).
    """
    rows = [r for r in rows or [] if isinstance(r, Mapping)]
    other = {(r.get("attribute"), r.get("level")): r for r in compare or []
             if isinstance(r, Mapping)}
    label = label or metric
    marks, notes = [], []
    for y, row in enumerate(rows):
        twin = other.get((row.get("attribute"), row.get("level")))
        pair = [(row, 0.0, names[0])] if twin is None else \
            [(row, -0.17, names[0]), (twin, 0.17, names[1])]
        for rec, dy, name in pair:
            m = (rec.get("metrics") or {}).get(metric) or {}
            value, ci = _num(m.get("value")), _ci(m.get("ci"))
            who = f"{_txt(name)}: " if twin is not None else ""
            if rec.get("suppressed") or m.get("suppressed"):
                notes.append((y + dy, f"{who}suppressed (n < {k})"))
            elif value is None:
                notes.append((y + dy, f"{who}not available"))
            else:
                marks.append((y + dy, value, ci, dy > 0))
    if not marks:
        return ""
    title = title or f"{label} by subgroup"
    with _figure(4.8, 0.95 + 0.36 * len(rows)) as fig:
        ax = fig.add_subplot()
        points = []
        for y, value, ci, hollow in marks:
            colour = PALETTE[0] if hollow else EMPHASIS
            err = [[value - ci[0]], [ci[1] - value]] if ci else None
            ax.errorbar(value, y, xerr=err, fmt="s" if hollow else "o", color=colour,
                        mfc="white" if hollow else colour, capsize=3, ms=5, lw=1.2)
            points += [value, *(ci or ())]
        for y, text in notes:
            _note(ax, y, text)
        if _num(reference) is not None:
            ax.axvline(reference, ls="--", lw=0.8, color=MUTED)
            points.append(reference)
        _interval_rows(ax, [_row_label(r) for r in rows], points)
        ax.set(xlabel=f"{_txt(label)} (95% CI)", title=_txt(title))
        if other:
            ax.plot([], [], "o", color=EMPHASIS, label=_txt(names[0]))
            ax.plot([], [], "s", color=PALETTE[0], mfc="white", label=_txt(names[1]))
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
            ax.set_title(_txt(title), pad=22)
        return _svg(fig, title)


def fairness_svg(entries: Sequence[Mapping[str, Any]] | None, *,
                 gap_labels: Mapping[str, str] | None = None,
                 title: str = "Fairness gaps") -> str:
    """Gap (with 95% CI) per attribute comparison and gap kind, with a zero line; gaps
    whose CI excludes 0 (``flagged``) in a warning colour; suppressed gaps written as
    text. Returns ``""`` when no gap has a value to draw."""
    rows = []
    for e in entries or []:
        if not isinstance(e, Mapping):
            continue
        for gap, g in (e.get("gaps") or {}).items():
            label = (f"{_txt(e.get('attribute'))}: {_txt(e.get('comparison'))} vs "
                     f"{_txt(e.get('reference'))}\n{(gap_labels or {}).get(gap, gap)} gap")
            rows.append((label, g if isinstance(g, Mapping) else {}))
    if not any(_num(g.get("value")) is not None and not g.get("suppressed") for _, g in rows):
        return ""
    with _figure(4.8, 0.95 + 0.42 * len(rows)) as fig:
        ax = fig.add_subplot()
        ax.axvline(0, lw=1.0, color=MUTED)
        points = [0.0]
        for y, (_, g) in enumerate(rows):
            value, ci = _num(g.get("value")), _ci(g.get("ci"))
            if g.get("suppressed") or value is None:
                _note(ax, y, "suppressed" if g.get("suppressed") else "not available")
                continue
            colour = FLAG if g.get("flagged") else EMPHASIS
            err = [[value - ci[0]], [ci[1] - value]] if ci else None
            ax.errorbar(value, y, xerr=err, fmt="D" if g.get("flagged") else "o",
                        color=colour, capsize=3, ms=5, lw=1.8 if g.get("flagged") else 1.1)
            points += [value, *(ci or ())]
        _interval_rows(ax, [r[0] for r in rows], points)
        for tick, (_, g) in zip(ax.get_yticklabels(), rows, strict=True):
            if g.get("flagged"):
                tick.set_color(FLAG)
                tick.set_fontweight("bold")
        ax.set(xlabel="Gap (95% CI)", title=_txt(title))
        return _svg(fig, title)


TRAINING_PANELS = ("metrics", "loss", "epsilon")


def training_svg(rounds: Sequence[Mapping[str, Any]] | None, *, panel: str = "metrics",
                 sites: Sequence[str] = (), labels: Mapping[str, str] | None = None) -> str:
    """One panel of per-round training curves of the global model.

    Parameters
    ----------
    rounds : the report's ``rounds`` records
    panel : ``"metrics"`` (pooled AUROC, accuracy, Dice: bounded in [0, 1]), ``"loss"``
        (pooled loss) or ``"epsilon"`` (cumulative ε of each of ``sites``)
    labels : display names of metric keys, e.g. ``{"auroc": "AUROC"}``
    """
    if panel not in TRAINING_PANELS:
        raise ValueError(f"training_svg: panel {panel!r} is not one of "
                         f"{', '.join(TRAINING_PANELS)}")
    rounds = [r for r in rounds or [] if isinstance(r, Mapping)
              and _num(r.get("round")) is not None]
    xs = [int(r["round"]) for r in rounds]

    def series(get: Any) -> list[float] | None:
        out = [float("nan") if (v := _num(get(r))) is None else v for r in rounds]
        return None if all(map(math.isnan, out)) else out

    if panel == "epsilon":
        lines = {_txt(s): series(lambda r, s=s: (r.get("epsilon") or {}).get(s)) for s in sites}
        ylabel, title = "ε spent so far", "Privacy spent (ε) per round"
    else:
        keys = ("auroc", "accuracy", "dice") if panel == "metrics" else ("loss",)
        lines = {(labels or {}).get(k, k): series(lambda r, k=k: (r.get("metrics") or {})
                                                  .get(k)) for k in keys}
        ylabel, title = "pooled value", f"Pooled {panel} per round"
    lines = {name: s for name, s in lines.items() if s is not None}
    if not lines:
        return ""
    colour = _colours(list(lines), None if panel == "epsilon" else next(iter(lines)))
    with _figure(4.2, 3.2) as fig:
        ax = fig.add_subplot()
        for name, s in lines.items():
            ax.plot(xs, s, marker="o", ms=3.5, color=colour[name], label=name)
        ax.set(xlabel="round", ylabel=ylabel, title=title)
        if panel != "loss":
            ax.set_ylim(0, 1.02 if panel == "metrics" else None)
            ax.legend(frameon=False, loc="lower right" if panel == "metrics" else "upper left")
        ax.xaxis.get_major_locator().set_params(integer=True)
        return _svg(fig, title)


def epsilon_svg(sites: Sequence[Mapping[str, Any]] | None, *, target: float | None = None,
                title: str = "ε per site") -> str:
    """Bar chart of each site's ε over the run, the value written inside its bar ("n/a"
    for a site without an accounted ε), and the target ε, if any, as a dashed line."""
    sites = [s for s in sites or [] if isinstance(s, Mapping)]
    if not sites:
        return ""
    values = [_num(s.get("epsilon")) for s in sites]
    finite = [v for v in values if v is not None and math.isfinite(v)]
    top = max(finite + [_num(target) or 0.0, 1e-9])
    with _figure(max(2.8, 1.2 + 0.75 * len(sites)), 3.1) as fig:
        ax = fig.add_subplot()
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        ax.bar(range(len(sites)), heights, color=PALETTE[0], width=0.62)
        for x, (v, h) in enumerate(zip(values, heights, strict=True)):
            text = "n/a" if v is None else ("∞" if math.isinf(v) else f"{v:.2f}")
            inside = h > top * 0.2
            ax.text(x, h - top * 0.03 if inside else h + top * 0.02, text, ha="center",
                    va="top" if inside else "bottom", fontsize=9,
                    color="white" if inside else "black", fontweight="bold")
        if _num(target) is not None:
            ax.axhline(target, ls="--", lw=1.2, color=FLAG, label=f"target ε = {target:g}")
            ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        ax.set_xticks(range(len(sites)), [_txt(s.get("name", "?")) for s in sites],
                      rotation=25 if len(sites) > 4 else 0, ha="right" if len(sites) > 4
                      else "center")
        # Slots for at least three bars, so that one site's bar is not a wall of colour.
        ax.set(xlim=(-0.6, max(len(sites), 3) - 0.4), ylim=(0, top * 1.1), ylabel="ε (this run)")
        ax.set_title(title, pad=20 if _num(target) is not None else 6)
        ax.grid(axis="x", visible=False)
        return _svg(fig, title)


def feature_importance_svg(features: Sequence[Mapping[str, Any]] | None, *, top: int = 15,
                           title: str = "Feature importance (mean |SHAP|)") -> str:
    """Horizontal bars of mean |SHAP| for the ``top`` most important features."""
    rows = [(str(f.get("name", "?")), _num(f.get("mean_abs_shap"))) for f in features or []
            if isinstance(f, Mapping)]
    rows = sorted([r for r in rows if r[1] is not None], key=lambda r: -r[1])[:top]
    if not rows:
        return ""
    with _figure(4.6, 0.9 + 0.27 * len(rows)) as fig:
        ax = fig.add_subplot()
        ys = range(len(rows))
        ax.barh(ys, [r[1] for r in rows], color=PALETTE[0], height=0.65)
        ax.set_yticks(ys, [_txt(r[0]) for r in rows])
        ax.invert_yaxis()
        ax.grid(axis="y", visible=False)
        ax.set(xlabel="mean |SHAP value|", title=title)
        return _svg(fig, title)


def _grid(g: Any) -> list[list[float]] | None:
    if not isinstance(g, Sequence) or not g or not all(isinstance(r, Sequence) for r in g):
        return None
    rows = [[_num(v) for v in r] for r in g]
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
    top = _num(vmax) or max(v for r in g for v in r) or 1.0
    # A few discrete levels keep the colour bar vector (a continuous one is rasterised).
    norm = BoundaryNorm([top * i / 8 for i in range(9)], 256)
    with _figure(2.9, 2.6) as fig:
        ax = fig.add_subplot()
        mesh = ax.pcolormesh(g, cmap="magma", norm=norm)
        ax.set(aspect="equal", xticks=[], yticks=[], title=_txt(title))
        ax.invert_yaxis()
        ax.grid(False)
        bar = fig.colorbar(mesh, ax=ax, shrink=0.9, ticks=norm.boundaries[::2],
                           format=PercentFormatter(1.0, decimals=1))
        bar.set_label("share of saliency")
        return _svg(fig, f"Saliency: {title}")
