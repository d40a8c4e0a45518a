"""How the reports word values: ``0.853 (0.801–0.897)``, ``suppressed (noisy n < k)``,
"n/a", ``≈254`` for a noisy count, and the limitations that follow from a report's own
figures. Shared by the model card
(:mod:`medfl.reporting.model_card`) and the HTML report (:mod:`medfl.reporting.html`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeGuard

from medfl.reporting.population_schema import Figure, Population, Subgroup
from medfl.reporting.report_schema import Report, Threshold

__all__ = ["EST", "GAPS", "HEADLINE", "METRICS", "NOISY", "PRIMARY", "as_float",
           "operating_lines",
           "format_count", "format_delta", "format_metric", "format_number",
           "known_limitations", "metric_label", "metric_order", "noise_note", "saliency_note",
           "sites_text", "suppressed_text"]

# name: (label, decimals, lower is better)
METRICS: dict[str, tuple[str, int, bool]] = {
    "auroc": ("AUROC", 3, False), "accuracy": ("Accuracy", 3, False),
    "sensitivity": ("Sensitivity", 3, False), "specificity": ("Specificity", 3, False),
    "ppv": ("PPV", 3, False), "npv": ("NPV", 3, False), "f1": ("F1", 3, False),
    "brier": ("Brier score", 3, True), "ece": ("ECE", 3, True),
    "dice": ("Dice", 3, False), "iou": ("IoU", 3, False), "hd95": ("HD95 (px)", 1, True),
}
HEADLINE = {"classification": ("auroc", "sensitivity", "specificity", "accuracy", "brier"),
            "segmentation": ("dice", "iou", "hd95")}
PRIMARY = {"classification": "auroc", "segmentation": "dice"}
GAPS = {"auroc": "AUROC", "tpr": "TPR", "fpr": "FPR", "calibration": "Calibration",
        "dice": "Dice"}
EST = "†"
NOISY = "≈"


def as_float(x: Any) -> float | None:
    """``x`` as a float (±inf kept), or None for null, NaN and non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def suppressed_text(k: int) -> str:
    """How a figure not shown under the utility floor ``k`` (a cell whose noisy count of
    a class is under k) reads everywhere."""
    return f"suppressed (noisy n < {k})"


def format_count(n: Any, noise_sd: Any = None) -> str:
    """A count as ``254``, or ``≈254`` when it is a noisy one (``noise_sd`` > 0)."""
    if isinstance(n, bool) or not isinstance(n, (int, float)):
        return "n/a"
    text = f"{n:,}" if isinstance(n, int) else str(n)
    noisy = as_float(noise_sd)
    return f"{NOISY}{text}" if noisy else text


def sites_text(sites: Sequence[str] | None, *, named: bool = True) -> str:
    """The sites a pooled row is computed from: ``4 sites: a, b, c, d`` (or only their
    number when ``named`` is False)."""
    if sites is None:
        return "n/a"
    count = f"{len(sites)} site{'' if len(sites) == 1 else 's'}"
    return f"{count}: {', '.join(sites)}" if named and sites else count


def noise_note(report: Report) -> str:
    """One sentence on what every figure is computed from and what its CI includes."""
    if any(p.noisy for p in report.populations):
        return ("Every figure and count is computed from statistics that each site released "
                "with differential-privacy noise (Gaussian, on its test set; ε per site "
                "under Privacy), summed over the sites named; the 95% CIs include that "
                f"noise as well as sampling error. {NOISY} marks a noisy count.")
    return ("Every figure is computed from the statistics the sites released, summed over "
            "the sites named; the 95% CIs cover sampling error.")


def format_number(x: Any, digits: int = 3) -> str:
    """``x`` to ``digits`` decimals with a true minus sign; "n/a" for null, "∞" for
    infinity."""
    v = as_float(x)
    if v is None:
        return "n/a"
    sign = "−" if v < 0 else ""
    if math.isinf(v):
        return f"{sign}∞"
    return f"{sign}{abs(v):.{digits}f}"


def format_delta(x: Any) -> str:
    """A δ (or any small positive number) to 3 significant digits: ``0.001``, ``1e-05``."""
    v = as_float(x)
    return "n/a" if v is None else f"{v:.3g}"


def format_metric(m: Figure | None, *, k: int, digits: int = 3, mark: bool = True) -> str:
    """A figure as ``0.853 (0.801–0.897)``, ``suppressed (n < k)`` or ``n/a``.

    ``mark``: append " †" to estimated values (the caller then owes a footnote).
    """
    if m is None:
        return "n/a"
    if m.suppressed:
        return suppressed_text(k)
    if as_float(m.value) is None:
        return "n/a"
    out = format_number(m.value, digits)
    ci = m.ci
    if isinstance(ci, Sequence) and len(ci) == 2 and None not in map(as_float, ci):
        # "−0.25–−0.03" misreads; a dash only between non-negative bounds.
        sep = " to " if min(ci) < 0 else "–"
        out += f" ({format_number(ci[0], digits)}{sep}{format_number(ci[1], digits)})"
    if mark and m.estimated:
        out += f" {EST}"
    return out


def metric_digits(name: str) -> int:
    """Decimals a metric is written with."""
    return METRICS[name][1] if name in METRICS else 3


