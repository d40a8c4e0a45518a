"""The consortium's outcome prevalence, and the class weight derived from it.

A rare outcome trained with an unweighted loss gives a model that predicts every patient
negative at the declared threshold (sensitivity 0). With ``train.pos-weight = "auto"`` (the
default) the positive class is weighted by ``(1 - p) / p``, ``p`` the consortium's share
of positive training labels, so that both classes carry the same total weight in the loss.

Why a class weight rather than a moved threshold: the threshold is declared before the
run (``evaluation.threshold``) and is a public input of every test-set release (the
histograms' grid is built around it, :mod:`medfl.evaluation.histograms`), of each site's
local report and of the served bundle; a weight changes one thing, the training loss,
and leaves every release and figure computed the way it was planned. The cost is that the
weighted model's scores are no longer calibrated to the consortium's prevalence (they are
shifted by the odds ``(1 - p) / p``); the report's calibration figures say so, and the
report adds a second, declared operating point read from the pooled histogram
(``evaluation.operating-sensitivity``) for a reader who wants another trade-off.

A limit, measured: under DP-SGD the weight does little. Opacus clips each patient's
gradient to ``privacy.max-grad-norm`` after the weight has scaled it, and a logistic
model's per-patient gradient only changes length, not direction, with the weight; where
most gradients exceed the clipping norm (the default run), clipping undoes the weight.
On a 10%-prevalence synthetic table (4 sites, default DP run, seeded noise) ``"auto"``
(weight 9.4) and a fixed 1.0 gave the same figures (sensitivity 0.17 at 0.5); without DP
the weight moves sensitivity from 0 to about 0.6 (``tests/apps/
test_imbalance_and_refusal.py``). Under DP the second operating point is the remedy that
works; moving the threshold itself to ``p`` (the released prevalence is what it needs)
would also survive clipping, at the cost of moving the histograms' public grid.

How ``p`` is known. Each site releases its count of positive training labels with its
feature moments, as one more [0, 1] column of the same Gaussian release (its sensitivity
recomputed, :func:`medfl.data.scaling.moments_sensitivity`; the release is accounted at
the same noise multiplier in the site's training budget); without DP the count is exact,
as the moments are. The server pools ``p = sum(positives) / sum(count)`` and sends it with
the standardiser. A site treats that value as untrusted input (:func:`checked_prevalence`):
it refuses a non-finite one and clips it to :data:`PREVALENCE_RANGE`, which bounds the
weight to [1/99, 99] whatever a coordinator sends.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from medfl.data.scaling import FeatureMoments
from medfl.errors import ConfigError

__all__ = ["AUTO", "PREVALENCE_RANGE", "checked_prevalence", "pooled_prevalence",
           "pos_weight_for"]

#: ``train.pos-weight``'s value meaning "from the consortium's released prevalence"
AUTO = "auto"
#: the prevalences a site accepts; a value outside is clipped to the nearest end
PREVALENCE_RANGE = (0.01, 0.99)


def checked_prevalence(value: object) -> float:
    """``value`` (a prevalence sent by the server: untrusted) clipped to
    :data:`PREVALENCE_RANGE`; ``ConfigError`` when it is not a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise ConfigError(f"the server sent prevalence={value!r}; expected a finite number "
                          f"(clipped to {list(PREVALENCE_RANGE)})")
    low, high = PREVALENCE_RANGE
    return min(max(float(value), low), high)


def pooled_prevalence(moments: Sequence[FeatureMoments]) -> float | None:
    """The consortium's share of positive training labels: the sum of the sites'
    (noised) positive counts over the sum of their training rows, clipped to
    :data:`PREVALENCE_RANGE`; None when a site released no count of positives."""
    if not moments or any(m.positives is None for m in moments):
        return None
    n = sum(m.count for m in moments)
    if not n > 0:
        return None
    return checked_prevalence(sum(float(m.positives or 0.0) for m in moments) / n)


def pos_weight_for(prevalence: object) -> float:
    """The positive class's loss weight ``(1 - p) / p`` for prevalence ``p`` (checked and
    clipped first, :func:`checked_prevalence`)."""
    p = checked_prevalence(prevalence)
    return (1.0 - p) / p
