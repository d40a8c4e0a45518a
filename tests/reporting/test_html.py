"""The HTML report: well-formed, self-contained, escaped, and honest about suppression."""

from __future__ import annotations

import copy
import functools
import re
from html.parser import HTMLParser

import pytest

from medfl.errors import ConfigError, DataError
from medfl.reporting import plots
from medfl.reporting.html import render_report_html

from .conftest import (
    CLASS_SITES,
    SEG_SITES,
    classification_report,
    rename_site,
    segmentation_report,
)

VOID = {"meta", "br", "img", "input", "link", "hr", "col", "wbr", "source", "area", "base"}


class Page(HTMLParser):
    """Checks that tags nest, and collects ids, figures and tables (as cell texts)."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.ids: list[str] = []
        self.figures: list[list[str]] = []  # child tag names of each <figure>
        self.tables: dict[str, list[list[list[str]]]] = {}  # section id -> tables
        self.section = ""
        self.cell: list[str] | None = None
        self.text: list[str] = []
        self.feed(text)
        self.close()
        if self.stack:
            self.errors.append(f"unclosed: {self.stack}")

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"] or "")
        if tag == "section":
            self.section = a.get("id") or ""
        if self.stack and self.stack[-1] == "figure":
            self.figures[-1].append(tag)
        if tag == "figure":
            self.figures.append([])
        elif tag == "table":
            self.tables.setdefault(self.section, []).append([])
        elif tag == "tr":
            self.tables[self.section][-1].append([])
        elif tag in ("td", "th"):
            self.cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if "id" in dict(attrs):
            self.ids.append(dict(attrs)["id"] or "")

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()
        if tag in ("td", "th") and self.cell is not None:
            self.tables[self.section][-1][-1].append(" ".join("".join(self.cell).split()))
            self.cell = None

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self.cell is not None:
            self.cell.append(data)

    def rows(self, section: str, first_header: str, nth: int = 0) -> list[dict[str, str]]:
        """The rows, as {column header: cell text}, of the ``nth`` table in a section
        whose first header cell is ``first_header``."""
        found = [t for t in self.tables[section] if t and t[0][:1] == [first_header]][nth]
        return [dict(zip(found[0], row, strict=True)) for row in found[1:]]

    def table(self, section: str, first_header: str) -> dict[str, dict[str, str]]:
        """The first such table by its row headers (which must be unique)."""
        rows = self.rows(section, first_header)
        assert len({r[first_header] for r in rows}) == len(rows)
        return {r[first_header]: r for r in rows}


SITES = {"classification": CLASS_SITES, "segmentation": SEG_SITES}


def report_of(kind: str) -> dict:
    return classification_report() if kind == "classification" else segmentation_report()


@functools.cache
def rendered(kind: str, site: str | None = None) -> str:
    """A view of an unmodified fixture report, rendered once per test session."""
    return render_report_html(report_of(kind), site=site)


@pytest.fixture(params=["classification", "segmentation"])
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


def test_every_view_parses_with_tags_nested(kind):
    for site in (None, *SITES[kind]):
        page = Page(rendered(kind, site))
        assert page.errors == [], (site, page.errors[:3])
        assert len(page.ids) == len(set(page.ids)), "duplicate ids (several SVGs on a page)"


def test_page_loads_nothing_from_outside(kind):
    for site in (None, *SITES[kind]):
        text = rendered(kind, site)
        assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//)""", text, re.I)
        assert not re.search(r"<(script|link|iframe|object|embed|img)\b", text, re.I)
        assert not re.search(r"@import|url\(\s*['\"]?(https?:|//)", text, re.I)
        assert "Content-Security-Policy" in text and "default-src 'none'" in text


def test_disclaimer_is_in_a_banner_at_the_top(kind):
    text = rendered(kind)
    banner = re.search(r'<div class="banner"[^>]*>(.*?)</div>', text, re.S)
    assert banner is not None and text.index('class="banner"') < text.index("<h2")
    assert "not for clinical use" in banner[1]
    assert report_of(kind)["disclaimer"] in banner[1]


