"""``report.html``: a run's report as one self-contained page.

Two views of the same ``report.json``: the consortium's (pooled population first, then
every site) and one site's own (its figures beside the pooled ones, no other site's). The
page loads nothing: CSS and SVG figures are inline, and a Content-Security-Policy forbids
scripts and remote resources in case a string ever slipped past escaping. Every string
from the report is escaped; in a site's view, other sites' names in free text become
"another site".

Plain f-strings with :func:`html.escape` rather than a template engine: the page is a few
tables and figures, and this keeps the renderer free of dependencies beyond matplotlib.
The page's building blocks are in :mod:`medfl.reporting.html_page`, the results sections
in :mod:`medfl.reporting.html_results`; values are worded as in the model card
(:mod:`medfl.reporting.wording`).
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import Any

import medfl
from medfl.reporting import plots
from medfl.reporting.html_page import CSP, CSS, Page
from medfl.reporting.html_results import (
    data_section,
    fairness_section,
    subgroups_section,
    summary_section,
)
from medfl.reporting.report_schema import Explanations, Report, ReportPrivacy
from medfl.reporting.wording import (
    EST,
    METRICS,
    as_float,
    format_delta,
    format_number,
    known_limitations,
)

__all__ = ["render_report_html"]

SECTIONS = (("summary", "Summary"), ("data", "Data"), ("subgroups", "Subgroups"),
            ("fairness", "Fairness"), ("training", "Training"), ("privacy", "Privacy"),
            ("explanations", "Explanations"), ("methods", "Methods"),
            ("limitations", "Limitations"))
METHODS = (("statistics", "Statistics"), ("metrics", "Metrics"),
           ("ci", "Confidence intervals"), ("suppression", "Utility floor (k)"),
           ("fairness", "Fairness"))
TRAINING_PANELS = (("metrics", "Global model, pooled over the sites"),
                   ("loss", "Global model, pooled loss"),
                   ("epsilon", "Cumulative ε per site"))
DP_OFF = ('<p class="warn"><strong>DP-SGD was off in this run:</strong> model updates '
          "left the sites without differential privacy.</p>")


def _header(page: Page) -> str:
    r, t, ds = page.report, page.report.training, page.report.dataset
    view = "consortium report" if page.site is None else f"site report: {page.site}"
    facts = page.facts([("Task", r.task), ("Model", t.model if t else None),
                        ("Dataset", ds.name if ds else None), ("Created (UTC)", r.created_utc)])
    nav = " ".join(f'<a href="#{anchor}">{title}</a>' for anchor, title in SECTIONS)
    return (f'<header><p class="kicker">MedFL · {page.text(view)}</p>'
            f"<h1>{page.text(r.run_name)}</h1>{facts}"
            '<div class="banner" role="note"><strong>Research software — not for clinical '
            f"use</strong>{page.text(r.disclaimer or medfl.DISCLAIMER)}</div>"
            f"<nav>{nav}</nav></header>")


def _training(page: Page) -> str:
    t = page.report.training
    facts: list[tuple[str, Any]] = []
    if t is not None:
        rounds: Any = t.rounds
        if t.rounds_planned is not None:
            rounds = f"{t.rounds} of {t.rounds_planned} planned"
        facts = [("Strategy", t.strategy), ("Model", t.model), ("Rounds", rounds),
                 ("Local epochs", t.local_epochs), ("Batch size", t.batch_size),
                 ("Optimizer", t.optimizer), ("Learning rate", t.lr), ("Seed", t.seed)]
    labels = {n: v[0] for n, v in METRICS.items()} | {"loss": "loss"}
    records = [r.to_dict() for r in page.report.rounds]
    figures = [page.fig(plots.training_svg(records, panel=panel, sites=page.site_names,
                                           labels=labels), caption)
               for panel, caption in TRAINING_PANELS]
    drawn = "".join(f for f in figures if "<svg" in f)
    return ('<section id="training"><h2>Training</h2>' + page.facts(facts)
            + f'<div class="row">{drawn}</div>{_problems(page)}</section>')


def _problems(page: Page) -> str:
    """The sites that failed or dropped out of a round (in a site's view: its own)."""
    rows = [[str(r.round), page.text(q.site), page.text(q.status), page.text(q.reason)]
            for r in page.report.rounds for q in r.problems
            if page.site is None or q.site == page.site]
    if not rows:
        return '<p class="note">No site failed or dropped out of a round.</p>'
    return ("<h3>Sites missing from rounds</h3>"
            + page.table(["Round", "Site", "Status", "Reason"], rows, num_from=9))


def _privacy(page: Page) -> str:
    pv = page.report.privacy or ReportPrivacy(None, [], None, None, None, None, [], [])
    sites = [s for s in pv.sites if page.site is None or s.name == page.site]
    rows = [[page.text(s.name), format_number(s.epsilon, 2), html.escape(format_delta(s.delta)),
             format_number(s.test_epsilon, 2), format_number(s.per_patient_epsilon, 2),
             format_number(s.noise_multiplier, 2),
             page.text("n/a" if s.steps is None else s.steps)] for s in sites]
    k = pv.k_threshold if pv.k_threshold is not None else page.k
    facts = [("Target ε per site, training rows", format_number(pv.target_epsilon, 2)),
             ("Target ε per site, test rows", pv.test_target()),
             ("δ", format_delta(pv.delta)), ("Accountant", pv.accountant or "n/a"),
             ("Suppression threshold k", k)]
    composition = (f'<p class="note">Per patient: {page.text(pv.composition)}.</p>'
                   if pv.composition else "")
    epsilon = plots.epsilon_svg([s.to_dict() for s in sites],
                                target=as_float(pv.target_epsilon))
    mechanisms = "".join(f"<li>{page.text(m)}</li>" for m in pv.mechanisms)
    releases = "".join(f"<li>{page.text(x)}</li>" for x in pv.non_dp_releases)
    return ('<section id="privacy"><h2>Privacy</h2>' + ("" if pv.dp_sgd else DP_OFF)
            + page.facts(facts) + f"<h3>Mechanisms</h3><ul>{mechanisms}</ul>"
            + "<h3>Privacy spent per site (this run)</h3>" + composition + "<div class='row'>"
            + page.table(["Site", "ε training rows", "δ", "ε test rows", "ε per patient",
                          "Noise multiplier", "Steps"], rows)
            + page.fig(epsilon, "ε spent per site over the run; dashed: target")
            + "</div><h3>What left the sites outside any DP mechanism</h3>"
            + f"<ul>{releases}</ul></section>")


def _explanations(page: Page) -> str:
    ex = page.report.explanations
    out = ['<section id="explanations"><h2>Explanations</h2>']
    if ex is not None and ex.kind == "shap":
        out.append(_shap(page, ex))
    elif ex is not None and ex.kind == "grad-cam":
        out.append(_saliency(page, ex))
    else:
        out.append('<p class="na">No explanations were computed for this run.</p>')
    if ex is not None:
        out += [f'<p class="note">{page.text(note)}</p>'
                for note in (ex.method, ex.site_local_note) if note]
    return "".join(out) + "</section>"


def _shap(page: Page, ex: Explanations) -> str:
    """Mean |SHAP| of the top features, pooled and per site, as a plot and a table."""
    features = ex.features[:15]
    rows = [[page.text(f.name), format_number(f.mean_abs_shap),
             *(format_number(f.per_site.get(n)) for n in page.site_names)] for f in features]
    svg = plots.feature_importance_svg([f.to_dict() for f in features])
    table = page.table(["Feature", "pooled", *page.site_names], rows) if rows else ""
    return ('<div class="row">' + page.fig(svg, "Mean |SHAP| over the pooled test sets")
            + table + "</div>")


def _saliency(page: Page, ex: Explanations) -> str:
    """The pooled and each site's Grad-CAM grid, on one colour scale."""
    grids = {"pooled": ex.saliency_grid} | {n: ex.per_site.get(n) for n in page.site_names}
    top = plots.grid_max(grids)
    svgs = {n: plots.saliency_svg(g, vmax=top, title=n) for n, g in grids.items()}
    missing = ", ".join(n for n, svg in svgs.items() if not svg)
    note = ('<p class="note">Share of Grad-CAM saliency in each cell of a grid over the '
            "image, on one colour scale")
    if missing:
        note += f"; no grid from: {page.text(missing)}"
    figures = "".join(f'<figure class="small">{svg}</figure>' for svg in svgs.values() if svg)
    return f'{note}.</p><div class="row">{figures}</div>'


def _methods(page: Page) -> str:
    methods = page.report.methods
    items = "".join(f"<dt>{title}</dt><dd>{page.text(methods[key])}</dd>"
                    for key, title in METHODS if methods.get(key))
    return f'<section id="methods"><h2>Methods</h2><dl class="methods">{items}</dl></section>'


def _limitations(page: Page) -> str:
    items = [*page.report.limitations, *known_limitations(page.report)]
    listed = "".join(f"<li>{page.text(x)}</li>" for x in items)
    return f'<section id="limitations"><h2>Limitations</h2><ul>{listed}</ul></section>'


def _render(page: Page) -> str:
    sections = [_header, summary_section, data_section, subgroups_section, fairness_section,
                _training, _privacy, _explanations, _methods, _limitations]
    body = "".join(section(page) for section in sections)
    foot = ""
    if page.estimated:  # known only once every figure is written
        foot = (f"<p><sup class='est'>{EST}</sup>&nbsp; Estimated rather than computed "
                "exactly from the sites' statistics; see Methods.</p>")
    r = page.report
    title = f"{r.run_name}: {page.site or 'consortium'} report"
    return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{page.text(title)}</title><style>{CSS}</style></head><body><main>"
            f"{body}<footer>{foot}<p>Generated by MedFL {html.escape(medfl.__version__)} "
            f"from report.json (schema {page.text(r.schema_version)}). "
            f"{page.text(r.disclaimer or medfl.DISCLAIMER)}</p></footer>"
            "</main></body></html>\n")


def render_report_html(report: Report | Mapping[str, Any], *, site: str | None = None) -> str:
    """The run's report as one self-contained HTML page.

    Parameters
    ----------
    report : a :class:`Report`, or ``report.json``'s parsed content (schema version 1)
    site : None for the consortium's view (pooled first, then every site); a site's name
        for that site's own view: its figures beside the pooled ones, nothing about any
        other site (their names in free text read "another site").

    Raises
    ------
    DataError
        ``report`` is not a schema-1 report.
    ConfigError
        ``site`` is not one of the report's sites.
    """
    if not isinstance(report, Report):
        report = Report.from_dict(report)
    return _render(Page(report, site))
