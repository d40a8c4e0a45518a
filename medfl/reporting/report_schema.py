"""``report.json`` as dataclasses: :class:`Report` and its sections.

:func:`medfl.reporting.report.build_report` builds a :class:`Report`; ``to_dict()`` is the
file's content. :meth:`Report.from_dict` reads a report back for the renderers and
tolerates missing pieces (an older run's report, a hand-written one): a missing list reads
as empty, a missing section or figure as None, and the renderers then say "n/a".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from medfl.reporting.population_schema import Population, plain
from medfl.reporting.schema import check_version, records, section, strings
from medfl.reporting.summary_schema import Metrics

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

SCHEMA_VERSION = 1
REPORT_VERSIONS = (1,)


def _fields(cls: type[DataclassInstance], data: Mapping[str, Any] | None) -> Any:
    """An instance of the flat dataclass ``cls`` from ``data`` (missing keys read None)."""
    if data is None:
        return None
    return cls(**{name: data.get(name) for name in cls.__dataclass_fields__})


def _as_dict(obj: Any) -> dict[str, Any]:
    return {name: plain(getattr(obj, name)) for name in obj.__dataclass_fields__}


@dataclass
class DatasetCard:
    """Name, provenance and licence of the run's data."""

    name: str | None
    provenance: str | None
    licence: str | None

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class Threshold:
    """The operating threshold and how it was chosen; ``class_weight`` how the positive
    class was weighted in training; ``second`` the second, declared operating point
    (``evaluation.operating-sensitivity``: its ``target`` sensitivity, the ``threshold``
    where the pooled sensitivity reaches it, and the pooled ``sensitivity``,
    ``specificity``, ``ppv``, ``npv`` there; None for segmentation or without positives)."""

    value: float | None
    rule: str | None
    class_weight: str | None = None
    second: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class Training:
    """How the model was trained."""

    strategy: str | None
    model: str | None
    rounds: int | None
    rounds_planned: int | None
    local_epochs: int | None
    batch_size: int | None
    optimizer: str | None
    lr: float | None
    seed: int | None

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class SitePrivacy:
    """The (ε, δ) one site spent in this run on its training rows, its DP-SGD noise and
    steps; the ε it spent on its test rows, and the larger of the two (per patient)."""

    name: str | None
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    steps: int | None
    test_epsilon: float | None = None
    per_patient_epsilon: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class ReportPrivacy:
    """The privacy section; ``dp_sgd`` None when the report does not say.
    ``test_epsilon_target``: the run's ``privacy.test-epsilon``; ``composition``: how a
    site's training and test ε combine per patient (None in older reports)."""

    dp_sgd: bool | None
    mechanisms: list[str]
    target_epsilon: float | None
    delta: float | None
    accountant: str | None
    k_threshold: int | None
    non_dp_releases: list[str]
    sites: list[SitePrivacy]
    test_epsilon_target: float | None = None
    composition: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)

    def test_target(self) -> str:
        """The run's test-set ε target in words: a number, "exact (no DP)" for 0, or
        "n/a" in a report written before the test budget."""
        if self.test_epsilon_target is None:
            return "n/a"
        if self.test_epsilon_target == 0:
            return "exact figures (no DP)"
        return f"{float(self.test_epsilon_target):.2f}"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReportPrivacy:
        """Read a section written by :meth:`to_dict`."""
        return cls(dp_sgd=data.get("dp_sgd"), mechanisms=strings(data, "mechanisms"),
                   target_epsilon=data.get("target_epsilon"), delta=data.get("delta"),
                   accountant=data.get("accountant"), k_threshold=data.get("k_threshold"),
                   non_dp_releases=strings(data, "non_dp_releases"),
                   sites=[_fields(SitePrivacy, s) for s in records(data, "sites")],
                   test_epsilon_target=data.get("test_epsilon_target"),
                   composition=data.get("composition"))


@dataclass
class Problem:
    """A site that failed or dropped out of a round."""

    site: str | None
    status: str | None
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class RoundRecord:
    """One round: the global model's pooled figures, each site's cumulative ε, problems."""

    round: int | None
    metrics: dict[str, float | None]
    epsilon: dict[str, float | None]
    problems: list[Problem]

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundRecord:
        """Read a record written by :meth:`to_dict`."""
        return cls(round=data.get("round"), metrics=dict(section(data, "metrics") or {}),
                   epsilon=dict(section(data, "epsilon") or {}),
                   problems=[_fields(Problem, p) for p in records(data, "problems")])


@dataclass
class Feature:
    """A feature's pooled mean |SHAP| and each site's."""

    name: str | None
    mean_abs_shap: float | None
    per_site: dict[str, float | None]

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _as_dict(self)


