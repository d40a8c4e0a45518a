"""``MODEL_CARD.md``: the run's model card, after Mitchell et al. (2019), "Model Cards for
Model Reporting".

Built from ``report.json`` alone. The wording of values (``0.853 (0.801–0.897)``,
``suppressed (n < k)``) and the limitations that follow from the figures are defined here
and shared with the HTML report. Strings from the report are escaped for Markdown tables
and for HTML-rendering viewers, but otherwise left legible: the card is also served as
plain text.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import medfl
from medfl.errors import DataError

__all__ = ["METRICS", "as_float", "format_delta", "format_metric", "format_number",
           "is_pooled", "known_limitations", "metric_label", "render_model_card",
           "suppressed_text"]

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


def as_float(x: Any) -> float | None:
    """``x`` as a float (±inf kept), or None for null, NaN and non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x):
        return None
    return float(x)


def suppressed_text(k: int) -> str:
    """How a value withheld at the site (fewer than ``k`` patients) reads everywhere."""
    return f"suppressed (n < {k})"


def format_number(x: Any, digits: int = 3) -> str:
    """``x`` to ``digits`` decimals with a true minus sign; "n/a" for null, "∞" for
    infinity."""
    v = as_float(x)
    if v is None:
        return "n/a"
    return ("−" if v < 0 else "") + ("∞" if math.isinf(v) else f"{abs(v):.{digits}f}")


def format_delta(x: Any) -> str:
    """A δ (or any small positive number) to 3 significant digits: ``0.001``, ``1e-05``."""
    v = as_float(x)
    return "n/a" if v is None else f"{v:.3g}"


def format_metric(m: Mapping[str, Any] | None, *, k: int, digits: int = 3,
                  mark: bool = True) -> str:
    """A metric record as ``0.853 (0.801–0.897)``, ``suppressed (n < k)`` or ``n/a``.

    ``mark``: append " †" to estimated values (the caller then owes a footnote).
    """
    if not isinstance(m, Mapping):
        return "n/a"
    if m.get("suppressed"):
        return suppressed_text(k)
    if as_float(m.get("value")) is None:
        return "n/a"
    out = format_number(m["value"], digits)
    ci = m.get("ci")
    if isinstance(ci, Sequence) and len(ci) == 2 and None not in map(as_float, ci):
        # "−0.25–−0.03" misreads; a dash only between non-negative bounds.
        sep = " to " if min(ci) < 0 else "–"
        out += f" ({format_number(ci[0], digits)}{sep}{format_number(ci[1], digits)})"
    return out + (f" {EST}" if mark and m.get("estimated") else "")


def metric_label(name: str) -> str:
    """Display name of a metric key, with "↓" when lower is better."""
    label, _, lower = METRICS.get(name, (name, 3, False))
    return f"{label} ↓" if lower else label


def is_pooled(p: Mapping[str, Any]) -> bool:
    """Whether a population record is the pooled (consortium) one."""
    return p.get("scope") == "consortium"


