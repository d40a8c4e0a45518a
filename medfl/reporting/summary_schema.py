"""``summary.json`` as dataclasses: :class:`Summary` and its parts.

:func:`medfl.reporting.summary.build_summary` builds a :class:`Summary`;
``Summary.to_dict()`` is the file's content and ``Summary.load(path)`` reads it back
(``Summary.from_dict(s.to_dict()).to_dict() == s.to_dict()``). Keys that are written only
in some runs (``mean_site_dice``, ``sites_evaluated``, ``personal``, a site's
``personal_metrics``) are ``X | None`` fields here, left out of the file when None. A file
without ``schema_version`` was written before the key existed and is read as version 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medfl.reporting.schema import check_version, read_json, require, section, strings

SUMMARY_SCHEMA_VERSION = 1
SUMMARY_VERSIONS = (1,)
_REPORT_BLOCKS = ("ci", "estimated", "subgroups")


def _optional(**pairs: Any) -> dict[str, Any]:
    """The pairs whose value is not None (keys written only in some runs)."""
    return {k: v for k, v in pairs.items() if v is not None}


@dataclass
class Metrics:
    """One metric block: figures by name (``accuracy``, ``auroc``, ``loss``, and ``dice``,
    ``iou`` for segmentation; the report adds ``sensitivity`` ... ``hd95``), and the blocks
    the report merges in: 95% CIs, the names of estimated figures, and subgroup figures
    (attribute -> level -> ``n``, ``suppressed`` and figures)."""

    values: dict[str, float | None]
    ci: dict[str, list[float] | None] | None = None
    estimated: list[str] | None = None
    subgroups: dict[str, dict[str, dict[str, Any]]] | None = None

    def value(self, name: str) -> float | None:
        """The figure ``name``; None when this block has none (suppressed or not computed)."""
        return self.values.get(name)

    def to_dict(self) -> dict[str, Any]:
        """The block as written in ``summary.json``."""
        return {**self.values, **_optional(ci=self.ci, estimated=self.estimated,
                                           subgroups=self.subgroups)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Metrics:
        """Read a block written by :meth:`to_dict`."""
        values = {k: v for k, v in data.items() if k not in _REPORT_BLOCKS}
        return cls(values=values, ci=data.get("ci"), estimated=data.get("estimated"),
                   subgroups=data.get("subgroups"))


@dataclass
class SiteSummary:
    """One site: sizes, privacy spent (and what recomputes it), rounds and metrics.

    ``accountant_history`` lists ``[noise_multiplier, sample_rate, steps]`` of every
    accounted release, so that ``epsilon`` can be recomputed with ``accountant``.
    ``epsilon`` is the training rows' ε this run, ``test_epsilon`` the test rows' (None
    when no reply stated it, as in files written before the test budget).
    ``epsilon_local`` is the unconditional training ε of distributed DP (the site's own
    noise share alone; None in local mode and in files written before it).
    """

    name: str
    n_train: int | None
    n_test: int | None
    epsilon: float | None
    epsilon_lifetime: float | None
    steps: int | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    max_grad_norm: float | None
    accountant: str | None
    other_releases: list[dict[str, Any]]
    accountant_history: list[list[float]]
    rounds_trained: int
    last_round_trained: int | None
    metrics: Metrics
    personal_metrics: Metrics | None = None
    test_epsilon: float | None = None
    epsilon_local: float | None = None

    _SCALARS = ("n_train", "n_test", "epsilon", "epsilon_lifetime", "epsilon_local", "steps",
                "delta", "noise_multiplier", "sample_rate", "max_grad_norm", "accountant",
                "last_round_trained")

    def to_dict(self) -> dict[str, Any]:
        """The site's entry in ``summary.json``'s ``sites``."""
        out: dict[str, Any] = {"name": self.name}
        out |= {key: getattr(self, key) for key in self._SCALARS}
        out |= _optional(test_epsilon=self.test_epsilon)
        out |= {"other_releases": self.other_releases,
                "accountant_history": self.accountant_history,
                "rounds_trained": self.rounds_trained, "metrics": self.metrics.to_dict()}
        if self.personal_metrics is not None:
            out["personal_metrics"] = self.personal_metrics.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteSummary:
        """Read a site entry; figures an older file lacks read as None."""
        personal = section(data, "personal_metrics")
        return cls(
            name=str(require(data, "name", where="summary.json sites")),
            **{key: data.get(key) for key in cls._SCALARS},
            other_releases=list(data.get("other_releases") or []),
            accountant_history=list(data.get("accountant_history") or []),
            rounds_trained=int(data.get("rounds_trained") or 0),
            metrics=Metrics.from_dict(require(data, "metrics", where="summary.json sites")),
            personal_metrics=Metrics.from_dict(personal) if personal is not None else None,
            test_epsilon=data.get("test_epsilon"))


@dataclass
class Audit:
    """The membership-inference audit: per site ``attack_auc``, ``tpr_at_fpr_0.1``,
    ``members``, ``non_members``; and the mean attack AUC."""

    attack: str
    sites: dict[str, dict[str, Any]]
    mean_attack_auc: float | None

    def to_dict(self) -> dict[str, Any]:
        """The block as written in ``summary.json``."""
        return {"attack": self.attack, "sites": self.sites,
                "mean_attack_auc": self.mean_attack_auc}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Audit:
        """Read a block written by :meth:`to_dict`."""
        return cls(attack=str(data.get("attack") or ""), sites=dict(data.get("sites") or {}),
                   mean_attack_auc=data.get("mean_attack_auc"))


@dataclass
class PrivacySummary:
    """The run's privacy set-up and what left the sites outside DP.

    ``test_epsilon_target`` is the run's ``privacy.test-epsilon`` (0: exact test figures);
    ``per_patient_epsilon`` each site's larger of its training and test ε this run, as
    ``composition`` states (None in files written before the test budget). ``mode`` is
    ``privacy.mode`` and ``distributed`` distributed DP's noise share, minimum sites and
    assumption (None in local mode; both None in files written before them)."""

    dp_sgd: bool
    guarantee: str
    target_epsilon: float | None
    target_delta: float | None
    max_epsilon: float | None
    lifetime_epsilon_limit: float | None
    secure_noise: bool
    k_threshold: int
    feature_scaling: str | None
    stats_noise_multiplier: float
    non_dp_releases: list[str]
    mechanisms: list[str]
    accountant: str | None
    central_dp: dict[str, Any] | None
    secure_aggregation: bool
    audit: Audit | None
    test_epsilon_target: float | None = None
    per_patient_epsilon: dict[str, float | None] | None = None
    composition: str | None = None
    mode: str | None = None
    distributed: dict[str, Any] | None = None

    _PLAIN = ("dp_sgd", "guarantee", "target_epsilon", "target_delta", "max_epsilon",
              "lifetime_epsilon_limit", "secure_noise", "k_threshold", "feature_scaling",
              "stats_noise_multiplier", "non_dp_releases", "mechanisms", "accountant",
              "central_dp", "secure_aggregation")
    #: written only by newer runs (the test budget, then privacy.mode; left out when None)
    _LATER = ("test_epsilon_target", "per_patient_epsilon", "composition", "mode",
              "distributed")

    def to_dict(self) -> dict[str, Any]:
        """The block as written in ``summary.json``."""
        out = {key: getattr(self, key) for key in self._PLAIN}
        out |= _optional(**{key: getattr(self, key) for key in self._LATER})
        out["audit"] = self.audit.to_dict() if self.audit is not None else None
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PrivacySummary:
        """Read a block written by :meth:`to_dict`."""
        audit = section(data, "audit")
        plain: dict[str, Any] = {key: data.get(key) for key in cls._PLAIN + cls._LATER}
        plain |= {"non_dp_releases": strings(data, "non_dp_releases"),
                  "mechanisms": strings(data, "mechanisms"),
                  "k_threshold": int(require(data, "k_threshold", where="summary.json privacy"))}
        return cls(**plain, audit=Audit.from_dict(audit) if audit is not None else None)


@dataclass
class PooledSummary:
    """The ``global`` block: metrics pooled over the sites' shared statistics."""

    metrics: Metrics
    n_test: int | None
    auroc_method: str
    auroc_sites_excluded: int | None
    sites_suppressed: int | None

    def to_dict(self) -> dict[str, Any]:
        """The block as written in ``summary.json``."""
        return {"metrics": self.metrics.to_dict(), "n_test": self.n_test,
                "auroc_method": self.auroc_method,
                "auroc_sites_excluded": self.auroc_sites_excluded,
                "sites_suppressed": self.sites_suppressed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PooledSummary:
        """Read a block written by :meth:`to_dict`."""
        return cls(metrics=Metrics.from_dict(require(data, "metrics", where="summary.json "
                                                                            "global")),
                   n_test=data.get("n_test"), auroc_method=str(data.get("auroc_method") or ""),
                   auroc_sites_excluded=data.get("auroc_sites_excluded"),
                   sites_suppressed=data.get("sites_suppressed"))


@dataclass
class PersonalSummary:
    """The personalised evaluation (``evaluation.personal-epochs``), in the global block's
    terms."""

    method: str
    epochs: int
    mean_site_accuracy: float | None
    metrics: Metrics
    auroc_sites_excluded: int | None
    mean_site_dice: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The block as written in ``summary.json``."""
        return {"method": self.method, "epochs": self.epochs,
                "mean_site_accuracy": self.mean_site_accuracy,
                **_optional(mean_site_dice=self.mean_site_dice),
                "metrics": self.metrics.to_dict(),
                "auroc_sites_excluded": self.auroc_sites_excluded}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PersonalSummary:
        """Read a block written by :meth:`to_dict`."""
        where = "summary.json personal"
        return cls(method=str(require(data, "method", where=where)),
                   epochs=int(data.get("epochs") or 0),
                   mean_site_accuracy=data.get("mean_site_accuracy"),
                   metrics=Metrics.from_dict(require(data, "metrics", where=where)),
                   auroc_sites_excluded=data.get("auroc_sites_excluded"),
                   mean_site_dice=data.get("mean_site_dice"))


@dataclass
class Summary:
    """``summary.json``: the machine-readable headline of a run.

    ``pooled`` is the file's ``global`` block. ``extra`` keeps keys this version does not
    model, so that rewriting an older or newer file loses nothing.
    """

    run_name: str
    task: str
    dataset: str | None
    strategy: str
    model: str
    rounds: int
    rounds_planned: int
    seed: int | None
    privacy: PrivacySummary
    sites: list[SiteSummary]
    pooled: PooledSummary
    mean_site_accuracy: float | None
    mean_site_dice: float | None = None
    sites_evaluated: int | None = None
    #: the sites the mean per-site headline averages (a site under k is left out)
    sites_reported: int | None = None
    #: how the positive class was weighted (medfl.reporting.class_weight)
    class_weight: dict[str, Any] | None = None
    personal: PersonalSummary | None = None
    schema_version: int = SUMMARY_SCHEMA_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    _REQUIRED = ("run_name", "task", "strategy", "model", "rounds", "rounds_planned")
    _KNOWN = frozenset({*_REQUIRED, "schema_version", "dataset", "seed", "privacy", "sites",
                        "global", "mean_site_accuracy", "mean_site_dice", "sites_evaluated",
                        "sites_reported", "class_weight", "personal"})

    def site(self, name: str) -> SiteSummary | None:
        """The site called ``name``, or None."""
        return next((s for s in self.sites if s.name == name), None)

    @property
    def segmentation(self) -> bool:
        """Whether the run's headline figures are Dice/IoU (a segmentation task)."""
        from medfl.tasks import EvalKind, evaluation_of

        if self.mean_site_dice is not None:
            return True
        try:
            return evaluation_of(self.task) is EvalKind.SEGMENTATION
        except (KeyError, ValueError):  # a task this version does not know
            return False

    def to_dict(self) -> dict[str, Any]:
        """The content of ``summary.json``."""
        head = {key: getattr(self, key) for key in self._REQUIRED}
        return {**self.extra, "schema_version": self.schema_version, **head,
                "dataset": self.dataset, "seed": self.seed,
                "privacy": self.privacy.to_dict(),
                "sites": [s.to_dict() for s in self.sites], "global": self.pooled.to_dict(),
                "mean_site_accuracy": self.mean_site_accuracy,
                **_optional(mean_site_dice=self.mean_site_dice,
                            sites_evaluated=self.sites_evaluated,
                            sites_reported=self.sites_reported,
                            class_weight=self.class_weight,
                            personal=self.personal.to_dict() if self.personal else None)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, file: str = "summary.json") -> Summary:
        """Read ``summary.json``'s content; ``DataError`` for a schema version this MedFL
        does not understand or a missing key."""
        version = check_version(data, file=file, understood=SUMMARY_VERSIONS, default=1)
        personal = section(data, "personal")
        head = {key: require(data, key, where=file) for key in cls._REQUIRED}
        return cls(
            **head, dataset=data.get("dataset"), seed=data.get("seed"),
            privacy=PrivacySummary.from_dict(require(data, "privacy", where=file)),
            sites=[SiteSummary.from_dict(s) for s in require(data, "sites", where=file)],
            pooled=PooledSummary.from_dict(require(data, "global", where=file)),
            mean_site_accuracy=data.get("mean_site_accuracy"),
            mean_site_dice=data.get("mean_site_dice"),
            sites_evaluated=data.get("sites_evaluated"),
            sites_reported=data.get("sites_reported"),
            class_weight=data.get("class_weight"),
            personal=PersonalSummary.from_dict(personal) if personal is not None else None,
            schema_version=version,
            extra={k: v for k, v in data.items() if k not in cls._KNOWN})

    @classmethod
    def load(cls, path: Path) -> Summary:
        """Read a run's ``summary.json`` (``ConfigError`` if missing or not JSON)."""
        return cls.from_dict(read_json(Path(path)), file=Path(path).name)
