"""``report.html``: a run's report as one self-contained page.

Two views of the same ``report.json``: the consortium's (pooled population first, then
every site) and one site's own (its figures beside the pooled ones, no other site's). The
page loads nothing: CSS and SVG figures are inline, and a Content-Security-Policy forbids
scripts and remote resources in case a string ever slipped past escaping. Every string
from the report is escaped; in a site's view, other sites' names in free text become
"another site".

Plain f-strings with :func:`html.escape` rather than a template engine: the page is a few
tables and figures, and this keeps the renderer free of dependencies beyond matplotlib.
Values are worded as in the model card (:mod:`medfl.reporting.model_card`).
"""

from __future__ import annotations

import html
import re
from collections.abc import Mapping, Sequence
from typing import Any

import medfl
from medfl.errors import ConfigError, DataError
from medfl.reporting import plots
from medfl.reporting.model_card import (
    EST,
    GAPS,
    HEADLINE,
    METRICS,
    PRIMARY,
    as_float,
    format_delta,
    format_metric,
    format_number,
    is_pooled,
    known_limitations,
    metric_label,
    suppressed_text,
)

__all__ = ["render_report_html"]

CSS = """
*{box-sizing:border-box}
body{margin:0;font:15px/1.55 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",
 sans-serif;color:#1d1d1f;background:#f6f7f9}
main{max-width:1120px;margin:0 auto;padding:1.2rem 1.4rem 3rem;background:#fff}
h1{font-size:1.75rem;margin:.2rem 0 .6rem;overflow-wrap:anywhere}
h2{font-size:1.3rem;margin:2.4rem 0 .6rem;padding-bottom:.25rem;border-bottom:2px solid #e4e6ea}
h3{font-size:1.05rem;margin:1.6rem 0 .4rem;overflow-wrap:anywhere}
.kicker{margin:0;color:#555;font-size:.85rem;text-transform:uppercase;letter-spacing:.06em}
dl.facts{display:flex;flex-wrap:wrap;gap:.2rem 1.6rem;margin:.4rem 0;font-size:.92rem}
.facts div{display:flex;gap:.4rem}.facts dt{color:#666}.facts dd{margin:0;font-weight:600}
.banner{margin:1rem 0;padding:.8rem 1rem;border:2px solid #b3261e;border-radius:6px;
 background:#fdecea;color:#5f1410}.banner strong{display:block;font-size:1.05rem}
nav{font-size:.9rem;margin:.8rem 0;line-height:1.9}nav a{margin-right:.9rem;white-space:nowrap}
a{color:#0b57a4}
.wrap{overflow-x:auto;margin:.4rem 0 1rem;max-width:100%}
table{border-collapse:collapse;font-size:.9rem}
th,td{padding:.35rem .7rem;border-bottom:1px solid #e4e6ea;text-align:left;vertical-align:top}
thead th{background:#f1f3f5;font-weight:600;border-bottom:2px solid #d0d4d9}
tbody th{font-weight:400;white-space:nowrap}
.n{text-align:right;font-variant-numeric:tabular-nums}.v{white-space:nowrap}
tr.pooled>*{font-weight:600;background:#fafbfc}
.supp{white-space:nowrap;font-style:italic;color:#6b4e00;background:#fff4d6;padding:0 .25rem;
 border-radius:3px}
.na{color:#888;font-style:italic}
sup.est{color:#0b57a4;font-weight:700;display:inline-block;width:0}
tr.flag>*{background:#fff1ec}.flagtxt{color:#b3261e;font-weight:700;white-space:nowrap}
.row{display:flex;flex-wrap:wrap;gap:.4rem 2rem;align-items:flex-start}
.row>.wrap{flex:0 1 auto}
figure{margin:.4rem 0;flex:1 1 400px;max-width:100%}
figure.small{flex:0 1 280px}
figcaption{font-size:.82rem;color:#555;margin-top:.2rem}
.note{color:#555;font-size:.88rem}
.warn{background:#fff4d6;padding:.6rem 1rem;border-left:4px solid #c98a00}
dl.methods dt{font-weight:600;margin-top:.6rem}dl.methods dd{margin:.1rem 0 0 0}
footer{margin-top:2.5rem;font-size:.82rem;color:#555;border-top:1px solid #e4e6ea}
@media (max-width:560px){main{padding:.8rem .7rem 2rem}h1{font-size:1.35rem}
 th,td{padding:.3rem .45rem}body{font-size:14px}}
@media print{body{background:#fff}main{max-width:none}.wrap{overflow:visible}}
"""
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
SECTIONS = (("summary", "Summary"), ("data", "Data"), ("subgroups", "Subgroups"),
            ("fairness", "Fairness"), ("training", "Training"), ("privacy", "Privacy"),
            ("explanations", "Explanations"), ("methods", "Methods"),
            ("limitations", "Limitations"))


