"""How the command line prints numbers: ε never rounded up, suppressed values named."""

from __future__ import annotations

import math

__all__ = ["format_epsilon", "format_value"]


def format_epsilon(value: float | str | None) -> str:
    """ε truncated (not rounded) to 3 decimals, so the display never exceeds the value."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{math.floor(value * 1000) / 1000:.3f}"
    return format_value(value)


def format_value(value: float | str | None, digits: int = 3) -> str:
    """A metric with ``digits`` decimals; ``None`` (held back at a site) is "suppressed"."""
    if value is None:
        return "suppressed"
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"