@dataclass
class Explanations:
    """SHAP (``kind`` "shap": ``features``) or Grad-CAM (``kind`` "grad-cam": a pooled
    ``saliency_grid`` and each site's in ``per_site``); ``kind`` None: none computed."""

    kind: str | None = None
    method: str = ""
    features: list[Feature] = field(default_factory=list)
    saliency_grid: list[list[float]] | None = None
    per_site: dict[str, list[list[float]] | None] = field(default_factory=dict)
    site_local_note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Explanations:
        """Read a section written by :meth:`to_dict`."""
        features = [Feature(f.get("name"), f.get("mean_abs_shap"),
                            dict(section(f, "per_site") or {}))
                    for f in records(data, "features")]
        return cls(kind=data.get("kind"), method=str(data.get("method") or ""),
                   features=features, saliency_grid=data.get("saliency_grid"),
                   per_site=dict(section(data, "per_site") or {}),
                   site_local_note=str(data.get("site_local_note") or ""))


@dataclass
class Personalised:
    """The personalised evaluation: pooled and per-site figures of the fine-tuned copies."""

    method: str
    mean_site_accuracy: float | None
    mean_site_dice: float | None
    pooled: Metrics
    sites: dict[str, Metrics | None]

    def to_dict(self) -> dict[str, Any]:
        """The section as written in ``report.json``."""
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Personalised:
        """Read a section written by :meth:`to_dict`."""
        sites = {str(k): Metrics.from_dict(v) if isinstance(v, Mapping) else None
                 for k, v in (section(data, "sites") or {}).items()}
        return cls(method=str(data.get("method") or ""),
                   mean_site_accuracy=data.get("mean_site_accuracy"),
                   mean_site_dice=data.get("mean_site_dice"),
                   pooled=Metrics.from_dict(section(data, "pooled") or {}), sites=sites)


@dataclass
class Report:
    """``report.json``: what a consortium reads to judge the model per site and subgroup.

    ``populations`` holds the pooled population first, then each site's.
    """

    run_name: str | None
    created_utc: str | None
    task: str | None
    kind: str
    dataset: DatasetCard | None
    disclaimer: str | None
    label_names: list[str]
    k_threshold: int | None
    operating_threshold: Threshold | None
    methods: dict[str, str]
    training: Training | None
    privacy: ReportPrivacy | None
    rounds: list[RoundRecord]
    populations: list[Population]
    explanations: Explanations | None
    personalised: Personalised | None
    limitations: list[str] = field(default_factory=list)
    cross_site: Any = None
    schema_version: int = SCHEMA_VERSION

    @property
    def k(self) -> int:
        """The suppression threshold k (0 when the report does not say)."""
        if self.k_threshold:
            return int(self.k_threshold)
        return int(self.privacy.k_threshold or 0) if self.privacy is not None else 0

    @property
    def pooled(self) -> Population | None:
        """The pooled population, if the report has one."""
        return next((p for p in self.populations if p.pooled), None)

    @property
    def site_populations(self) -> list[Population]:
        """Every site's population, in the report's order."""
        return [p for p in self.populations if not p.pooled]

    def to_dict(self) -> dict[str, Any]:
        """The content of ``report.json``."""
        return _as_dict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """Read ``report.json``'s content; ``DataError`` unless its schema is understood."""
        version = check_version(data, file="report.json", understood=REPORT_VERSIONS)
        privacy, explanations = section(data, "privacy"), section(data, "explanations")
        personalised = section(data, "personalised")
        return cls(
            run_name=data.get("run_name"), created_utc=data.get("created_utc"),
            task=data.get("task"), kind=str(data.get("kind") or "classification"),
            dataset=_fields(DatasetCard, section(data, "dataset")),
            disclaimer=data.get("disclaimer"), label_names=strings(data, "label_names"),
            k_threshold=data.get("k_threshold"),
            operating_threshold=_fields(Threshold, section(data, "operating_threshold")),
            methods={str(k): str(v) for k, v in (section(data, "methods") or {}).items()},
            training=_fields(Training, section(data, "training")),
            privacy=ReportPrivacy.from_dict(privacy) if privacy is not None else None,
            rounds=[RoundRecord.from_dict(r) for r in records(data, "rounds")],
            populations=[Population.from_dict(p) for p in records(data, "populations")],
            explanations=Explanations.from_dict(explanations) if explanations else None,
            personalised=Personalised.from_dict(personalised) if personalised else None,
            limitations=strings(data, "limitations"), cross_site=data.get("cross_site"),
            schema_version=version)
