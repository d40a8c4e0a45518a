"""The report figures' shared style: fixed matplotlib settings, the palette, the SVG
export (ids prefixed per figure, no metadata), and small readers of plain report data."""

from __future__ import annotations

import hashlib
import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, cast

import matplotlib as mpl
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from matplotlib.transforms import blended_transform_factory

if TYPE_CHECKING:
    from matplotlib.typing import RcKeyType

# Okabe-Ito: distinguishable with the common colour-vision deficiencies; black is kept
# for the emphasised series (the pooled population).
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#999999")
EMPHASIS = "#000000"
FLAG = "#D55E00"
MUTED = "#666666"

_RC: dict[RcKeyType, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "medfl-report",  # deterministic clip-path ids
    "font.family": "sans-serif",
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.color": "#e3e3e3",
    "grid.linewidth": 0.6,
}


def finite(x: Any) -> float | None:
    """``x`` as a finite float, or None for null, NaN, ±inf and non-numbers."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return float(x) if math.isfinite(x) else None


def interval(x: Any) -> tuple[float, float] | None:
    """``x`` as a (low, high) pair of finite floats, or None."""
    if not isinstance(x, Sequence) or len(x) != 2:
        return None
    lo, hi = finite(x[0]), finite(x[1])
    return (lo, hi) if lo is not None and hi is not None else None


def literal(s: Any) -> str:
    """``s`` as text matplotlib draws literally."""
    # Names come from config files; a "$" pair would otherwise switch on mathtext.
    return str(s).replace("$", r"\$")


@contextmanager
def styled_figure(width: float, height: float) -> Iterator[Figure]:
    """A figure of ``width`` x ``height`` inches with the report's fixed style."""
    with mpl.rc_context(_RC):
        yield Figure(figsize=(width, height), layout="constrained")


def to_svg(fig: Figure, label: str) -> str:
    """The figure as an ``<svg>`` element: no XML prologue or metadata, ids prefixed
    with a hash of the content, width fluid up to the natural size."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                             "Type": None})
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    svg = re.sub(r"\s*<metadata>.*?</metadata>", "", svg, flags=re.DOTALL)
    prefix = "f" + hashlib.sha1(svg.encode()).hexdigest()[:8] + "-"
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}{m[1]}"', svg)
    svg = re.sub(r'href="#([^"]+)"', lambda m: f'href="#{prefix}{m[1]}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}{m[1]})", svg)
    size = cast(re.Match[str], re.search(r'width="([\d.]+)pt"', svg))  # savefig writes it
    natural = float(size[1]) * 4 / 3  # pt -> CSS px
    aria = label.replace("&", "&amp;").replace('"', "&quot;").replace("<", "&lt;")
    svg = re.sub(r'width="[\d.]+pt" height="[\d.]+pt"',
                 f'width="100%" style="max-width:{natural:.0f}px;height:auto" '
                 f'role="img" aria-label="{aria}"', svg, count=1)
    return svg.strip()


def series_colours(names: Sequence[str], emphasis: str | None) -> dict[str, str]:
    """A colour per series: black for ``emphasis``, the palette in turn for the rest."""
    rest = iter(PALETTE * (1 + len(names) // len(PALETTE)))
    return {n: EMPHASIS if n == emphasis else next(rest) for n in names}


def layout_rows(ax: Any, labels: list[str], points: list[float]) -> None:
    """One row per label, top to bottom; the x-range fits the drawn ``points``."""
    ax.set_yticks(range(len(labels)), labels)
    ax.set_ylim(len(labels) - 0.4, -0.6)
    ax.grid(axis="y", visible=False)
    lo, hi = min(points), max(points)
    pad = max((hi - lo) * 0.08, 0.02)
    ax.set_xlim(lo - pad, hi + pad)
    ax.xaxis.set_major_locator(MaxNLocator(nbins=5))  # narrow axes: no colliding ticks


def write_note(ax: Any, y: float, text: str) -> None:
    """Grey italic text at the left of row ``y`` (where a suppressed point would be)."""
    ax.text(0.01, y, text, transform=blended_transform_factory(ax.transAxes, ax.transData),
            va="center", fontsize=9, color=MUTED, style="italic")


