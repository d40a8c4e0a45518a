"""The results sections of ``report.html``: Summary, Data, Subgroups and Fairness, each a
function of one :class:`~medfl.reporting.html_page.Page` returning an HTML fragment."""

from __future__ import annotations

import html

from medfl.reporting import plots
from medfl.reporting.html_page import Page, sentence
from medfl.reporting.population_schema import Comparison, Population, Subgroup
from medfl.reporting.wording import (
    GAPS,
    HEADLINE,
    METRICS,
    PRIMARY,
    as_float,
    format_number,
    metric_label,
    metric_order,
    noise_note,
    operating_lines,
    sites_text,
)

__all__ = ["data_section", "fairness_section", "subgroups_section", "summary_section"]

ROC_CAPTION = "ROC curve per population; dashed: chance"
RELIABILITY_CAPTION = ("Reliability: observed frequency against predicted probability; "
                       "marker area ∝ patients per bin")
FLAGGED = '<span class="flagtxt">⚑ flagged</span>'


def summary_section(page: Page) -> str:
    """Every metric of every shown population, each column with its test cases and the
    sites it is computed from, and the ROC and reliability curves."""
    rows = [["Test cases", *(page.count(p.n_test, p.n_test_noise_sd) for p in page.shown)],
            ["Sites", *(_sites(page, p) for p in page.shown)]]
    rows += [[html.escape(metric_label(n)),
              *(page.figure(p.metrics.get(n), n) for p in page.shown)]
             for n in metric_order(page.shown)]
    threshold = page.report.operating_threshold
    value, rule = (threshold.value, threshold.rule) if threshold else (None, None)
    out = ['<section id="summary"><h2>Summary</h2>',
           f'<p class="lead">{page.text(noise_note(page.report))}</p>',
           page.table(["Metric", *map(page.label, page.shown)], rows),
           '<p class="note">Each cell: estimate (95% CI). ↓ lower is better. '
           f"Threshold-dependent metrics at {format_number(value)} ({page.text(rule)}).</p>"]
    if threshold is not None:
        out += [f'<p class="note">{page.text(line)}</p>' for line in operating_lines(threshold)]
    if page.kind == "classification":
        out.append(_curves(page))
    return "".join(out) + "</section>"


def _sites(page: Page, p: Population) -> str:
    """The sites a population's figures are computed from: named in the consortium's
    view, only counted for the pooled population in a site's view."""
    return page.text(sites_text(p.sites_included, named=not (page.site_view and p.pooled)))


def _curves(page: Page) -> str:
    curves = {page.label(p): p.roc for p in page.shown}
    bins = {page.label(p): p.reliability for p in page.shown}
    missing = ", ".join(name for name, curve in curves.items() if not curve)
    caption = ROC_CAPTION
    if missing:
        caption += f". No curve for: {missing}"
    roc = page.fig(plots.roc_svg(curves, emphasis="pooled"), caption)
    reliability = page.fig(plots.reliability_svg(bins, emphasis="pooled"), RELIABILITY_CAPTION)
    return f'<div class="row">{roc}{reliability}</div>'


def data_section(page: Page) -> str:
    """The data's provenance, each population's sizes and prevalence, demographics."""
    ds = page.report.dataset
    name, provenance = (ds.name, ds.provenance) if ds else (None, None)
    licence = f" Licence: {page.text(ds.licence)}." if ds is not None and ds.licence else ""
    with_prevalence = page.kind != "segmentation" or any(
        as_float(p.prevalence) is not None for p in page.shown)
    head = ["Population", "Training cases", "Test cases"]
    if with_prevalence:
        head.append("Prevalence")
    rows = []
    for p in page.shown:
        row = [page.text(page.label(p)), page.count(p.n_train),
               page.count(p.n_test, p.n_test_noise_sd)]
        if with_prevalence:
            row.append(page.prevalence(p))
        rows.append(row)
    classes = ["pooled" if p.pooled else "" for p in page.shown]
    out = ['<section id="data"><h2>Data</h2>',
           f"<p>{page.text(sentence(name))} {page.text(sentence(provenance))}{licence}</p>",
           page.table(head, rows, classes=classes), _pooled_note(page), _demographics(page)]
    return "".join(out) + "</section>"


def _pooled_note(page: Page) -> str:
    """Which sites the pooled figures combine (in a site's view: whether it is one)."""
    if page.pooled is None or page.pooled.sites_included is None:
        return ""
    pooled = page.pooled
    included = pooled.sites_included or []
    n = page.count(pooled.n_test, pooled.n_test_noise_sd)
    equals = "" if pooled.noisy else "= "  # a noisy count reads "≈190"
    note = (f'<p class="note">Pooled figures and counts are sums over the same '
            f"{len(included)} site(s) (n {equals}{n})")
    if page.site is None:
        note += f": {page.text(', '.join(included))}."
    elif page.site in included:
        note += "; this site is one of them."
    else:
        note += "; this site is not one of them."
    return note + "</p>"


def _demographics(page: Page) -> str:
    """Test-set counts per declared group and population ("—": not in that population)."""
    levels = list(dict.fromkeys((d.attribute, d.level)
                                for p in page.shown for d in p.demographics))
    if not levels:
        return ""
    counts = [{(d.attribute, d.level): d for d in p.demographics} for p in page.shown]
    rows = []
    for attribute, level in levels:
        cells = [page.count(n[(attribute, level)].n, n[(attribute, level)].n_noise_sd)
                 if (attribute, level) in n else '<span class="na">—</span>' for n in counts]
        rows.append([f"{page.text(attribute)}: {page.text(level)}", *cells])
    return ("<h3>Demographics of the test sets</h3>"
            + page.table(["Group", *map(page.label, page.shown)], rows))


