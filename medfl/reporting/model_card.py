"""``MODEL_CARD.md``: the run's model card, after Mitchell et al. (2019), "Model Cards for
Model Reporting".

Built from ``report.json`` alone (a :class:`~medfl.reporting.report_schema.Report`).
Values are worded as in :mod:`medfl.reporting.wording`, shared with the HTML report.
Strings from the report are escaped for Markdown tables and for HTML-rendering viewers,
but otherwise left legible: the card is also served as plain text.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping, Sequence
from typing import Any

import medfl
from medfl.config import TaskName
from medfl.reporting.population_schema import Figure, Population
from medfl.reporting.report_schema import Report, ReportPrivacy
from medfl.reporting.wording import (
    EST,
    GAPS,
    HEADLINE,
    METRICS,
    PRIMARY,
    format_count,
    format_delta,
    format_metric,
    format_number,
    known_limitations,
    metric_digits,
    metric_label,
    metric_order,
    noise_note,
    operating_lines,
    saliency_note,
    sites_text,
    suppressed_text,
)

__all__ = ["render_model_card"]

SECTIONS = ("Model details", "Intended use", "Out-of-scope use", "Data", "Training set-up",
            "Evaluation", "Subgroups and fairness", "Explanations",
            "Limitations and known failure modes", "How to reproduce")
TRAINING_ROWS = (("Strategy", "strategy"), ("Model", "model"), ("Rounds", "rounds"),
                 ("Planned rounds", "rounds_planned"), ("Local epochs", "local_epochs"),
                 ("Batch size", "batch_size"), ("Optimizer", "optimizer"),
                 ("Learning rate", "lr"), ("Seed", "seed"))
INTENDED_USE = [
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


def _is_task_name(name: str | None) -> bool:
    """Whether ``name`` is a task this MedFL knows (so it can go into a run config)."""
    try:
        TaskName(name)
    except ValueError:
        return False
    return True


class _Card:
    """The model card of one report; each section method returns Markdown lines."""

    def __init__(self, report: Report) -> None:
        self.report, self.k, self.kind = report, report.k, report.kind
        # the pooled population first
        self.pops = sorted(report.populations, key=lambda p: not p.pooled)
        self.estimated = False

    def name(self, p: Population) -> str:
        """A population's column or row label."""
        return "pooled" if p.pooled else _md(p.name)

    def figure(self, m: Figure | None, name: str) -> str:
        """A figure in words, noting whether the card owes the "estimated" footnote."""
        if m is not None and m.estimated:
            self.estimated = True
        return format_metric(m, k=self.k, digits=metric_digits(name))

    def count(self, n: Any, noise_sd: Any = None) -> str:
        """A count (``≈`` when noisy), or the suppression text when it was withheld (a
        report from before test-set DP)."""
        if n is None:
            return suppressed_text(self.k)
        if isinstance(n, bool) or not isinstance(n, (int, float)):
            return _md(n)
        return format_count(n, noise_sd)

    def prevalence(self, p: Population) -> str:
        """A population's prevalence; n/a for segmentation, else withheld when null."""
        if isinstance(p.prevalence, (int, float)):
            return f"{p.prevalence:.1%}"
        return "n/a" if self.kind == "segmentation" else suppressed_text(self.k)

    def details(self) -> list[str]:
        """Model details."""
        r, t = self.report, self.report.training
        labels = " / ".join(_md(x) for x in r.label_names)
        classes = f"; classes {labels}" if labels else ""
        dp = r.privacy is not None and bool(r.privacy.dp_sgd)
        threshold = r.operating_threshold
        return [
            "## Model details", "",
            f"- **Task:** {_md(r.task)} ({_md(self.kind)}{classes})",
            f"- **Architecture:** {_md(t.model if t else None)}",
            f"- **Run:** {_md(r.run_name)}, created {_md(r.created_utc)} (UTC)",
            f"- **Version:** report schema {_md(r.schema_version)}, card rendered by "
            f"MedFL {medfl.__version__}",
            f"- **Training:** federated ({_md(t.strategy if t else None)}) across "
            f"{len(self.pops) - 1} sites, "
            + ("with DP-SGD at each site" if dp else "without differential privacy"),
            f"- **Operating threshold:** {format_number(threshold.value if threshold else None)}"
            f" ({_md(threshold.rule if threshold else None)})",
            *(f"- {_md(line)}" for line in (operating_lines(threshold) if threshold else [])),
            ""]

    def intended_use(self) -> list[str]:
        """Intended and out-of-scope use."""
        disclaimer = _md(self.report.disclaimer or medfl.DISCLAIMER)
        return ["## Intended use", "", f"**Not for clinical use.** {disclaimer}", "",
                *INTENDED_USE]

    def data(self) -> list[str]:
        """Data provenance, sizes, prevalence and demographics per population."""
        ds = self.report.dataset
        name, provenance = (ds.name, ds.provenance) if ds else (None, None)
        intro = f"**{_sentence(name)}** {_sentence(provenance)}"
        if ds is not None and ds.licence:
            intro += f" Licence: {_md(ds.licence)}."
        groups = list(dict.fromkeys((d.attribute, d.level)
                                    for p in self.pops for d in p.demographics))
        rows = []
        for p in self.pops:
            n = {(d.attribute, d.level): d for d in p.demographics}
            rows.append([self.name(p), self.count(p.n_train),
                         self.count(p.n_test, p.n_test_noise_sd), self.prevalence(p),
                         *(self.count(n[g].n, n[g].n_noise_sd) if g in n else "—"
                           for g in groups)])
        head = ["Population", "Training cases", "Test cases", "Prevalence",
                *(f"{_md(a)}: {_md(lv)} (test)" for a, lv in groups)]
        return ["## Data", "", intro, "", *_table(head, rows)]

    def training(self) -> list[str]:
        """Training settings and the privacy spent per site."""
        t = self.report.training
        settings = [[label, _md(getattr(t, key))] for label, key in TRAINING_ROWS
                    if t is not None and getattr(t, key) is not None]
        return ["## Training set-up", "", *_table(["Setting", "Value"], settings, text=2),
                *self.privacy()]

    def privacy(self) -> list[str]:
        """Mechanisms, targets, each site's (ε, δ) on its training and its test rows and
        per patient, and what left the sites outside DP."""
        pv = self.report.privacy or ReportPrivacy(None, [], None, None, None, None, [], [])
        out = ["### Privacy", "", *(f"- {_md(m)}" for m in pv.mechanisms),
               f"- Target ε per site: {format_number(pv.target_epsilon, 2)} on its training "
               f"rows, {pv.test_target()} on its test rows; "
               f"δ: {format_delta(pv.delta)}; accountant: {_md(pv.accountant or 'n/a')}; "
               f"suppression threshold k = {self.k}",
               *([f"- Per patient: {_md(pv.composition)}."] if pv.composition else []), ""]
        if not pv.dp_sgd:
            out += ["**DP-SGD was off:** model updates left the sites without differential "
                    "privacy.", ""]
        rows = [[_md(s.name), f"(ε = {format_number(s.epsilon, 2)}, δ = {format_delta(s.delta)})",
                 format_number(s.test_epsilon, 2), format_number(s.per_patient_epsilon, 2),
                 format_number(s.noise_multiplier, 2), _md("n/a" if s.steps is None else s.steps)]
                for s in pv.sites]
        out += _table(["Site", "(ε, δ) training rows", "ε test rows", "ε per patient",
                       "Noise multiplier", "Steps"], rows)
        if pv.non_dp_releases:
            out += ["Released outside any DP mechanism:", "",
                    *(f"- {_md(x)}" for x in pv.non_dp_releases), ""]
        return out

    def evaluation(self) -> list[str]:
        """The headline figures of every population, with its test cases and sites."""
        rows = [["Test cases", *(self.count(p.n_test, p.n_test_noise_sd) for p in self.pops)],
                ["Sites", *(_md(sites_text(p.sites_included, named=p.pooled))
                            for p in self.pops)]]
        rows += [[metric_label(n), *(self.figure(p.metrics.get(n), n) for p in self.pops)]
                 for n in metric_order(self.pops)]
        return ["## Evaluation", "",
                "Final global model on each site's held-out test set; estimate (95% CI). "
                f"↓: lower is better. {_md(noise_note(self.report))}", "",
                *_table(["Metric", *map(self.name, self.pops)], rows), *self.personalised()]

    def personalised(self) -> list[str]:
        """The personalised evaluation, in one paragraph (none when not run)."""
        p = self.report.personalised
        if p is None:
            return []
        key = "dice" if p.mean_site_dice is not None else "accuracy"
        mean = p.mean_site_dice if key == "dice" else p.mean_site_accuracy
        per_site = "; ".join(f"{_md(name)} {format_number(m.value(key) if m else None)}"
                             for name, m in p.sites.items())
        return ["", f"Personalised evaluation: {_sentence(p.method)} Mean per-site "
                f"{key}: {format_number(mean)} ({per_site}). The fine-tuned copies stay at "
                "the sites; this model card describes the global model."]

    def fairness(self) -> list[str]:
        """Subgroup figures and fairness gaps of every population."""
        names = [n for n in HEADLINE.get(self.kind, ()) if any(
            n in s.metrics for p in self.pops for s in p.subgroups)]
        rows = []
        for p in self.pops:
            for s in p.subgroups:
                cells = [suppressed_text(self.k) if s.suppressed
                         else self.figure(s.metrics.get(n), n) for n in names]
                sites = _md(sites_text(s.sites_included, named=p.pooled))
                rows.append([self.name(p), _md(s.attribute), _md(s.level),
                             self.count(s.n, s.n_noise_sd), sites, *cells])
        gaps = [[self.name(p), _md(f.attribute), f"{_md(f.comparison)} vs {_md(f.reference)}",
                 GAPS.get(g, _md(g)), self.figure(v, g), "**yes**" if v.flagged else "no"]
                for p in self.pops for f in p.fairness for g, v in f.gaps.items()]
        primary = METRICS[PRIMARY.get(self.kind, "auroc")][0]
        out = ["## Subgroups and fairness", "",
               f"Subgroups per population (primary metric: {primary}):", ""]
        if rows:
            out += _table(["Population", "Attribute", "Level", "n", "Sites",
                           *map(metric_label, names)], rows, text=3)
        else:
            out += ["No subgroup results.", ""]
        out += ["Fairness gaps (flagged: the 95% CI excludes 0):", ""]
        if gaps:
            return out + _table(["Population", "Attribute", "Comparison", "Gap",
                                 "Value (95% CI)", "Flagged"], gaps, text=4)
        return out + ["No fairness comparisons.", ""]

    def explanations(self) -> list[str]:
        """The explanations in one paragraph."""
        ex = self.report.explanations
        if ex is not None and ex.kind == "shap":
            top = [f for f in ex.features if f.mean_abs_shap is not None][:5]
            named = ", ".join(f"{_md(f.name)} ({format_number(f.mean_abs_shap)})" for f in top)
            text = f"Most influential features (mean |SHAP|, pooled): {named or 'none reported'}."
        elif ex is not None and ex.kind == "grad-cam":
            text = saliency_note(ex.saliency_grid)
        else:
            text = "No explanations were computed for this run."
        notes = [ex.method, ex.site_local_note] if ex is not None else []
        words = [text, *(_sentence(n) for n in notes if n)]
        return ["## Explanations", "", " ".join(words), ""]

    def limitations(self) -> list[str]:
        """Limitations stated by the run, read off the figures, and always true."""
        items = [*self.report.limitations, *known_limitations(self.report),
                 "Differential privacy bounds what the model updates reveal about any one "
                 "patient; it does not make the model fair, calibrated or valid elsewhere.",
                 "Confidence intervals are wide at small sites and subgroups, wider still "
                 "with the DP noise on the test-set statistics; figures of a cell whose "
                 f"noisy count of a class is under {self.k} are not shown, so small "
                 "subgroups go unseen."]
        return ["## Limitations and known failure modes", "",
                *(f"- {_md(x)}" for x in items), ""]

    def reproduce(self) -> list[str]:
        """The command that trains again with the same settings."""
        r, t = self.report, self.report.training
        pairs = (("seed", t.seed if t else None),
                 ("num-server-rounds", t.rounds_planned if t else None))
        conf = [f"{k}={v}" for k, v in pairs if isinstance(v, int) and not isinstance(v, bool)]
        if _is_task_name(r.task):
            conf.append(f'task="{r.task}"')
        return ["## How to reproduce", "",
                f"The run directory `outputs/{_md(r.run_name)}/` holds `config.json` "
                "(the resolved configuration, seed and library versions) and `report.json`, "
                "from which this card was rendered. To train again with the same settings, "
                "pass the remaining keys of `config.json` as well:", "", "```bash",
                f"flwr run . --stream --run-config {shlex.quote(' '.join(conf))}", "```", "",
                "DP noise is drawn from each site's OS entropy (`privacy.secure-noise = true`), "
                "so a rerun gives a different model and figures within sampling and DP noise; "
                "`privacy.secure-noise = false` makes it repeatable but not private.", ""]

    def render(self) -> str:
        """The whole card."""
        r = self.report
        body = [f"# Model card: {_md(r.run_name)}", "",
                f"> **Research software — not for clinical use.** "
                f"{_md(r.disclaimer or medfl.DISCLAIMER)}", "",
                *self.details(), *self.intended_use(), *self.data(), *self.training(),
                *self.evaluation(), *self.fairness(), *self.explanations(),
                *self.limitations(), *self.reproduce()]
        if self.estimated:
            body += [f"{EST} Estimated rather than computed exactly from the sites' "
                     "statistics (see the report's Methods).", ""]
        return "\n".join(body)


def render_model_card(report: Report | Mapping[str, Any]) -> str:
    """The run's model card as Markdown.

    Parameters
    ----------
    report : a :class:`Report`, or ``report.json``'s parsed content (schema version 1)

    Raises
    ------
    DataError
        ``report`` is not a schema-1 report.
    """
    if not isinstance(report, Report):
        report = Report.from_dict(report)
    return _Card(report).render()