def known_limitations(report: Mapping[str, Any]) -> list[str]:
    """Limitations that follow from the report's own figures (suppression, dropped
    sites, flagged gaps, estimates, DP off), to list beside ``report["limitations"]``."""
    k, out = report.get("k_threshold", "k"), []
    pops = [p for p in report.get("populations") or [] if isinstance(p, Mapping)]
    supp = []
    for p in pops:
        what = [METRICS.get(n, (n,))[0] for n, m in (p.get("metrics") or {}).items()
                if (m or {}).get("suppressed")]
        what += ["test-set size"] * (p.get("n_test") is None)
        what += ["demographic counts"] * any(d.get("n") is None
                                             for d in p.get("demographics") or [])
        what += [f"subgroup {s.get('attribute')}={s.get('level')}"
                 for s in p.get("subgroups") or [] if s.get("suppressed")]
        if what:
            supp.append(f"{p.get('name')} ({', '.join(what)})")
    if supp:
        out.append(f"Figures describing fewer than {k} patients were suppressed and are "
                   f"missing from these populations: {'; '.join(supp)}.")
    pooled = next((p for p in pops if is_pooled(p)), None)
    sites = [p.get("name") for p in pops if not is_pooled(p)]
    if pooled is not None and pooled.get("sites_included") is not None:
        left = [s for s in sites if s not in pooled["sites_included"]]
        if left:
            out.append(f"Pooled figures exclude: {', '.join(map(str, left))}.")
    t = report.get("training") or {}
    if isinstance(t.get("rounds"), int) and isinstance(t.get("rounds_planned"), int) \
            and t["rounds"] < t["rounds_planned"]:
        out.append(f"Training stopped after {t['rounds']} of {t['rounds_planned']} "
                   "planned rounds.")
    dropped = sorted({f"{p.get('site')} (round {r.get('round')}: {p.get('status')})"
                      for r in report.get("rounds") or [] for p in r.get("problems") or []})
    if dropped:
        out.append(f"Sites missing from some rounds: {', '.join(dropped)}.")
    flagged = [f"{p.get('name')}: {f.get('attribute')} {f.get('comparison')} vs "
               f"{f.get('reference')} ({GAPS.get(g, g)})"
               for p in pops for f in p.get("fairness") or []
               for g, v in (f.get("gaps") or {}).items() if (v or {}).get("flagged")]
    if flagged:
        out.append("Fairness gaps whose 95% CI excludes 0: " + "; ".join(flagged) + ".")
    records = [*pops, *(s for p in pops for s in p.get("subgroups") or [])]
    if any((m or {}).get("estimated") for p in records for m in (p.get("metrics") or {}).values()):
        out.append(f"Values marked {EST} are estimated, not computed exactly (see Methods).")
    if not (report.get("privacy") or {}).get("dp_sgd", True):
        out.append("DP-SGD was off: model updates left the sites without differential "
                   "privacy.")
    return out


TASKS = ("heart-disease", "tabular", "image-classification", "segmentation")
SECTIONS = ("Model details", "Intended use", "Out-of-scope use", "Data", "Training set-up",
            "Evaluation", "Subgroups and fairness", "Explanations",
            "Limitations and known failure modes", "How to reproduce")


def _md(x: Any) -> str:
    """Report text made safe inside Markdown tables and lists: one line, no cell breaks,
    no raw HTML tags or entities. Only a ``<`` that could open a tag and an ``&`` that
    could start an entity are escaped, so that "age < 55" stays legible as plain text."""
    s = " ".join(("" if x is None else str(x)).split())
    s = s.replace("\\", "\\\\").replace("|", "\\|").replace("`", "\\`")
    return re.sub(r"<(?=[A-Za-z/!?])", "&lt;", re.sub(r"&(?=#?\w+;)", "&amp;", s))


def _sentence(x: Any) -> str:
    """Report text for Markdown (see :func:`_md`), ending in a full stop."""
    s = _md(x)
    return s if not s or s[-1] in ".!?" else s + "."


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], *, text: int = 1) -> list[str]:
    """A Markdown table; cells arrive escaped; columns after the first ``text`` ones
    hold numbers and are right-aligned."""
    align = ["---"] * text + ["--:"] * (len(head) - text)
    return [f"| {' | '.join(head)} |", f"| {' | '.join(align)} |",
            *(f"| {' | '.join(r)} |" for r in rows), ""]


