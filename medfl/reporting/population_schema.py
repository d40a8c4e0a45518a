"""The populations of ``report.json`` as dataclasses: :class:`Population`, its subgroups,
fairness comparisons and figures (see :mod:`medfl.reporting.report_schema`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medfl.reporting.schema import records, strings


@dataclass
class Figure:
    """One reported figure: the estimate, its 95% CI, and whether it is not shown
    (``suppressed``: under the utility floor k, or withheld at a site in reports before
    test-set DP) or estimated rather than computed exactly."""

    value: float | None
    ci: list[float] | None = None
    suppressed: bool = False
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return {"value": self.value, "ci": self.ci, "suppressed": self.suppressed,
                "estimated": self.estimated}

    @staticmethod
    def from_dict(data: Any) -> Figure:
        """Read a figure (a :class:`Gap` or :class:`ImageFigure` when it has their keys);
        anything but an object reads as a figure with no value."""
        if not isinstance(data, Mapping):
            return Figure(None)
        base: dict[str, Any] = {"value": data.get("value"), "ci": data.get("ci"),
                                "suppressed": bool(data.get("suppressed")),
                                "estimated": bool(data.get("estimated"))}
        if "flagged" in data:
            return Gap(**base, flagged=bool(data["flagged"]))
        if "images" in data:
            return ImageFigure(**base, images=data["images"])
        return Figure(**base)


@dataclass
class Gap(Figure):
    """A fairness gap (a level's figure minus the reference level's); ``flagged`` when its
    95% CI excludes 0."""

    flagged: bool = False

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return {**super().to_dict(), "flagged": self.flagged}


@dataclass
class ImageFigure(Figure):
    """A figure averaged over only some images (HD95: where both masks are non-empty)."""

    images: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return {**super().to_dict(), "images": self.images}


def _figures(data: Any) -> dict[str, Figure]:
    return {str(k): Figure.from_dict(v) for k, v in (data or {}).items()} \
        if isinstance(data, Mapping) else {}


def gaps_from(data: Any) -> dict[str, Gap]:
    """Gap records by name (a record without ``flagged`` reads as not flagged)."""
    out: dict[str, Gap] = {}
    for name, record in (data.items() if isinstance(data, Mapping) else ()):
        figure = Figure.from_dict(record)
        out[str(name)] = figure if isinstance(figure, Gap) else Gap(
            figure.value, figure.ci, figure.suppressed, figure.estimated)
    return out


def plain(obj: Any) -> Any:
    """A dataclass of this module (or a list/dict of them) as JSON-ready data."""
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    return obj


def _record_dict(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: plain(getattr(obj, name)) for name in names}


def _noise_sd(data: Mapping[str, Any], key: str) -> float | None:
    value = data.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
        else None


@dataclass
class Subgroup:
    """One level of a declared attribute in one population.

    ``n``: its test cases, the rounded sum of the noisy counts of ``sites_included``
    (every site whose release the figures are computed from), with noise standard
    deviation ``n_noise_sd`` (0 or None: an exact count). ``reason``: why its figures are
    not shown (under the utility floor k).
    """

    attribute: str | None
    level: str | None
    n: int | None
    suppressed: bool
    reason: str | None
    metrics: dict[str, Figure]
    sites_included: list[str]
    n_noise_sd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _record_dict(self, ("attribute", "level", "n", "n_noise_sd", "suppressed",
                                   "reason", "metrics", "sites_included"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Subgroup:
        """Read a record written by :meth:`to_dict`."""
        return cls(attribute=data.get("attribute"), level=data.get("level"), n=data.get("n"),
                   suppressed=bool(data.get("suppressed")), reason=data.get("reason"),
                   metrics=_figures(data.get("metrics")),
                   sites_included=strings(data, "sites_included"),
                   n_noise_sd=_noise_sd(data, "n_noise_sd"))


@dataclass
class Comparison:
    """The gaps between one level of an attribute and its reference level."""

    attribute: str | None
    reference: str | None
    comparison: str | None
    gaps: dict[str, Gap]

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _record_dict(self, ("attribute", "reference", "comparison", "gaps"))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Comparison:
        """Read a record written by :meth:`to_dict`."""
        return cls(attribute=data.get("attribute"), reference=data.get("reference"),
                   comparison=data.get("comparison"), gaps=gaps_from(data.get("gaps")))


@dataclass
class Demographic:
    """How many test cases of a population fall in one level (a noisy count when
    ``n_noise_sd`` > 0; None: not reported)."""

    attribute: str | None
    level: str | None
    n: int | None
    n_noise_sd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return {"attribute": self.attribute, "level": self.level, "n": self.n,
                "n_noise_sd": self.n_noise_sd}


@dataclass
class Population:
    """The pooled population (``scope`` "consortium") or one site's.

    ``sites_included``: every site whose release the figures and ``n_test`` are sums
    of; ``n_test`` is rounded from a noisy count when ``n_test_noise_sd`` > 0. ``roc`` is
    ``{"fpr": [...], "tpr": [...]}`` and ``reliability`` a list of bins (``predicted``,
    ``observed``, ``n``): plot data, None where not computed.
    """

    name: str
    scope: str | None
    n_test: int | None
    prevalence: float | None
    demographics: list[Demographic]
    sites_included: list[str] | None
    metrics: dict[str, Figure]
    roc: dict[str, list[float]] | None
    reliability: list[dict[str, Any]] | None
    subgroups: list[Subgroup]
    fairness: list[Comparison]
    n_train: int | None = None
    n_test_noise_sd: float | None = None

    _KEYS = ("name", "scope", "n_test", "n_test_noise_sd", "prevalence", "demographics",
             "sites_included", "metrics", "roc", "reliability", "subgroups", "fairness",
             "n_train")

    @property
    def pooled(self) -> bool:
        """Whether this is the pooled (consortium) population."""
        return self.scope == "consortium"

    @property
    def noisy(self) -> bool:
        """Whether its figures come from DP-noised statistics."""
        return bool(self.n_test_noise_sd)

    def to_dict(self) -> dict[str, Any]:
        """The record as written in ``report.json``."""
        return _record_dict(self, self._KEYS)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Population:
        """Read a record written by :meth:`to_dict`."""
        included = data.get("sites_included")
        return cls(
            name=str(data.get("name")), scope=data.get("scope"), n_test=data.get("n_test"),
            prevalence=data.get("prevalence"),
            demographics=[Demographic(d.get("attribute"), d.get("level"), d.get("n"),
                                      _noise_sd(d, "n_noise_sd"))
                          for d in records(data, "demographics")],
            sites_included=[str(s) for s in included] if included is not None else None,
            metrics=_figures(data.get("metrics")), roc=data.get("roc"),
            reliability=data.get("reliability"),
            subgroups=[Subgroup.from_dict(s) for s in records(data, "subgroups")],
            fairness=[Comparison.from_dict(f) for f in records(data, "fairness")],
            n_train=data.get("n_train"), n_test_noise_sd=_noise_sd(data, "n_test_noise_sd"))
