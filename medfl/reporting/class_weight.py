"""How a run weighted the positive class, as ``summary.json``, the report and the model
card state it (``train.pos-weight``: fixed, or ``"auto"`` from the consortium's released
prevalence; see :mod:`medfl.data.prevalence`)."""

from __future__ import annotations

from typing import Any

from medfl.config import RunConfig
from medfl.data.prevalence import pos_weight_for
from medfl.site.releases import exact_moments

__all__ = ["class_weight_record", "class_weight_text"]


def class_weight_record(cfg: RunConfig, prevalence: float | None) -> dict[str, Any]:
    """``summary.json``'s ``class_weight``: ``"fixed"`` (``train.pos-weight`` a number),
    ``"auto"`` with the consortium's released ``prevalence`` and the weight ``(1 - p) / p``
    the sites derived from it, or ``"auto"`` without one (no prevalence is released for
    this task or scaling: unweighted)."""
    setting = cfg.train.pos_weight
    if isinstance(setting, float):
        return {"setting": "fixed", "pos_weight": setting, "prevalence": None,
                "source": "train.pos-weight, a constant declared before the run"}
    if prevalence is None:
        return {"setting": "auto", "pos_weight": 1.0, "prevalence": None,
                "source": "no prevalence is released for this task or scaling: unweighted"}
    source = ("exact count of positive training labels, sent with the feature moments"
              if exact_moments(cfg) else "count of positive training labels, noised with "
              "the feature moments in one accounted Gaussian release")
    return {"setting": "auto", "pos_weight": pos_weight_for(prevalence),
            "prevalence": prevalence, "source": source}


def class_weight_text(record: dict[str, Any] | None) -> str | None:
    """``summary.json``'s ``class_weight`` in words (the report's and model card's)."""
    if not record:
        return None
    weight = f"positive class weighted {record['pos_weight']:.3g}× in training"
    if record.get("setting") == "fixed":
        return f"{weight} (fixed: train.pos-weight)"
    if record.get("prevalence") is None:
        return f"{weight} (train.pos-weight auto, {record.get('source')})"
    return (f"{weight} (train.pos-weight auto: (1 − p) / p for the consortium's prevalence "
            f"p = {record['prevalence']:.3f}, from the {record.get('source')})")