class _Card:
    def __init__(self, report: Mapping[str, Any]) -> None:
        self.r = report
        self.k = int(report.get("k_threshold") or (report.get("privacy") or {})
                     .get("k_threshold") or 0)
        self.kind = report.get("kind") or "classification"
        pops = [p for p in report.get("populations") or [] if isinstance(p, Mapping)]
        self.pops = sorted(pops, key=lambda p: p.get("scope") != "consortium")
        self.estimated = False

    def name(self, p: Mapping[str, Any]) -> str:
        return "pooled" if p.get("scope") == "consortium" else _md(p.get("name"))

    def m(self, m: Mapping[str, Any] | None, name: str) -> str:
        self.estimated |= bool((m or {}).get("estimated"))
        return format_metric(m, k=self.k, digits=METRICS.get(name, ("", 3))[1])

    def count(self, n: Any) -> str:
        return suppressed_text(self.k) if n is None else _md(n)

    def details(self) -> list[str]:
        r, t = self.r, self.r.get("training") or {}
        labels = " / ".join(_md(x) for x in r.get("label_names") or [])
        thr = r.get("operating_threshold") or {}
        return [
            "## Model details", "",
            f"- **Task:** {_md(r.get('task'))} ({_md(self.kind)}"
            + (f"; classes {labels}" if labels else "") + ")",
            f"- **Architecture:** {_md(t.get('model'))}",
            f"- **Run:** {_md(r.get('run_name'))}, created {_md(r.get('created_utc'))} (UTC)",
            f"- **Version:** report schema {_md(r.get('schema_version'))}, card rendered by "
            f"MedFL {medfl.__version__}",
            f"- **Training:** federated ({_md(t.get('strategy'))}) across "
            f"{len(self.pops) - 1} sites, "
            + ("with DP-SGD at each site" if (r.get("privacy") or {}).get("dp_sgd")
               else "without differential privacy"),
            f"- **Operating threshold:** {format_number(thr.get('value'))} "
            f"({_md(thr.get('rule'))})", ""]

    def intended_use(self) -> list[str]:
        disclaimer = _md(self.r.get("disclaimer") or medfl.DISCLAIMER)
        return [
            "## Intended use", "",
            f"**Not for clinical use.** {disclaimer}", "",
            "- Research and teaching on federated learning with differential privacy across "
            "hospitals: comparing strategies, privacy budgets and their effect on accuracy, "
            "calibration and subgroup performance.",
            "- Users: researchers and the consortium's data scientists, reading this card "
            "with the run's report.", "",
            "## Out-of-scope use", "",
            "- Diagnosis, triage, screening or any other decision about a patient.",
            "- Populations, sites, devices or time periods unlike the training sites'.",
            "- Subgroups whose results are suppressed here, or whose fairness gaps are "
            "flagged, without a separate validation.",
            "- Treating ε as protection for anything listed under \"released outside DP\".", ""]

    def data(self) -> list[str]:
        ds = self.r.get("dataset") or {}
        out = ["## Data", "", f"**{_sentence(ds.get('name'))}** {_sentence(ds.get('provenance'))}"
               + (f" Licence: {_md(ds['licence'])}." if ds.get("licence") else ""), ""]
        groups = list(dict.fromkeys((d.get("attribute"), d.get("level"))
                                    for p in self.pops for d in p.get("demographics") or []))
        rows = []
        for p in self.pops:
            n = {(d.get("attribute"), d.get("level")): d.get("n")
                 for d in p.get("demographics") or []}
            prev = p.get("prevalence")
            prev = f"{prev:.1%}" if isinstance(prev, (int, float)) else (
                "n/a" if self.kind == "segmentation" else suppressed_text(self.k))
            rows.append([self.name(p), self.count(p.get("n_train")), self.count(p.get("n_test")),
                         prev, *(self.count(n[g]) if g in n else "—" for g in groups)])
        head = ["Population", "Training cases", "Test cases", "Prevalence",
                *(f"{_md(a)}: {_md(lv)} (test)" for a, lv in groups)]
        return out + _table(head, rows)

    def training(self) -> list[str]:
        t, pv = self.r.get("training") or {}, self.r.get("privacy") or {}
        keys = [("Strategy", "strategy"), ("Model", "model"), ("Rounds", "rounds"),
                ("Planned rounds", "rounds_planned"), ("Local epochs", "local_epochs"),
                ("Batch size", "batch_size"), ("Optimizer", "optimizer"),
                ("Learning rate", "lr"), ("Seed", "seed")]
        out = ["## Training set-up", "",
               *_table(["Setting", "Value"], [[a, _md(t.get(b))] for a, b in keys
                                              if t.get(b) is not None], text=2),
               "### Privacy", "",
               *(f"- {_md(m)}" for m in pv.get("mechanisms") or []),
               f"- Target ε per site: {format_number(pv.get('target_epsilon'), 2)}; "
               f"δ: {format_delta(pv.get('delta'))}; "
               f"accountant: {_md(pv.get('accountant') or 'n/a')}; "
               f"suppression threshold k = {self.k}", ""]
        if not pv.get("dp_sgd"):
            out += ["**DP-SGD was off:** model updates left the sites without differential "
                    "privacy.", ""]
        rows = [[_md(s.get("name")),
                 f"(ε = {format_number(s.get('epsilon'), 2)}, δ = {format_delta(s.get('delta'))})",
                 format_number(s.get("noise_multiplier"), 2),
                 _md(s.get("steps") if s.get("steps") is not None else "n/a")]
                for s in pv.get("sites") or []]
        out += _table(["Site", "(ε, δ) this run", "Noise multiplier", "Steps"], rows)
        released = pv.get("non_dp_releases") or []
        return out + (["Released outside any DP mechanism:", "",
                       *(f"- {_md(x)}" for x in released), ""] if released else [])

    def evaluation(self) -> list[str]:
        order = list(METRICS)
        names = sorted({n for p in self.pops for n in p.get("metrics") or {}},
                       key=lambda n: order.index(n) if n in order else len(order))
        rows = [[metric_label(n), *(self.m((p.get("metrics") or {}).get(n), n)
                                    for p in self.pops)] for n in names]
        return ["## Evaluation", "",
                "Final global model on each site's held-out test set; estimate (95% CI). "
                "↓: lower is better.", "", *_table(["Metric", *map(self.name, self.pops)], rows),
                *self.personalised()]

    def personalised(self) -> list[str]:
        p = self.r.get("personalised")
        if not p:
            return []
        key = "dice" if p.get("mean_site_dice") is not None else "accuracy"
        mean = p.get(f"mean_site_{key}")
        per_site = "; ".join(f"{_md(name)} {format_number((m or {}).get(key))}"
                             for name, m in p["sites"].items())
        return ["", f"Personalised evaluation: {_sentence(p['method'])} Mean per-site "
                f"{key}: {format_number(mean)} ({per_site}). The fine-tuned copies stay at "
                "the sites; this model card describes the global model."]

    def fairness(self) -> list[str]:
        prim = PRIMARY.get(self.kind, "auroc")
        names = [n for n in HEADLINE.get(self.kind, ()) if any(
            n in (s.get("metrics") or {}) for p in self.pops for s in p.get("subgroups") or [])]
        rows = [[self.name(p), _md(s.get("attribute")), _md(s.get("level")),
                 self.count(s.get("n")),
                 *(suppressed_text(self.k) if s.get("suppressed") else
                   self.m((s.get("metrics") or {}).get(n), n) for n in names)]
                for p in self.pops for s in p.get("subgroups") or []]
        gaps = [[self.name(p), _md(f.get("attribute")),
                 f"{_md(f.get('comparison'))} vs {_md(f.get('reference'))}",
                 GAPS.get(g, _md(g)), self.m(v, g), "**yes**" if (v or {}).get("flagged") else "no"]
                for p in self.pops for f in p.get("fairness") or []
                for g, v in (f.get("gaps") or {}).items()]
        out = ["## Subgroups and fairness", "",
               f"Subgroups per population (primary metric: {METRICS[prim][0]}):", ""]
        out += _table(["Population", "Attribute", "Level", "n", *map(metric_label, names)],
                      rows, text=3) if rows else ["No subgroup results.", ""]
        out += ["Fairness gaps (flagged: the 95% CI excludes 0):", ""]
        return out + (_table(["Population", "Attribute", "Comparison", "Gap",
                              "Value (95% CI)", "Flagged"], gaps, text=4) if gaps
                      else ["No fairness comparisons.", ""])

    def explanations(self) -> list[str]:
        ex = self.r.get("explanations") or {}
        out = ["## Explanations", ""]
        if ex.get("kind") == "shap":
            top = [f for f in ex.get("features") or []
                   if isinstance(f, Mapping) and f.get("mean_abs_shap") is not None][:5]
            out.append("Most influential features (mean |SHAP|, pooled): " + (", ".join(
                f"{_md(f.get('name'))} ({format_number(f['mean_abs_shap'])})" for f in top)
                or "none reported") + ".")
        elif ex.get("kind") == "grad-cam":
            out.append(_saliency_note(ex.get("saliency_grid")))
        else:
            out.append("No explanations were computed for this run.")
        out += [_sentence(ex[k]) for k in ("method", "site_local_note") if ex.get(k)]
        return [*out[:2], " ".join(out[2:]), ""]

    def limitations(self) -> list[str]:
        items = [*(self.r.get("limitations") or []), *known_limitations(self.r),
                 "Differential privacy bounds what the model updates reveal about any one "
                 "patient; it does not make the model fair, calibrated or valid elsewhere.",
                 f"Confidence intervals are wide at small sites; values over fewer than "
                 f"{self.k} patients are not reported at all, so small subgroups are unseen."]
        return ["## Limitations and known failure modes", "",
                *(f"- {_md(x)}" for x in items), ""]

    def reproduce(self) -> list[str]:
        r, t = self.r, self.r.get("training") or {}
        conf = [f"{k}={v}" for k, v in (("seed", t.get("seed")),
                                        ("num-server-rounds", t.get("rounds_planned")))
                if isinstance(v, int) and not isinstance(v, bool)]
        if r.get("task") in TASKS:
            conf.append(f'task="{r["task"]}"')
        return ["## How to reproduce", "",
                f"The run directory `outputs/{_md(r.get('run_name'))}/` holds `config.json` "
                "(the resolved configuration, seed and library versions) and `report.json`, "
                "from which this card was rendered. To train again with the same settings, "
                "pass the remaining keys of `config.json` as well:", "", "```bash",
                f"flwr run . --stream --run-config {shlex.quote(' '.join(conf))}", "```", "",
                "DP noise is drawn from each site's OS entropy (`privacy.secure-noise = true`), "
                "so a rerun gives a different model and figures within sampling and DP noise; "
                "`privacy.secure-noise = false` makes it repeatable but not private.", ""]

    def render(self) -> str:
        body = [f"# Model card: {_md(self.r.get('run_name'))}", "",
                f"> **Research software — not for clinical use.** "
                f"{_md(self.r.get('disclaimer') or medfl.DISCLAIMER)}", "",
                *self.details(), *self.intended_use(), *self.data(), *self.training(),
                *self.evaluation(), *self.fairness(), *self.explanations(),
                *self.limitations(), *self.reproduce()]
        if self.estimated:
            body += [f"{EST} Estimated rather than computed exactly from the sites' "
                     "statistics (see the report's Methods).", ""]
        return "\n".join(body)


def _saliency_note(grid: Any) -> str:
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


def render_model_card(report: Mapping[str, Any]) -> str:
    """The run's model card as Markdown.

    Parameters
    ----------
    report : the parsed ``report.json`` (schema version 1)

    Raises
    ------
    DataError
        ``report`` is not a schema-1 report.
    """
    if not isinstance(report, Mapping) or report.get("schema_version") != 1:
        got = report.get("schema_version") if isinstance(report, Mapping) else type(report)
        raise DataError(f"report.json: schema_version {got!r} is not supported; expected 1")
    return _Card(report).render()