def test_figures_under_the_floor_read_suppressed_never_zero_or_blank():
    page = Page(rendered("classification"))
    summary = page.table("summary", "Metric")
    for metric in ("AUROC", "Specificity", "NPV"):
        assert summary[metric]["switzerland"] == "suppressed (noisy n < 10)"
    assert all(row["switzerland"] not in ("", "0.000", "n/a") for row in summary.values())
    data = page.table("data", "Population")
    assert data["switzerland"]["Prevalence"] == "suppressed (noisy n < 10)"
    female, male = page.rows("subgroups", "Attribute", nth=2)  # hungary
    assert female["Level"] == "female1"  # 1: the footnote giving the reason
    assert female["AUROC"] == "suppressed (noisy n < 10)"
    assert male["n"] == "≈63" and male["AUROC"] == "0.866 (0.790–0.921)"
    assert "k=10" in rendered("classification") and "not a privacy measure" in \
        rendered("classification")
    own = Page(rendered("classification", "switzerland")).table("summary", "Metric")
    assert own["AUROC"] == {"Metric": "AUROC", "switzerland": "suppressed (noisy n < 10)",
                            "pooled": "0.853 (0.801–0.897)"}


def test_noisy_counts_are_marked_and_each_pooled_row_names_its_sites_and_n():
    page = Page(rendered("classification"))
    summary = page.table("summary", "Metric")
    assert summary["Test cases"]["pooled"] == "≈262"
    assert summary["Sites"]["pooled"] == "4 sites: cleveland, hungary, switzerland, longbeach"
    assert summary["Sites"]["hungary"] == "1 site: hungary"
    assert page.table("data", "Group")["sex: female"]["switzerland"] == "≈3"
    pooled_rows = page.rows("subgroups", "Attribute", nth=0)
    assert [r["n"] for r in pooled_rows] == ["≈61", "≈201", "≈104", "≈158"]
    assert {r["Sites"] for r in pooled_rows} == {
        "4 sites: cleveland, hungary, switzerland, longbeach"}
    text = rendered("classification")
    assert "differential-privacy noise" in text and "include that noise" in text
    # a site's view counts the pooled sites without naming the others
    own = Page(rendered("classification", "hungary")).table("summary", "Metric")
    assert own["Sites"]["pooled"] == "4 sites"
    # an exact release (the segmentation fixture) has plain counts and says so
    seg = Page(rendered("segmentation")).table("summary", "Metric")
    assert seg["Test cases"]["pooled"] == "160"
    assert "differential-privacy noise" not in rendered("segmentation")


def test_estimates_and_cis_are_written_as_given():
    summary = Page(rendered("classification")).table("summary", "Metric")
    assert summary["AUROC"]["pooled"] == "0.853 (0.801–0.897)"
    assert summary["AUROC"]["longbeach"] == "0.712 (0.561–0.839)"
    assert summary["Brier score ↓"]["pooled"] == "0.152 (0.132–0.172)"
    gaps = {r["Gap"]: r for r in Page(rendered("classification")).rows("fairness", "Attribute")}
    # a negative bound is written with a minus sign and "to", not a dash
    assert gaps["Calibration"]["Value (95% CI)"] == "0.012 (−0.020 to 0.044)"
    assert gaps["FPR"]["Value (95% CI)"] == "0.021 (−0.060 to 0.102)"
    seg = Page(rendered("segmentation")).table("summary", "Metric")
    assert seg["HD95 (px) ↓"]["pooled"] == "6.4 (4.9–7.9)"
    assert seg["Dice"]["hillcrest"] == "0.779 (0.739–0.819)"


def test_estimated_values_are_marked_and_footnoted(class_report):
    text = render_report_html(class_report)
    summary = Page(text).table("summary", "Metric")
    assert summary["AUROC"]["hungary"] == "0.884 (0.817–0.936)†"
    assert "Estimated rather than computed exactly" in text
    class_report["populations"][2]["metrics"]["auroc"]["estimated"] = False
    assert "Estimated rather than computed exactly" not in render_report_html(class_report)


def test_flagged_gaps_are_marked():
    text = rendered("classification")
    pooled = Page(text).tables["fairness"][0]
    flagged = [row for row in pooled[1:] if "flagged" in row[-1]]
    assert [row[2:4] for row in flagged] == [["TPR", "−0.142 (−0.251 to −0.033)"]]
    assert text.count('<tr class="flag">') == 1


def test_site_view_names_no_other_site(kind):
    sites = SITES[kind]
    for site in sites:
        text = rendered(kind, site).lower()
        assert site in text and "pooled" in text
        assert [s for s in sites if s != site and s in text] == []
    # the consortium's own view names them all
    assert all(s in rendered(kind) for s in sites)


def test_site_view_keeps_its_own_problems_and_epsilon():
    page = Page(rendered("classification", "longbeach"))
    assert page.table("privacy", "Site") == {"longbeach": {
        "Site": "longbeach", "ε training rows": "2.84", "δ": "0.001", "ε test rows": "n/a",
        "ε per patient": "n/a", "Noise multiplier": "1.12", "Steps": "21"}}
    assert page.table("training", "Round")["2"]["Reason"] == "timeout"
    other = Page(rendered("classification", "cleveland"))
    assert "Round" not in {t[0][0] for t in other.tables.get("training", [])}


