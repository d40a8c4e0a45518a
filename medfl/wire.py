"""What a wire type may put in a reply's metrics: its keys, declared once, beside the type.

Every value a site sends the server is built by a dataclass with ``to_metrics`` /
``from_metrics`` (``TrainMetrics``, ``SiteEvalStats``, ``AuditResult``, ``ReportStats``,
the feature moments' wire form). Each declares its keys in a class-level :class:`WireKeys`,
and the egress contract (:mod:`medfl.privacy.egress`) is built from these declarations, so
a key is typed in one place only. Flower-free and dependency-free: the evaluation,
privacy and site modules all import it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

SCALAR, LIST = "scalar", "list"


@dataclass(frozen=True)
class WireKeys:
    """The metric keys one wire type sends.

    Parameters
    ----------
    scalars, lists : keys whose value is one number, or a list of numbers.
    counts : keys (among both) whose values count patients: each must be >= k or the
        suppression sentinel when it leaves a site.
    fixed_length : list key -> the name of the size its length must equal
        (``n_numeric``, ``n_cells``, ``n_explain``, ``n_arrays``; see ``check_reply``).
    max_length : list key -> the most entries it may hold.
    """

    scalars: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    counts: frozenset[str] = frozenset()
    fixed_length: dict[str, str] = field(default_factory=dict)
    max_length: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.scalars) & set(self.lists)
        unknown = (set(self.counts) | set(self.fixed_length) | set(self.max_length)) \
            - set(self.scalars) - set(self.lists)
        if both or unknown:
            raise ValueError(f"wire keys declared twice {sorted(both)} or not declared "
                             f"{sorted(unknown)}")

    def declared(self) -> dict[str, str]:
        """Key -> ``"scalar"`` or ``"list"``."""
        return {**{k: SCALAR for k in self.scalars}, **{k: LIST for k in self.lists}}

    def prefixed(self, prefix: str) -> WireKeys:
        """The same keys under ``prefix`` (e.g. the personalised evaluation's)."""
        return WireKeys(
            scalars=tuple(prefix + k for k in self.scalars),
            lists=tuple(prefix + k for k in self.lists),
            counts=frozenset(prefix + k for k in self.counts),
            fixed_length={prefix + k: v for k, v in self.fixed_length.items()},
            max_length={prefix + k: v for k, v in self.max_length.items()})

    def __or__(self, other: WireKeys) -> WireKeys:
        """Both types' keys: a reply that carries both."""
        return WireKeys(
            scalars=self.scalars + tuple(k for k in other.scalars if k not in self.scalars),
            lists=self.lists + tuple(k for k in other.lists if k not in self.lists),
            counts=self.counts | other.counts,
            fixed_length={**self.fixed_length, **other.fixed_length},
            max_length={**self.max_length, **other.max_length})


@dataclass(frozen=True)
class ReplyBounds:
    """The sizes a site's replies are checked against (see ``check_reply``): the
    suppression threshold ``k``, the number of numeric features, of declared evaluation
    cells, the explanation vector's length, and each declared attribute's cell indices."""

    k: int
    n_numeric: int
    n_cells: int = 0
    n_explain: int = 0
    attribute_cells: list[list[int]] = field(default_factory=list)
