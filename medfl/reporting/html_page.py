"""The building blocks of ``report.html``: the page's style, and :class:`Page`, one view of
a report (the consortium's or one site's) with the helpers every section uses to escape
text, word figures and lay out tables and figures (see :mod:`medfl.reporting.html`)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any

from medfl.errors import ConfigError
from medfl.reporting.population_schema import Figure, Population
from medfl.reporting.report_schema import Report
from medfl.reporting.wording import (
    EST,
    as_float,
    format_count,
    format_metric,
    metric_digits,
    suppressed_text,
)

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
NOT_AVAILABLE = '<span class="na">n/a</span>'


def sentence(s: Any) -> str:
    """``s`` as a sentence: ending in a full stop unless it already ends a sentence."""
    s = "" if s is None else str(s).strip()
    return s if not s or s[-1] in ".!?" else s + "."


def _site_names(report: Report) -> set[str]:
    names = {p.name for p in report.site_populations}
    if report.privacy is not None:
        names |= {str(s.name) for s in report.privacy.sites}
    return names


class Page:
    """One view of a report: the consortium's (``site`` None: pooled first, then every
    site) or one site's (its own figures, then the pooled ones; other sites' names in
    free text read "another site")."""

    def __init__(self, report: Report, site: str | None) -> None:
        self.report, self.site = report, site
        self.k, self.kind = report.k, report.kind
        self.pooled = report.pooled
        names = _site_names(report)
        if site is not None and site not in names:
            raise ConfigError(f"site {site!r} is not in report {report.run_name!r}; "
                              f"valid sites: {', '.join(sorted(names)) or 'none'}")
        every_site = report.site_populations
        self.sites = [p for p in every_site if site is None or p.name == site]
        self.site_names = [site] if site else [p.name for p in every_site]
        # Longest first, so that a name containing another is replaced whole.
        self.hidden = sorted(names - {site}, key=len, reverse=True) if site else []
        pooled = [self.pooled] if self.pooled is not None else []
        self.shown = [*self.sites, *pooled] if site else [*pooled, *self.sites]
        self.estimated = False

    @property
    def site_view(self) -> bool:
        """Whether this is one site's view."""
        return self.site is not None

    def own_populations(self) -> list[Population]:
        """The populations that get their own subgroup and fairness tables: all of them in
        the consortium's view; only the site's own in a site's view."""
        return [p for p in self.shown if not (self.site_view and p.pooled)]

    # -- formatting ---------------------------------------------------------------
    def text(self, s: Any) -> str:
        """Free text from the report, escaped; other sites' names hidden in a site view."""
        s = "" if s is None else str(s)
        for name in self.hidden:
            s = re.sub(rf"(?<![\w-]){re.escape(name)}(?![\w-])", "another site", s)
        return html.escape(s)

    def figure(self, m: Figure | None, name: str) -> str:
        """A figure or gap as an HTML fragment (see :func:`format_metric`)."""
        words = format_metric(m, k=self.k, digits=metric_digits(name), mark=False)
        if words == suppressed_text(self.k):
            return f'<span class="supp">{html.escape(words)}</span>'
        if words == "n/a":
            return NOT_AVAILABLE
        # Estimate and CI each unbreakable, so a narrow column wraps between them.
        value, _, ci = words.partition(" (")
        out = f'<span class="v">{html.escape(value)}</span>'
        if ci:
            out += f' <span class="v">({html.escape(ci)}</span>'
        if m is not None and m.estimated:
            self.estimated = True
            out += f'<sup class="est" title="estimated">{EST}</sup>'
        return out

    def count(self, n: Any, noise_sd: Any = None) -> str:
        """A count (``≈`` when noisy), or the suppression text when it was withheld (a
        report from before test-set DP)."""
        if n is None:
            return f'<span class="supp">{html.escape(suppressed_text(self.k))}</span>'
        if not isinstance(n, (int, float)) or isinstance(n, bool):
            return html.escape(str(n))
        return html.escape(format_count(n, noise_sd))

    def prevalence(self, p: Population) -> str:
        """A population's prevalence."""
        v = as_float(p.prevalence)
        if v is not None:
            return f"{v:.1%}"
        # Segmentation has no prevalence; for a classifier a null one was withheld.
        return NOT_AVAILABLE if self.kind == "segmentation" else self.count(None)

    def label(self, p: Population) -> str:
        """A population's column or row label."""
        return "pooled" if p.pooled else p.name

    # -- layout -------------------------------------------------------------------
    @staticmethod
    def table(head: Sequence[str], rows: Sequence[Sequence[str]], *,
              classes: Sequence[str] = (), num_from: int = 1) -> str:
        """Header cells are escaped here; body cells arrive as HTML. The first column
        holds row headers; columns from ``num_from`` on are right-aligned numbers;
        ``classes`` gives the first rows a CSS class each."""
        def cell_class(i: int) -> str:
            return ' class="n"' if i >= num_from else ""

        header = "".join(f'<th scope="col"{cell_class(i)}>{html.escape(h)}</th>'
                         for i, h in enumerate(head))
        body = []
        for i, row in enumerate(rows):
            row_class = classes[i] if i < len(classes) else ""
            body.append(f'<tr class="{row_class}">' if row_class else "<tr>")
            body.append(f'<th scope="row">{row[0]}</th>')
            body += [f"<td{cell_class(j)}>{v}</td>" for j, v in enumerate(row[1:], 1)]
            body.append("</tr>")
        return (f'<div class="wrap"><table><thead><tr>{header}</tr></thead><tbody>'
                f'{"".join(body)}</tbody></table></div>')

    def fig(self, svg: str, caption: str) -> str:
        """A figure with its caption, or a note that it is not available."""
        if not svg:
            return f'<p class="na">{self.text(caption)}: not available.</p>'
        return f"<figure>{svg}<figcaption>{self.text(caption)}</figcaption></figure>"

    def facts(self, pairs: Sequence[tuple[str, Any]]) -> str:
        """A row of label: value facts; empty values left out."""
        items = [f"<div><dt>{label}</dt><dd>{self.text(value)}</dd></div>"
                 for label, value in pairs if value is not None and value != ""]
        return '<dl class="facts">' + "".join(items) + "</dl>"
