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
    counts : keys (among both) whose values count patients, exactly: each must be >= k or
        the suppression sentinel when it leaves a site (a noisy count is not one).
    fixed_length : list key -> the name of the size its length must equal (a field of
        :class:`ReplyBounds`, or ``n_arrays``; see ``check_reply``).
    max_length : list key -> the most entries it may hold.
    noise : noise standard deviation key -> the key of the values it describes: where
        those values are not empty, every standard deviation must be > 0 unless the run
        asked for exact test-set figures (``privacy.test-epsilon = 0``).
    """

    scalars: tuple[str, ...] = ()
    lists: tuple[str, ...] = ()
    counts: frozenset[str] = frozenset()
    fixed_length: dict[str, str] = field(default_factory=dict)
    max_length: dict[str, int] = field(default_factory=dict)
    noise: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        both = set(self.scalars) & set(self.lists)
        unknown = (set(self.counts) | set(self.fixed_length) | set(self.max_length)
                   | set(self.noise) | set(self.noise.values())) \
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
            max_length={prefix + k: v for k, v in self.max_length.items()},
            noise={prefix + k: prefix + v for k, v in self.noise.items()})

    def __or__(self, other: WireKeys) -> WireKeys:
        """Both types' keys: a reply that carries both."""
        return WireKeys(
            scalars=self.scalars + tuple(k for k in other.scalars if k not in self.scalars),
            lists=self.lists + tuple(k for k in other.lists if k not in self.lists),
            counts=self.counts | other.counts,
            fixed_length={**self.fixed_length, **other.fixed_length},
            max_length={**self.max_length, **other.max_length},
            noise={**self.noise, **other.noise})


@dataclass(frozen=True)
class ReplyBounds:
    """The sizes a site's replies are checked against (see ``check_reply``).

    ``k``: the suppression threshold of the exact counts that still leave (training-set
    size, the audit's groups); ``n_numeric``: the moments' columns (numeric features,
    then binary ones to impute);
    ``n_cells``: declared evaluation cells; ``n_explain``: the explanation vector's length
    (0 without one); ``n_hist``: the report's histogram counts (``n_cells`` x 2 x bins,
    0 for segmentation); ``n_sums``: the report's segmentation sums (``n_cells`` x 8, 0
    for classification); ``n_seg``: one cell's segmentation sums (8 or 0);
    ``n_monitor_hist`` / ``n_monitor_sums``: a monitoring evaluation's whole-test-set
    histogram (2 x bins) or segmentation sums (3), 0 where the task has none;
    ``exact``: whether the run asked for exact test-set figures (``privacy.test-epsilon
    = 0``), the only case in which a noise standard deviation may be 0.
    """

    k: int
    n_numeric: int
    n_cells: int = 0
    n_explain: int = 0
    n_hist: int = 0
    n_sums: int = 0
    n_seg: int = 0
    n_monitor_hist: int = 0
    n_monitor_sums: int = 0
    exact: bool = False