def test_strings_from_config_files_are_escaped(class_report):
    evil = "<script>alert(1)</script>"
    report = rename_site(class_report, "hungary", evil)
    report["run_name"] = "<img src=x onerror=alert(1)>"
    report["populations"][0]["subgroups"][0]["level"] = "<b>female</b>"
    report["explanations"]["features"][0]["name"] = "<svg onload=alert(1)>"
    report["limitations"].append('" onmouseover="alert(1)')
    for site in (None, evil):
        text = render_report_html(report, site=site)
        assert not re.search(r"<(script|img|b)\b", text, re.I)
        assert "<svg onload" not in text and 'mouseover="alert' not in text
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
        assert Page(text).errors == []


def test_every_figure_is_one_inline_svg():
    # ROC, reliability, 4 forest and 4 fairness plots (switzerland's are all suppressed),
    # 3 training panels, ε, SHAP; segmentation: 5 + 5, 3, ε, 4 saliency maps (one missing).
    for kind, expected in (("classification", 15), ("segmentation", 18)):
        page = Page(rendered(kind))
        assert len(page.figures) == expected
        assert all(children[0] == "svg" and "img" not in children for children in page.figures)


def test_unknown_site_and_other_schemas_are_refused(class_report):
    with pytest.raises(ConfigError, match="valid sites: cleveland, hungary, longbeach"):
        render_report_html(class_report, site="atlantis")
    with pytest.raises(DataError, match="schema_version 2"):
        render_report_html({**class_report, "schema_version": 2})


def test_a_report_with_nothing_in_it_still_renders():
    text = render_report_html({"schema_version": 1, "kind": "classification",
                               "populations": [], "explanations": None, "privacy": None})
    assert Page(text).errors == [] and "not for clinical use" in text
    assert "No explanations were computed" in text


def test_missing_pieces_are_tolerated(class_report):
    report = copy.deepcopy(class_report)
    pooled = report["populations"][0]
    pooled["roc"] = pooled["reliability"] = None
    report["populations"][1]["subgroups"] = None
    report["rounds"] = []
    report["privacy"]["sites"][0]["epsilon"] = None
    text = render_report_html(report)
    assert Page(text).errors == []
    assert Page(text).table("privacy", "Site")["cleveland"]["ε training rows"] == "n/a"


@pytest.mark.parametrize("draw", [
    lambda x: plots.roc_svg(x), lambda x: plots.reliability_svg(x),
    lambda x: plots.forest_svg(x, metric="auroc", k=10), lambda x: plots.fairness_svg(x),
    lambda x: plots.training_svg(x), lambda x: plots.epsilon_svg(x),
    lambda x: plots.feature_importance_svg(x), lambda x: plots.saliency_svg(x),
    lambda x: plots.grid_max(x) or ""])
@pytest.mark.parametrize("missing", [None, [], {}])
def test_plots_draw_nothing_from_nothing(draw, missing):
    assert draw(missing) == ""


def test_plots_skip_malformed_entries():
    assert plots.roc_svg({"a": {"fpr": [0, 1], "tpr": [0]}, "b": None}) == ""
    assert plots.saliency_svg([[0.5, 0.5], [0.1]]) == plots.saliency_svg([[None]]) == ""
    assert plots.grid_max({"a": [[0.5, 0.5], [0.1]], "b": [[0.1, 0.2]]}) == 0.2
    assert plots.saliency_svg([[0.25, 0.25], [0.25, 0.25]]).startswith("<svg")


def test_forest_plot_writes_suppressed_subgroups_as_text(class_report):
    subgroups = class_report["populations"][2]["subgroups"]  # hungary: female suppressed
    svg = plots.forest_svg(subgroups, metric="auroc", k=10)
    assert svg.startswith("<svg") and "suppressed (noisy n &lt; 10)" in svg
    assert "<?xml" not in svg and "DOCTYPE" not in svg
    all_suppressed = class_report["populations"][3]["subgroups"]  # switzerland
    assert plots.forest_svg(all_suppressed, metric="auroc", k=10) == ""


def test_a_dollar_sign_in_a_name_is_not_mathtext():
    svg = plots.epsilon_svg([{"name": "$a$ and $b$", "epsilon": 1.0}])
    assert "$a$ and $b$" in svg
