"""Noise calibrations remembered on disk, across processes.

Calibrating σ for a target ε (Opacus' ``get_noise_multiplier``: a bisection over accountant
evaluations) takes 5-15 s with the PRV accountant on a CPU. A deployed site pays it in a
fresh ClientApp process every run (each Flower message starts one), so the in-process memo
of ``dp`` never helps there. The result is a pure function of public numbers (ε, δ, sample
rate, steps, accountant, tolerance), so a machine may keep it in the folder named by
``MEDFL_CALIBRATION_CACHE``; unset, nothing is read or written.

A remembered σ is a hint, never trusted: it is used only when one accountant evaluation
shows that it spends at most the target ε and lies within the tolerance of it, which is
exactly what the bisection guarantees of its own result. A planted or corrupted entry can
cost a recalibration, never privacy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

#: the environment variable naming the cache folder
CACHE_ENV = "MEDFL_CALIBRATION_CACHE"

Calibrate = Callable[[float, float, float, int, str, float], float]
Spends = Callable[..., float]


def remembered_noise(calibrate: Calibrate, *, spends: Spends, target_epsilon: float,
                     delta: float, sample_rate: float, steps: int, accountant: str,
                     tolerance: float) -> float:
    """``calibrate(target_epsilon, delta, sample_rate, steps, accountant, tolerance)``,
    remembered in ``$MEDFL_CALIBRATION_CACHE`` when that is set.

    ``spends(history, delta=..., accountant=...)`` is the ε of a history; a remembered σ
    is returned only if ``target_epsilon - tolerance <= ε(σ) <= target_epsilon``.
    """
    folder = os.environ.get(CACHE_ENV)
    args = (float(target_epsilon), float(delta), float(sample_rate), int(steps),
            str(accountant), float(tolerance))
    if not folder:
        return calibrate(*args)
    key = dict(zip(("target_epsilon", "delta", "sample_rate", "steps", "accountant",
                    "tolerance"), args, strict=True))
    path = Path(folder) / f"{hashlib.sha256(_dumps(key)).hexdigest()}.json"
    sigma = _read(path, key)
    if sigma is not None:
        eps = spends([(sigma, args[2], args[3])], delta=args[1], accountant=args[4])
        if args[0] - args[5] <= eps <= args[0]:
            return sigma
        logger.warning("a remembered noise calibration did not meet its target; recalibrating")
    sigma = calibrate(*args)
    _write(path, {"key": key, "noise_multiplier": sigma})
    return sigma


def _dumps(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True).encode()


def _read(path: Path, key: dict[str, Any]) -> float | None:
    """The σ stored for ``key`` at ``path``; None when absent, unreadable or another key's."""
    try:
        entry = json.loads(path.read_text())
        sigma = float(entry["noise_multiplier"])
    except (OSError, ValueError, TypeError, KeyError):
        return None  # a miss: calibrate, and overwrite it
    if entry.get("key") != key or not 0.0 < sigma < float("inf"):
        return None
    return sigma


def _write(path: Path, entry: dict[str, Any]) -> None:
    """Write atomically (a unique temporary name, then a rename): a concurrent reader
    sees the old entry or the new one, never half of one."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=path.parent, prefix=".calibration-",
                                         delete=False) as out:
            tmp = out.name
            out.write(_dumps(entry))
        os.replace(tmp, path)
    except OSError as err:  # the cache only saves time: training goes on without it
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        logger.warning("noise calibration not cached (%s)", type(err).__name__)