def subgroups_section(page: Page) -> str:
    """Per population, the headline figures of each subgroup and a forest plot; in a
    site's view, the pooled population's primary figure beside each of the site's."""
    compare: list[Subgroup] = []
    if page.site_view and page.pooled is not None:
        compare = page.pooled.subgroups
    out = ['<section id="subgroups"><h2>Subgroups</h2>']
    out += [_subgroups(page, p, compare) for p in page.own_populations()]
    return "".join(out) + "</section>"


def _subgroups(page: Page, p: Population, compare: list[Subgroup]) -> str:
    primary = PRIMARY.get(page.kind, "auroc")
    subs = p.subgroups
    names = [n for n in HEADLINE.get(page.kind, ()) if any(n in s.metrics for s in subs)]
    with_sites = p.pooled and not page.site_view  # each pooled row names its sites
    head = ["Attribute", "Level", "n", *(["Sites"] if with_sites else []),
            *map(metric_label, names)]
    if compare:
        head.append(f"pooled {metric_label(primary)}")
    twins = {(s.attribute, s.level): s for s in compare}
    rows, notes = [], []
    for s in subs:
        cells = [page.count(None) if s.suppressed else page.figure(s.metrics.get(n), n)
                 for n in names]
        if compare:
            twin = twins.get((s.attribute, s.level))
            cells.append(page.figure(twin.metrics.get(primary) if twin else None, primary))
        mark = ""
        if s.suppressed and s.reason:  # a footnote under the table keeps the columns narrow
            if s.reason not in notes:
                notes.append(s.reason)
            mark = f'<sup class="note">{notes.index(s.reason) + 1}</sup>'
        sites = [page.text(sites_text(s.sites_included))] if with_sites else []
        rows.append([page.text(s.attribute), page.text(s.level) + mark,
                     page.count(s.n, s.n_noise_sd), *sites, *cells])
    title = f"<h3>{page.text(page.label(p))}</h3>"
    if subs and all(s.n is None for s in subs):
        return (f'{title}<p class="na">Every subgroup is withheld here: '
                f'{page.text(subs[0].reason or "")}.</p>')
    if not rows:
        return f'{title}<p class="na">No subgroup results.</p>'
    foot = "".join(f'<p class="note"><sup>{i}</sup> {page.text(r)}</p>'
                   for i, r in enumerate(notes, start=1))
    table = page.table(head, rows, num_from=4 if with_sites else 2)
    return f'{title}<div class="row"><div>{table}{foot}</div>{_forest(page, p, compare)}</div>'


def _forest(page: Page, p: Population, compare: list[Subgroup]) -> str:
    """The forest plot of a population's primary figure per subgroup ("" if none)."""
    primary = PRIMARY.get(page.kind, "auroc")
    label = METRICS[primary][0]
    overall = p.metrics.get(primary)
    svg = plots.forest_svg([s.to_dict() for s in p.subgroups], metric=primary, label=label,
                           k=page.k, compare=[s.to_dict() for s in compare],
                           names=(page.label(p), "pooled"),
                           reference=as_float(overall.value) if overall else None,
                           title=f"{page.label(p)}: {label} by subgroup")
    if not svg:
        return ""
    return page.fig(svg, f"{label} per subgroup with 95% CI; dashed: whole population")


def fairness_section(page: Page) -> str:
    """Per population, every gap with its CI and flag, and a plot of the gaps; in a
    site's view, the pooled gap beside each of the site's."""
    out = ['<section id="fairness"><h2>Fairness</h2><p class="note">Gaps between '
           'subgroups with 95% CIs; a gap is <span class="flagtxt">flagged ⚑</span> when '
           "its CI excludes 0.</p>"]
    out += [_fairness(page, p) for p in page.own_populations()]
    return "".join(out) + "</section>"


def _fairness(page: Page, p: Population) -> str:
    pooled: dict[tuple[str | None, ...], Comparison] = {}
    if page.pooled is not None:
        pooled = {(f.attribute, f.reference, f.comparison): f for f in page.pooled.fairness}
    head = ["Attribute", "Comparison", "Gap", "Value (95% CI)", "Flag"]
    if page.site_view:
        head.append("pooled (95% CI)")
    rows, classes = [], []
    for f in p.fairness:
        twin = pooled.get((f.attribute, f.reference, f.comparison))
        for name, gap in f.gaps.items():
            row = [page.text(f.attribute),
                   f"{page.text(f.comparison)} vs {page.text(f.reference)}",
                   html.escape(GAPS.get(name, name)), page.figure(gap, name),
                   FLAGGED if gap.flagged else ""]
            if page.site_view:
                row.append(page.figure(twin.gaps.get(name) if twin else None, name))
            rows.append(row)
            classes.append("flag" if gap.flagged else "")
    out = (f"<h3>{page.text(page.label(p))} <span class='note'>"
           f"({classes.count('flag')} flagged)</span></h3>")
    if p.pooled:
        out += (f'<p class="note">Both subgroups of each gap are summed over '
                f"{page.text(sites_text(p.sites_included))}.</p>")
    if not rows:
        return out + '<p class="na">No fairness comparisons.</p>'
    every_gap = [g for f in p.fairness for g in f.gaps.values()]
    if all(g.suppressed for g in every_gap) and not page.site_view:
        return out + ('<p class="na">Every gap is withheld here: its subgroups are '
                      "suppressed (see Subgroups).</p>")
    svg = plots.fairness_svg([f.to_dict() for f in p.fairness], gap_labels=GAPS,
                             title=f"{page.label(p)}: fairness gaps")
    figure = ""
    if svg:
        figure = page.fig(svg, "Gap with 95% CI; flagged gaps in orange; vertical line: no gap")
    table = page.table(head, rows, classes=classes, num_from=3)
    return out + f'<div class="row">{table}{figure}</div>'

