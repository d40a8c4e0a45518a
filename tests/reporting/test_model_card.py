"""MODEL_CARD.md: the sections of a model card, each site's (ε, δ), suppression as such."""

from __future__ import annotations

import re

import pytest

from medfl.errors import DataError
from medfl.reporting.model_card import render_model_card

from .conftest import rename_site

HEADINGS = ["Model details", "Intended use", "Out-of-scope use", "Data", "Training set-up",
            "Evaluation", "Subgroups and fairness", "Explanations",
            "Limitations and known failure modes", "How to reproduce"]


def row(card: str, first_cell: str, nth: int = 0) -> list[str]:
    """The cells of the ``nth`` Markdown table row whose first cell is ``first_cell``."""
    rows = [line for line in card.splitlines() if line.startswith(f"| {first_cell} |")]
    return [c.strip() for c in re.split(r"(?<!\\)\|", rows[nth])[1:-1]]


def test_card_has_the_sections_in_order(any_report):
    card = render_model_card(any_report)
    found = re.findall(r"^## (.+)$", card, re.M)
    assert found == HEADINGS
    assert card.startswith(f"# Model card: {any_report['run_name']}\n")


def test_card_says_not_for_clinical_use_up_front(any_report):
    card = render_model_card(any_report)
    head, intended = card.split("## Model details")[0], card.split("## Intended use")[1]
    assert "not for clinical use" in head.lower()
    assert intended.lstrip().startswith("**Not for clinical use.**")
    assert any_report["disclaimer"] in intended


@pytest.mark.parametrize("kind, expected", [
    ("classification", {"cleveland": "(ε = 2.87, δ = 0.001)", "hungary": "(ε = 2.91, δ = 0.001)",
                        "switzerland": "(ε = 2.95, δ = 0.001)",
                        "longbeach": "(ε = 2.84, δ = 0.001)"}),
    ("segmentation", {s: "(ε = 1.90, δ = 1e-05)"
                      for s in ("northgate", "riverside", "lakeview", "hillcrest")}),
])
def test_card_gives_each_sites_epsilon_and_delta(kind, expected, class_report, seg_report):
    card = render_model_card(class_report if kind == "classification" else seg_report)
    privacy = card.split("### Privacy")[1].split("## Evaluation")[0]
    for site, eps_delta in expected.items():
        assert row(privacy, site)[:2] == [site, eps_delta]


def test_card_writes_suppressed_values_as_suppressed(class_report):
    card = render_model_card(class_report)
    head = row(card, "Metric")
    auroc = dict(zip(head, row(card, "AUROC"), strict=True))
    assert auroc["switzerland"] == "suppressed (noisy n < 10)"
    assert auroc["pooled"] == "0.853 (0.801–0.897)"
    assert auroc["hungary"] == "0.884 (0.817–0.936) †"
    assert "† Estimated" in card
    swiss = dict(zip(row(card, "Population"), row(card, "switzerland"), strict=True))
    assert swiss["Prevalence"] == "suppressed (noisy n < 10)"
    assert swiss["sex: female (test)"] == "≈3"
    assert "0.000" not in card


def test_card_names_each_pooled_rows_sites_and_noisy_n(class_report):
    card = render_model_card(class_report)
    head = row(card, "Metric")
    assert dict(zip(head, row(card, "Test cases"), strict=True))["pooled"] == "≈262"
    assert dict(zip(head, row(card, "Sites"), strict=True))["pooled"] == \
        "4 sites: cleveland, hungary, switzerland, longbeach"
    female = dict(zip(row(card, "Population", nth=1), row(card, "pooled", nth=1), strict=True))
    assert female["n"] == "≈61"
    assert female["Sites"] == "4 sites: cleveland, hungary, switzerland, longbeach"
    assert "differential-privacy noise" in card and "include that noise" in card


def test_card_lists_fairness_gaps_and_flags(class_report):
    card = render_model_card(class_report)
    flagged = [line for line in card.splitlines() if line.endswith("| **yes** |")]
    assert len(flagged) == 1 and "| TPR | −0.142 (−0.251 to −0.033) |" in flagged[0]


def test_card_names_what_was_suppressed_among_its_limitations(class_report):
    limits = render_model_card(class_report).split("## Limitations")[1].split("## How")[0]
    assert "switzerland (AUROC, Specificity, NPV" in limits
    assert "hungary (subgroup sex=female)" in limits
    assert "noisy count of a class is under k=10" in limits
    assert class_report["limitations"][0] in limits


def test_card_explains_with_top_features_or_saliency(class_report, seg_report):
    assert "cp (0.500), thal (0.250)" in render_model_card(class_report)
    assert "Pooled Grad-CAM saliency (8 × 8 grid)" in render_model_card(seg_report)


def test_card_reproduction_command(class_report):
    card = render_model_card(class_report)
    assert ("flwr run . --stream --run-config "
            "'seed=42 num-server-rounds=3 task=\"heart-disease\"'") in card


def assert_tables_are_rectangular(card: str) -> None:
    lines = card.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("| ") and not lines[i - 1].startswith("|"):
            width = len(re.findall(r"(?<!\\)\|", line))
            for other in lines[i + 1:]:
                if not other.startswith("|"):
                    break
                assert len(re.findall(r"(?<!\\)\|", other)) == width, other


def test_card_tables_are_rectangular(any_report):
    assert_tables_are_rectangular(render_model_card(any_report))


def test_names_cannot_inject_html_or_break_tables(class_report):
    report = rename_site(class_report, "hungary", "<script>x</script> a|b")
    report["limitations"].append("<img src=x onerror=alert(1)>")
    card = render_model_card(report)
    assert not re.search(r"<(script|img)\b", card, re.I)
    assert "| &lt;script>x&lt;/script> a\\|b | (ε = 2.91, δ = 0.001) |" in card
    assert_tables_are_rectangular(card)


def test_other_schemas_are_refused(class_report):
    with pytest.raises(DataError, match="schema_version None"):
        render_model_card({k: v for k, v in class_report.items() if k != "schema_version"})
