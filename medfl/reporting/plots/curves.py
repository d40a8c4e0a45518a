"""Curves and bars: ROC, reliability, training per round, ε per site."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, cast

from matplotlib.ticker import MaxNLocator

from medfl.reporting.plots.style import (
    FLAG,
    MUTED,
    PALETTE,
    finite,
    literal,
    series_colours,
    styled_figure,
    to_svg,
)


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
    valid: dict[str, tuple[list[float], list[float]]] = {}
    for name, c in (curves or {}).items():
        if not isinstance(c, Mapping):
            continue
        fpr, tpr = [finite(v) for v in c.get("fpr") or []], [finite(v) for v in c.get("tpr") or []]
        if len(fpr) >= 2 and len(fpr) == len(tpr) and None not in fpr and None not in tpr:
            valid[name] = (cast(list[float], fpr), cast(list[float], tpr))  # no None left
    if not valid:
        return ""
    colour = series_colours(list(valid), emphasis)
    with styled_figure(4.2, 3.9) as fig:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="chance")
        for name, (x, y) in valid.items():
            ax.plot(x, y, color=colour[name], lw=2.4 if name == emphasis else 1.4,
                    label=literal(name), zorder=3 if name == emphasis else 2)
        ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False-positive rate (1 − specificity)",
               ylabel="True-positive rate (sensitivity)", title=literal(title), aspect="equal")
        ax.legend(loc="lower right", frameon=False)
        return to_svg(fig, title)


def reliability_svg(series: Mapping[str, Sequence[Mapping[str, Any]] | None] | None, *,
                    emphasis: str | None = None, title: str = "Reliability") -> str:
    """Reliability diagram: mean predicted probability against observed frequency per
    bin, marker area proportional to the bin's patient count, with the diagonal."""
    valid = {}
    for name, bins in (series or {}).items():
        pts = [(finite(b.get("predicted")), finite(b.get("observed")), finite(b.get("n")) or 0.0)
               for b in bins or [] if isinstance(b, Mapping)]
        pts = [p for p in pts if p[0] is not None and p[1] is not None]
        if pts:
            valid[name] = pts
    if not valid:
        return ""
    colour = series_colours(list(valid), emphasis)
    biggest = max(p[2] for pts in valid.values() for p in pts) or 1.0
    with styled_figure(4.2, 3.9) as fig:
        ax = fig.add_subplot()
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color=MUTED, label="perfect calibration")
        for name, pts in valid.items():
            x, y, n = zip(*pts, strict=True)
            ax.plot(x, y, color=colour[name], lw=1.0, alpha=0.8)
            ax.scatter(x, y, s=[15 + 160 * v / biggest for v in n], color=colour[name],
                       alpha=0.75, edgecolors="white", linewidths=0.5, label=literal(name),
                       zorder=3)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="Mean predicted probability",
               ylabel="Observed frequency", title=literal(title), aspect="equal")
        ax.legend(loc="upper left", frameon=False, markerscale=0.7)
        return to_svg(fig, title)


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
              and finite(r.get("round")) is not None]
    xs = [int(r["round"]) for r in rounds]

    def series(get: Any) -> list[float] | None:
        out = [float("nan") if (v := finite(get(r))) is None else v for r in rounds]
        return None if all(map(math.isnan, out)) else out

    if panel == "epsilon":
        lines = {literal(s): series(lambda r, s=s: (r.get("epsilon") or {}).get(s)) for s in sites}
        ylabel, title = "ε spent so far", "Privacy spent (ε) per round"
    else:
        keys = ("auroc", "accuracy", "dice") if panel == "metrics" else ("loss",)
        lines = {(labels or {}).get(k, k): series(lambda r, k=k: (r.get("metrics") or {})
                                                  .get(k)) for k in keys}
        ylabel, title = "pooled value", f"Pooled {panel} per round"
    drawn = {name: s for name, s in lines.items() if s is not None}
    if not drawn:
        return ""
    colour = series_colours(list(drawn), None if panel == "epsilon" else next(iter(drawn)))
    with styled_figure(4.2, 3.2) as fig:
        ax = fig.add_subplot()
        for name, s in drawn.items():
            ax.plot(xs, s, marker="o", ms=3.5, color=colour[name], label=name)
        ax.set(xlabel="round", ylabel=ylabel, title=title)
        if panel != "loss":
            ax.set_ylim(0, 1.02 if panel == "metrics" else None)
            ax.legend(frameon=False, loc="lower right" if panel == "metrics" else "upper left")
        # A linear axis's default locator is an AutoLocator, a MaxNLocator.
        cast(MaxNLocator, ax.xaxis.get_major_locator()).set_params(integer=True)
        return to_svg(fig, title)


def epsilon_svg(sites: Sequence[Mapping[str, Any]] | None, *, target: float | None = None,
                title: str = "ε per site") -> str:
    """Bar chart of each site's ε over the run, the value written inside its bar ("n/a"
    for a site without an accounted ε), and the target ε, if any, as a dashed line."""
    sites = [s for s in sites or [] if isinstance(s, Mapping)]
    if not sites:
        return ""
    values = [finite(s.get("epsilon")) for s in sites]
    drawn = [v for v in values if v is not None and math.isfinite(v)]
    top = max(drawn + [finite(target) or 0.0, 1e-9])
    with styled_figure(max(2.8, 1.2 + 0.75 * len(sites)), 3.1) as fig:
        ax = fig.add_subplot()
        heights = [v if v is not None and math.isfinite(v) else 0.0 for v in values]
        ax.bar(range(len(sites)), heights, color=PALETTE[0], width=0.62)
        for x, (v, h) in enumerate(zip(values, heights, strict=True)):
            text = "n/a" if v is None else ("∞" if math.isinf(v) else f"{v:.2f}")
            inside = h > top * 0.2
            ax.text(x, h - top * 0.03 if inside else h + top * 0.02, text, ha="center",
                    va="top" if inside else "bottom", fontsize=9,
                    color="white" if inside else "black", fontweight="bold")
        if (line := finite(target)) is not None:
            ax.axhline(line, ls="--", lw=1.2, color=FLAG, label=f"target ε = {target:g}")
            ax.legend(frameon=False, loc="lower center", bbox_to_anchor=(0.5, 1.0))
        ax.set_xticks(range(len(sites)), [literal(s.get("name", "?")) for s in sites],
                      rotation=25 if len(sites) > 4 else 0, ha="right" if len(sites) > 4
                      else "center")
        # Slots for at least three bars, so that one site's bar is not a wall of colour.
        ax.set(xlim=(-0.6, max(len(sites), 3) - 0.4), ylim=(0, top * 1.1), ylabel="ε (this run)")
        ax.set_title(title, pad=20 if finite(target) is not None else 6)
        ax.grid(axis="x", visible=False)
        return to_svg(fig, title)


