"""Interval plots: a metric per subgroup (forest plot) and fairness gaps, with 95% CIs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from medfl.reporting.plots.style import (
    EMPHASIS,
    FLAG,
    MUTED,
    PALETTE,
    finite,
    interval,
    layout_rows,
    literal,
    styled_figure,
    to_svg,
    write_note,
)


def _row_label(row: Mapping[str, Any]) -> str:
    n = row.get("n")
    equals = "≈" if row.get("n_noise_sd") else "="  # a noisy count (test-set DP)
    return f"{literal(row.get('attribute', '?'))}: {literal(row.get('level', '?'))}" + (
        f" (n{equals}{n})" if isinstance(n, int) and not row.get("suppressed") else "")


def _forest_marks(rows: list[Mapping[str, Any]], other: dict[Any, Mapping[str, Any]], *,
                  metric: str, k: int, names: tuple[str, str]) -> tuple[list, list]:
    """Points ``(y, value, ci, hollow)`` to draw and notes ``(y, text)`` to write, one or
    two per subgroup row (two when ``other`` has the same subgroup)."""
    marks, notes = [], []
    for y, row in enumerate(rows):
        twin = other.get((row.get("attribute"), row.get("level")))
        pair = [(row, 0.0, names[0])]
        if twin is not None:
            pair = [(row, -0.17, names[0]), (twin, 0.17, names[1])]
        for rec, dy, name in pair:
            m = (rec.get("metrics") or {}).get(metric) or {}
            value, ci = finite(m.get("value")), interval(m.get("ci"))
            who = f"{literal(name)}: " if twin is not None else ""
            if rec.get("suppressed") or m.get("suppressed"):
                notes.append((y + dy, f"{who}suppressed (noisy n < {k})"))
            elif value is None:
                notes.append((y + dy, f"{who}not available"))
            else:
                marks.append((y + dy, value, ci, dy > 0))
    return marks, notes


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
    marks, notes = _forest_marks(rows, other, metric=metric, k=k, names=names)
    if not marks:
        return ""
    title = title or f"{label} by subgroup"
    with styled_figure(4.8, 0.95 + 0.36 * len(rows)) as fig:
        ax = fig.add_subplot()
        points = []
        for y, value, ci, hollow in marks:
            colour = PALETTE[0] if hollow else EMPHASIS
            _interval(ax, y, ci, colour=colour, lw=1.2)
            ax.plot(value, y, "s" if hollow else "o", color=colour,
                    mfc="white" if hollow else colour, ms=5)
            points += [value, *(ci or ())]
        for y, text in notes:
            write_note(ax, y, text)
        if (ref := finite(reference)) is not None:
            ax.axvline(ref, ls="--", lw=0.8, color=MUTED)
            points.append(ref)
        layout_rows(ax, [_row_label(r) for r in rows], points)
        ax.set(xlabel=f"{literal(label)} (95% CI)", title=literal(title))
        if other:
            ax.plot([], [], "o", color=EMPHASIS, label=literal(names[0]))
            ax.plot([], [], "s", color=PALETTE[0], mfc="white", label=literal(names[1]))
            ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, frameon=False)
            ax.set_title(literal(title), pad=22)
        return to_svg(fig, title)


def _interval(ax: Any, y: float, ci: tuple[float, float] | None, *, colour: str,
              lw: float) -> None:
    """A 95% CI as a capped horizontal line. Drawn on its own, not as error bars around
    the value: a figure from noisy counts may lie outside its bootstrap interval."""
    if ci is None:
        return
    ax.hlines(y, ci[0], ci[1], color=colour, lw=lw)
    ax.vlines(ci, y - 0.12, y + 0.12, color=colour, lw=lw)


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
            label = (f"{literal(e.get('attribute'))}: {literal(e.get('comparison'))} vs "
                     f"{literal(e.get('reference'))}\n{(gap_labels or {}).get(gap, gap)} gap")
            rows.append((label, g if isinstance(g, Mapping) else {}))
    if not any(finite(g.get("value")) is not None and not g.get("suppressed") for _, g in rows):
        return ""
    with styled_figure(4.8, 0.95 + 0.42 * len(rows)) as fig:
        ax = fig.add_subplot()
        ax.axvline(0, lw=1.0, color=MUTED)
        points = [0.0]
        for y, (_, g) in enumerate(rows):
            value, ci = finite(g.get("value")), interval(g.get("ci"))
            if g.get("suppressed") or value is None:
                write_note(ax, y, "suppressed" if g.get("suppressed") else "not available")
                continue
            colour = FLAG if g.get("flagged") else EMPHASIS
            _interval(ax, y, ci, colour=colour, lw=1.8 if g.get("flagged") else 1.1)
            ax.plot(value, y, "D" if g.get("flagged") else "o", color=colour, ms=5)
            points += [value, *(ci or ())]
        layout_rows(ax, [r[0] for r in rows], points)
        for tick, (_, g) in zip(ax.get_yticklabels(), rows, strict=True):
            if g.get("flagged"):
                tick.set_color(FLAG)
                tick.set_fontweight("bold")
        ax.set(xlabel="Gap (95% CI)", title=literal(title))
        return to_svg(fig, title)