def metric_label(name: str) -> str:
    """Display name of a metric key, with "↓" when lower is better."""
    label, _, lower = METRICS.get(name, (name, 3, False))
    return f"{label} ↓" if lower else label


def metric_order(populations: Sequence[Population]) -> list[str]:
    """Every metric name of ``populations``, known metrics first in :data:`METRICS` order."""
    order = list(METRICS)
    names = {n for p in populations for n in p.metrics}
    return sorted(names, key=lambda n: order.index(n) if n in order else len(order))


def _suppressed_parts(p: Population) -> list[str]:
    """What of a population is not shown, in words."""
    what = [METRICS[n][0] if n in METRICS else n
            for n, m in p.metrics.items() if m.suppressed]
    if p.n_test is None:
        what.append("test-set size")
    if any(d.n is None for d in p.demographics):
        what.append("demographic counts")
    what += [f"subgroup {s.attribute}={s.level}" for s in p.subgroups if s.suppressed]
    return what


def _suppression(report: Report) -> list[str]:
    parts = []
    for p in report.populations:
        what = _suppressed_parts(p)
        if what:
            parts.append(f"{p.name} ({', '.join(what)})")
    if not parts:
        return []
    k = report.k_threshold if report.k_threshold is not None else "k"
    return [f"Figures of cells whose noisy count of a class is under k={k} are not shown "
            "(a utility floor: so few patients leave mostly noise; not a privacy measure): "
            f"{'; '.join(parts)}."]


def _exclusions(report: Report) -> list[str]:
    """Sites left out of the pooled figures, rounds not run, sites missing from rounds."""
    out = []
    pooled = report.pooled
    if pooled is not None and pooled.sites_included is not None:
        left = [p.name for p in report.site_populations if p.name not in pooled.sites_included]
        if left:
            out.append(f"Pooled figures exclude: {', '.join(left)}.")
    t = report.training
    if t is not None and _is_int(t.rounds) and _is_int(t.rounds_planned) \
            and t.rounds < t.rounds_planned:
        out.append(f"Training stopped after {t.rounds} of {t.rounds_planned} planned rounds.")
    dropped = sorted({f"{p.site} (round {r.round}: {p.status})"
                      for r in report.rounds for p in r.problems})
    if dropped:
        out.append(f"Sites missing from some rounds: {', '.join(dropped)}.")
    return out


def _is_int(x: Any) -> TypeGuard[int]:
    return isinstance(x, int)


def known_limitations(report: Report) -> list[str]:
    """Limitations that follow from the report's own figures (suppression, dropped
    sites, flagged gaps, estimates, DP off), to list beside ``report.limitations``."""
    out = [*_suppression(report), *_exclusions(report)]
    flagged = [f"{p.name}: {f.attribute} {f.comparison} vs {f.reference} ({GAPS.get(g, g)})"
               for p in report.populations for f in p.fairness
               for g, v in f.gaps.items() if v.flagged]
    if flagged:
        out.append("Fairness gaps whose 95% CI excludes 0: " + "; ".join(flagged) + ".")
    records: list[Population | Subgroup] = [
        *report.populations, *(s for p in report.populations for s in p.subgroups)]
    if any(m.estimated for r in records for m in r.metrics.values()):
        out.append(f"Values marked {EST} are estimated, not computed exactly (see Methods).")
    if report.privacy is not None and report.privacy.dp_sgd is False:
        out.append("DP-SGD was off: model updates left the sites without differential "
                   "privacy.")
    return out


def saliency_note(grid: Any) -> str:
    """Where the pooled Grad-CAM saliency sits, in words."""
    try:
        cells = [[float(v) for v in row] for row in grid]
        total = sum(map(sum, cells))
        n = len(cells)
        centre = sum(v for row in cells[n // 4: n - n // 4] for v in row[n // 4: n - n // 4])
        r, c = max(((i, j) for i in range(n) for j in range(len(cells[i]))),
                   key=lambda ij: cells[ij[0]][ij[1]])
    except (TypeError, ValueError):
        return "No pooled saliency grid was reported."
    if total <= 0:
        return "No pooled saliency grid was reported."
    return (f"Pooled Grad-CAM saliency ({n} × {n} grid): the central half of the image holds "
            f"{centre / total:.0%} of it; the largest share, {cells[r][c] / total:.1%}, is in "
            f"row {r + 1}, column {c + 1}.")


def operating_lines(threshold: Threshold) -> list[str]:
    """The class weighting and the second operating point in words (report and card)."""
    out = [f"Training: {threshold.class_weight}."] if threshold.class_weight else []
    second = threshold.second
    if second:
        figures = ", ".join(f"{name} {format_number(second.get(key))}" for name, key in (
            ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("PPV", "ppv"),
            ("NPV", "npv")))
        out.append(f"Second operating point (evaluation.operating-sensitivity = "
                   f"{format_number(second.get('target'))}): pooled {figures} at threshold "
                   f"{format_number(second.get('threshold'))}, the highest grid edge where "
                   "the pooled noisy histogram reaches that sensitivity (post-processing of "
                   "the release; no extra privacy cost).")
    return out