def _stop(s: Any) -> str:
    """``s`` as a sentence: ending in a full stop unless it already ends a sentence."""
    s = "" if s is None else str(s).strip()
    return s if not s or s[-1] in ".!?" else s + "."


class _Page:
    """One view of a report; each section method returns an HTML fragment."""

    def __init__(self, report: Mapping[str, Any], site: str | None) -> None:
        self.r, self.site = report, site
        self.k = int(report.get("k_threshold") or (report.get("privacy") or {})
                     .get("k_threshold") or 0)
        self.kind = report.get("kind") or "classification"
        pops = [p for p in report.get("populations") or [] if isinstance(p, Mapping)]
        self.pooled = next((p for p in pops if is_pooled(p)), None)
        all_sites = [p for p in pops if not is_pooled(p)]
        names = {str(p.get("name")) for p in all_sites}
        names |= {str(s.get("name")) for s in (report.get("privacy") or {}).get("sites") or []}
        if site is not None and site not in names:
            raise ConfigError(f"site {site!r} is not in report {report.get('run_name')!r}; "
                              f"valid sites: {', '.join(sorted(names)) or 'none'}")
        self.sites = [p for p in all_sites if site in (None, p.get("name"))]
        self.site_names = [site] if site else [str(p.get("name")) for p in all_sites]
        # Longest first, so that a name containing another is replaced whole.
        self.hidden = sorted(names - {site}, key=len, reverse=True) if site else []
        shown = [*self.sites, self.pooled] if site else [self.pooled, *self.sites]
        self.shown = [p for p in shown if p is not None]
        self.estimated = False

    # -- formatting ---------------------------------------------------------------
    def t(self, s: Any) -> str:
        """Free text from the report, escaped; other sites' names hidden in a site view."""
        s = "" if s is None else str(s)
        for name in self.hidden:
            s = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "another site", s)
        return html.escape(s)

    def m(self, m: Mapping[str, Any] | None, name: str) -> str:
        """A metric or gap record as an HTML fragment (see :func:`format_metric`)."""
        text = format_metric(m, k=self.k, digits=METRICS.get(name, ("", 3))[1], mark=False)
        if text == suppressed_text(self.k):
            return f'<span class="supp">{html.escape(text)}</span>'
        if text == "n/a":
            return '<span class="na">n/a</span>'
        # Estimate and CI each unbreakable, so a narrow column wraps between them.
        value, _, ci = text.partition(" (")
        out = f'<span class="v">{html.escape(value)}</span>' + (
            f' <span class="v">({html.escape(ci)}</span>' if ci else "")
        if (m or {}).get("estimated"):
            self.estimated = True
            out += f'<sup class="est" title="estimated">{EST}</sup>'
        return out

    def count(self, n: Any) -> str:
        if n is None:
            return f'<span class="supp">{html.escape(suppressed_text(self.k))}</span>'
        return html.escape(f"{n:,}" if isinstance(n, int) else str(n))

    def prevalence(self, p: Mapping[str, Any]) -> str:
        v = as_float(p.get("prevalence"))
        if v is not None:
            return f"{v:.1%}"
        # Segmentation has no prevalence; for a classifier a null one was withheld.
        return '<span class="na">n/a</span>' if self.kind == "segmentation" else self.count(None)

    @staticmethod
    def table(head: Sequence[str], rows: Sequence[Sequence[str]], *,
              classes: Sequence[str] = (), num_from: int = 1) -> str:
        """Header cells are escaped here; body cells arrive as HTML. The first column
        holds row headers; columns from ``num_from`` on are right-aligned numbers."""
        def cls(i: int) -> str:
            return ' class="n"' if i >= num_from else ""
        th = "".join(f'<th scope="col"{cls(i)}>{html.escape(h)}</th>' for i, h in enumerate(head))
        body = "".join(
            (f'<tr class="{c}">' if c else "<tr>") + f'<th scope="row">{row[0]}</th>'
            + "".join(f"<td{cls(i)}>{v}</td>" for i, v in enumerate(row[1:], 1)) + "</tr>"
            for row, c in zip(rows, [*classes, *[""] * len(rows)], strict=False))
        return f'<div class="wrap"><table><thead><tr>{th}</tr></thead><tbody>{body}' \
               "</tbody></table></div>"

    def fig(self, svg: str, caption: str) -> str:
        if not svg:
            return f'<p class="na">{self.t(caption)}: not available.</p>'
        return f"<figure>{svg}<figcaption>{self.t(caption)}</figcaption></figure>"

    def label(self, p: Mapping[str, Any]) -> str:
        return "pooled" if is_pooled(p) else str(p.get("name"))

    def facts(self, pairs: Sequence[tuple[str, Any]]) -> str:
        return '<dl class="facts">' + "".join(
            f"<div><dt>{a}</dt><dd>{self.t(b)}</dd></div>" for a, b in pairs
            if b is not None and b != "") + "</dl>"

    # -- sections -----------------------------------------------------------------
    def header(self) -> str:
        r, ds, t = self.r, self.r.get("dataset") or {}, self.r.get("training") or {}
        view = "consortium report" if self.site is None else f"site report: {self.site}"
        return (f'<header><p class="kicker">MedFL · {self.t(view)}</p>'
                f'<h1>{self.t(r.get("run_name"))}</h1>'
                + self.facts([("Task", r.get("task")), ("Model", t.get("model")),
                              ("Dataset", ds.get("name")), ("Created (UTC)", r.get("created_utc"))])
                + '<div class="banner" role="note"><strong>Research software — not for clinical '
                f'use</strong>{self.t(r.get("disclaimer") or medfl.DISCLAIMER)}</div>'
                + "<nav>" + " ".join(f'<a href="#{a}">{b}</a>' for a, b in SECTIONS)
                + "</nav></header>")

    def summary(self) -> str:
        order = list(METRICS)
        names = sorted({n for p in self.shown for n in p.get("metrics") or {}},
                       key=lambda n: order.index(n) if n in order else len(order))
        rows = [[html.escape(metric_label(n)),
                 *(self.m((p.get("metrics") or {}).get(n), n) for p in self.shown)]
                for n in names]
        thr = self.r.get("operating_threshold") or {}
        out = ['<section id="summary"><h2>Summary</h2>',
               self.table(["Metric", *map(self.label, self.shown)], rows),
               '<p class="note">Each cell: estimate (95% CI). ↓ lower is better. '
               f'Threshold-dependent metrics at {format_number(thr.get("value"))} '
               f'({self.t(thr.get("rule"))}).</p>']
        if self.kind == "classification":
            curves = {self.label(p): p.get("roc") for p in self.shown}
            bins = {self.label(p): p.get("reliability") for p in self.shown}
            missing = ", ".join(n for n, c in curves.items() if not c)
            out.append('<div class="row">' + self.fig(
                plots.roc_svg(curves, emphasis="pooled"),
                "ROC curve per population; dashed: chance"
                + (f". No curve for: {missing}" if missing else ""))
                + self.fig(plots.reliability_svg(bins, emphasis="pooled"),
                           "Reliability: observed frequency against predicted probability; "
                           "marker area ∝ patients per bin") + "</div>")
        return "".join(out) + "</section>"

    def data(self) -> str:
        ds = self.r.get("dataset") or {}
        prev = self.kind != "segmentation" or any(as_float(p.get("prevalence")) is not None
                                                  for p in self.shown)
        rows = [[self.t(self.label(p)), self.count(p.get("n_train")), self.count(p.get("n_test")),
                 *[self.prevalence(p)] * prev] for p in self.shown]
        licence = f" Licence: {self.t(ds['licence'])}." if ds.get("licence") else ""
        out = ['<section id="data"><h2>Data</h2>',
               f"<p>{self.t(_stop(ds.get('name')))} {self.t(_stop(ds.get('provenance')))}"
               f"{licence}</p>",
               self.table(["Population", "Training cases", "Test cases", "Prevalence"][:3 + prev],
                          rows,
                          classes=["pooled" if is_pooled(p) else "" for p in self.shown])]
        if self.pooled and self.pooled.get("sites_included") is not None:
            inc = [str(s) for s in self.pooled["sites_included"]]
            out.append(f'<p class="note">Pooled figures combine {len(inc)} site(s)' + (
                f": {self.t(', '.join(inc))}." if self.site is None else
                f"; this site is {'' if self.site in inc else 'not '}one of them.") + "</p>")
        levels = list(dict.fromkeys((d.get("attribute"), d.get("level"))
                                    for p in self.shown for d in p.get("demographics") or []))
        if levels:
            n = {(id(p), d.get("attribute"), d.get("level")): d.get("n")
                 for p in self.shown for d in p.get("demographics") or []}
            rows = [[f"{self.t(a)}: {self.t(lv)}", *(
                self.count(n[(id(p), a, lv)]) if (id(p), a, lv) in n
                else '<span class="na">—</span>' for p in self.shown)] for a, lv in levels]
            out += ["<h3>Demographics of the test sets</h3>",
                    self.table(["Group", *map(self.label, self.shown)], rows)]
        return "".join(out) + "</section>"

    def subgroups(self) -> str:
        prim = PRIMARY.get(self.kind, "auroc")
        compare = (self.pooled or {}).get("subgroups") if self.site else None
        ref = {(s.get("attribute"), s.get("level")): s for s in compare or []}
        out = ['<section id="subgroups"><h2>Subgroups</h2>']
        for p in [p for p in self.shown if self.site is None or not is_pooled(p)]:
            subs = [s for s in p.get("subgroups") or [] if isinstance(s, Mapping)]
            names = [n for n in HEADLINE.get(self.kind, ())
                     if any(n in (s.get("metrics") or {}) for s in subs)]
            head = ["Attribute", "Level", "n", *map(metric_label, names)]
            head += [f"pooled {metric_label(prim)}"] if compare else []
            rows, notes = [], []
            for s in subs:
                reason = s.get("reason") if s.get("suppressed") else None
                cells = [self.count(None) if s.get("suppressed") else
                         self.m((s.get("metrics") or {}).get(n), n) for n in names]
                if compare:
                    twin = ref.get((s.get("attribute"), s.get("level"))) or {}
                    cells.append(self.m((twin.get("metrics") or {}).get(prim), prim))
                mark = ""
                if reason:  # a footnote under the table keeps the columns narrow
                    notes += [reason] if reason not in notes else []
                    mark = f'<sup class="note">{notes.index(reason) + 1}</sup>'
                rows.append([self.t(s.get("attribute")), self.t(s.get("level")) + mark,
                             self.count(s.get("n")), *cells])
            if subs and all(s.get("n") is None for s in subs):
                out.append(f"<h3>{self.t(self.label(p))}</h3>")
                out.append(f'<p class="na">Every subgroup is withheld here: '
                           f'{self.t(subs[0].get("reason") or "")}.</p>')
                continue
            overall = as_float(((p.get("metrics") or {}).get(prim) or {}).get("value"))
            svg = plots.forest_svg(subs, metric=prim, label=METRICS[prim][0], k=self.k,
                                   compare=compare, names=(self.label(p), "pooled"),
                                   reference=overall,
                                   title=f"{self.label(p)}: {METRICS[prim][0]} by subgroup")
            out.append(f"<h3>{self.t(self.label(p))}</h3>")
            if not rows:
                out.append('<p class="na">No subgroup results.</p>')
                continue
            foot = "".join(f'<p class="note"><sup>{i}</sup> {self.t(r)}</p>'
                           for i, r in enumerate(notes, start=1))
            out.append('<div class="row"><div>' + self.table(head, rows, num_from=2) + foot
                       + "</div>" + (self.fig(
                svg, f"{METRICS[prim][0]} per subgroup with 95% CI; dashed: whole population")
                if svg else "") + "</div>")
        return "".join(out) + "</section>"

    def fairness(self) -> str:
        pooled = {(f.get("attribute"), f.get("reference"), f.get("comparison")): f
                  for f in (self.pooled or {}).get("fairness") or []}
        out = ['<section id="fairness"><h2>Fairness</h2><p class="note">Gaps between '
               'subgroups with 95% CIs; a gap is <span class="flagtxt">flagged ⚑</span> when '
               "its CI excludes 0.</p>"]
        for p in [p for p in self.shown if self.site is None or not is_pooled(p)]:
            head = ["Attribute", "Comparison", "Gap", "Value (95% CI)", "Flag"]
            head += ["pooled (95% CI)"] if self.site else []
            rows, classes = [], []
            for f in p.get("fairness") or []:
                twin = pooled.get((f.get("attribute"), f.get("reference"), f.get("comparison")))
                for gap, g in (f.get("gaps") or {}).items():
                    g = g or {}
                    rows.append([self.t(f.get("attribute")),
                                 f"{self.t(f.get('comparison'))} vs {self.t(f.get('reference'))}",
                                 html.escape(GAPS.get(gap, gap)), self.m(g, gap),
                                 '<span class="flagtxt">⚑ flagged</span>'
                                 if g.get("flagged") else ""])
                    if self.site:
                        rows[-1].append(self.m(((twin or {}).get("gaps") or {}).get(gap), gap))
                    classes.append("flag" if g.get("flagged") else "")
            out.append(f"<h3>{self.t(self.label(p))} <span class='note'>"
                       f"({classes.count('flag')} flagged)</span></h3>")
            if not rows:
                out.append('<p class="na">No fairness comparisons.</p>')
                continue
            gaps = [g or {} for f in p.get("fairness") or []
                    for g in (f.get("gaps") or {}).values()]
            if all(g.get("suppressed") for g in gaps) and not self.site:
                out.append('<p class="na">Every gap is withheld here: its subgroups are '
                           "suppressed (see Subgroups).</p>")
                continue
            svg = plots.fairness_svg(p.get("fairness"), gap_labels=GAPS,
                                     title=f"{self.label(p)}: fairness gaps")
            out.append('<div class="row">' + self.table(head, rows, classes=classes, num_from=3)
                       + (self.fig(svg, "Gap with 95% CI; flagged gaps in orange; vertical "
                                        "line: no gap") if svg else "") + "</div>")
        return "".join(out) + "</section>"

    def training(self) -> str:
        t = self.r.get("training") or {}
        rounds = f"{t.get('rounds')} of {t.get('rounds_planned')} planned" \
            if t.get("rounds_planned") is not None else t.get("rounds")
        facts = [("Strategy", t.get("strategy")), ("Model", t.get("model")), ("Rounds", rounds),
                 ("Local epochs", t.get("local_epochs")), ("Batch size", t.get("batch_size")),
                 ("Optimizer", t.get("optimizer")), ("Learning rate", t.get("lr")),
                 ("Seed", t.get("seed"))]
        labels = {n: v[0] for n, v in METRICS.items()} | {"loss": "loss"}
        figs = [self.fig(plots.training_svg(self.r.get("rounds"), panel=panel,
                                            sites=self.site_names, labels=labels), caption)
                for panel, caption in (("metrics", "Global model, pooled over the sites"),
                                       ("loss", "Global model, pooled loss"),
                                       ("epsilon", "Cumulative ε per site"))]
        probs = [[str(r.get("round")), self.t(q.get("site")), self.t(q.get("status")),
                  self.t(q.get("reason"))] for r in self.r.get("rounds") or []
                 for q in r.get("problems") or [] if self.site in (None, q.get("site"))]
        return ('<section id="training"><h2>Training</h2>' + self.facts(facts)
                + '<div class="row">' + "".join(f for f in figs if "<svg" in f) + "</div>"
                + ("<h3>Sites missing from rounds</h3>"
                   + self.table(["Round", "Site", "Status", "Reason"], probs, num_from=9)
                   if probs else '<p class="note">No site failed or dropped out of a round.</p>')
                + "</section>")

    def privacy(self) -> str:
        pv = self.r.get("privacy") or {}
        sites = [s for s in pv.get("sites") or [] if self.site in (None, s.get("name"))]
        rows = [[self.t(s.get("name")), format_number(s.get("epsilon"), 2),
                 html.escape(format_delta(s.get("delta"))),
                 format_number(s.get("noise_multiplier"), 2),
                 self.t(s.get("steps") if s.get("steps") is not None else "n/a")]
                for s in sites]
        facts = [("Target ε per site", format_number(pv.get("target_epsilon"), 2)),
                 ("δ", format_delta(pv.get("delta"))),
                 ("Accountant", pv.get("accountant") or "n/a"),
                 ("Suppression threshold k", pv.get("k_threshold", self.k))]
        off = ('<p class="warn"><strong>DP-SGD was off in this run:</strong> model updates '
               "left the sites without differential privacy.</p>")
        return ('<section id="privacy"><h2>Privacy</h2>' + ("" if pv.get("dp_sgd") else off)
                + self.facts(facts) + "<h3>Mechanisms</h3><ul>"
                + "".join(f"<li>{self.t(m)}</li>" for m in pv.get("mechanisms") or [])
                + "</ul><h3>Privacy spent per site (this run)</h3><div class='row'>"
                + self.table(["Site", "ε", "δ", "Noise multiplier", "Steps"], rows)
                + self.fig(plots.epsilon_svg(sites, target=as_float(pv.get("target_epsilon"))),
                           "ε spent per site over the run; dashed: target")
                + "</div><h3>What left the sites outside any DP mechanism</h3><ul>"
                + "".join(f"<li>{self.t(x)}</li>" for x in pv.get("non_dp_releases") or [])
                + "</ul></section>")

    def explanations(self) -> str:
        ex = self.r.get("explanations") or {}
        out = ['<section id="explanations"><h2>Explanations</h2>']
        if ex.get("kind") == "shap":
            feats = [f for f in ex.get("features") or [] if isinstance(f, Mapping)][:15]
            rows = [[self.t(f.get("name")), format_number(f.get("mean_abs_shap")),
                     *(format_number((f.get("per_site") or {}).get(n)) for n in self.site_names)]
                    for f in feats]
            out.append('<div class="row">' + self.fig(plots.feature_importance_svg(feats),
                                                      "Mean |SHAP| over the pooled test sets")
                       + (self.table(["Feature", "pooled", *self.site_names], rows)
                          if rows else "") + "</div>")
        elif ex.get("kind") == "grad-cam":
            grids = {"pooled": ex.get("saliency_grid")} | {
                n: (ex.get("per_site") or {}).get(n) for n in self.site_names}
            top = plots.grid_max(grids)
            figs = {n: plots.saliency_svg(g, vmax=top, title=n) for n, g in grids.items()}
            missing = ", ".join(n for n, svg in figs.items() if not svg)
            out.append('<p class="note">Share of Grad-CAM saliency in each cell of a grid over '
                       "the image, on one colour scale"
                       + (f"; no grid from: {self.t(missing)}" if missing else "") + ".</p>"
                       + '<div class="row">' + "".join(
                           f'<figure class="small">{svg}</figure>' for svg in figs.values() if svg)
                       + "</div>")
        else:
            out.append('<p class="na">No explanations were computed for this run.</p>')
        out += [f'<p class="note">{self.t(ex[key])}</p>' for key in ("method", "site_local_note")
                if ex.get(key)]
        return "".join(out) + "</section>"

    def methods(self) -> str:
        labels = [("statistics", "Statistics"), ("metrics", "Metrics"),
                  ("ci", "Confidence intervals"), ("suppression", "Suppression"),
                  ("fairness", "Fairness")]
        m = self.r.get("methods") or {}
        items = "".join(f"<dt>{b}</dt><dd>{self.t(m[a])}</dd>" for a, b in labels if m.get(a))
        return f'<section id="methods"><h2>Methods</h2><dl class="methods">{items}</dl></section>'

    def limitations(self) -> str:
        items = [*(self.r.get("limitations") or []), *known_limitations(self.r)]
        return ('<section id="limitations"><h2>Limitations</h2><ul>'
                + "".join(f"<li>{self.t(x)}</li>" for x in items) + "</ul></section>")

    def render(self) -> str:
        body = "".join([self.header(), self.summary(), self.data(), self.subgroups(),
                        self.fairness(), self.training(), self.privacy(),
                        self.explanations(), self.methods(), self.limitations()])
        foot = (f"<p><sup class='est'>{EST}</sup>&nbsp; Estimated rather than computed exactly "
                "from the sites' statistics; see Methods.</p>" if self.estimated else "")
        title = f"{self.r.get('run_name')}: " + (self.site or "consortium") + " report"
        return ("<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
                f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
                '<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{self.t(title)}</title><style>{CSS}</style></head><body><main>"
                f"{body}<footer>{foot}<p>Generated by MedFL {html.escape(medfl.__version__)} "
                f"from report.json (schema {self.t(self.r.get('schema_version'))}). "
                f"{self.t(self.r.get('disclaimer') or medfl.DISCLAIMER)}</p></footer>"
                "</main></body></html>\n")


def render_report_html(report: Mapping[str, Any], *, site: str | None = None) -> str:
    """The run's report as one self-contained HTML page.

    Parameters
    ----------
    report : the parsed ``report.json`` (schema version 1)
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
    if not isinstance(report, Mapping) or report.get("schema_version") != 1:
        got = report.get("schema_version") if isinstance(report, Mapping) else type(report)
        raise DataError(f"report.json: schema_version {got!r} is not supported; expected 1")
    return _Page(report, site).render()
