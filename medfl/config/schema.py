"""The config schema: per flattened key, its type, what is valid, and the check.

Defaults are not here: they live only in ``pyproject.toml [tool.flwr.app.config]``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from medfl.config.options import (
    ACCOUNTANTS,
    ATTACKS,
    AUGMENTATIONS,
    COMPRESSIONS,
    DEVICES,
    GRAD_SAMPLE_MODES,
    INTENSITIES,
    MODELS,
    OPTIMIZERS,
    PARTITIONS,
    PRECISIONS,
    PRIVACY_MODES,
    SCALINGS,
    STRATEGIES,
    TASKS,
)
from medfl.errors import ConfigError

__all__ = ["KNOWN_KEYS", "SCHEMA", "Rule", "coerce"]


#: (type, what is valid, check): ``check(value)`` is True when the value is valid.
Rule = tuple[type, str, Callable[[Any], bool]]


def _choice(options: tuple[str, ...]) -> Rule:
    return (str, f"one of {', '.join(options)}", lambda v: v in options)


def _positive_int() -> Rule:
    return (int, "an integer >= 1", lambda v: v >= 1)


#: Flattened key -> its :data:`Rule`.
SCHEMA: dict[str, Rule] = {
    "num-server-rounds": _positive_int(),
    "seed": (int, "an integer >= 0", lambda v: v >= 0),
    "task": _choice(TASKS),
    "device": _choice(DEVICES),
    "output-dir": (str, "a folder path, or empty for <project>/outputs", lambda v: True),
    "run-name": (str, "a name without '/', or empty for a timestamp",
                 lambda v: "/" not in v and v not in (".", "..", "latest")),
    "model.name": _choice(MODELS),
    "model.hidden": (int, "an integer >= 0 (0: no hidden layer)", lambda v: v >= 0),
    "model.width": (int, "an integer >= 2 (channels of the first imaging block)",
                    lambda v: v >= 2),
    "train.local-epochs": _positive_int(),
    "train.batch-size": _positive_int(),
    "train.lr": (float, "a number > 0", lambda v: v > 0 and math.isfinite(v)),
    "train.optimizer": _choice(OPTIMIZERS),
    "train.momentum": (float, "a number in [0, 1)", lambda v: 0 <= v < 1),
    "train.weight-decay": (float, "a number >= 0", lambda v: v >= 0),
    "train.pos-weight": (object, "\"auto\" (from the consortium's released prevalence) or "
                         "a number > 0 (1: unweighted)", lambda v: v == "auto" or (
                             isinstance(v, float) and v > 0 and math.isfinite(v))),
    "train.augment": _choice(AUGMENTATIONS),
    "train.precision": _choice(PRECISIONS),
    "train.channels-last": _choice(("auto", "true", "false")),
    "train.max-physical-batch-size": (int, "an integer >= 0 (0: no limit): the most rows "
                                      "a DP-SGD batch is processed in at once",
                                      lambda v: v >= 0),
    "privacy.enabled": (bool, "true or false", lambda v: True),
    "privacy.target-epsilon": (float, "a number > 0", lambda v: v > 0 and math.isfinite(v)),
    "privacy.target-delta": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "privacy.max-grad-norm": (float, "a number > 0", lambda v: v > 0 and math.isfinite(v)),
    "privacy.accountant": _choice(ACCOUNTANTS),
    "privacy.k-threshold": _positive_int(),
    "privacy.secure-noise": (bool, "true or false", lambda v: True),
    "privacy.secure-mode": (bool, "true or false", lambda v: True),
    "privacy.lifetime-epsilon": (float, "a number >= 0 (0: no lifetime limit)",
                                 lambda v: v >= 0 and math.isfinite(v)),
    "privacy.audit": (bool, "true or false", lambda v: True),
    "privacy.test-epsilon": (float, "a number >= 0 (0: exact test-set figures, where the "
                             "site allows them)", lambda v: v >= 0 and math.isfinite(v)),
    "privacy.report-share": (float, "a number in (0, 1]: the final report's share of the "
                             "test-set budget", lambda v: 0 < v <= 1),
    "privacy.grad-sample-mode": _choice(GRAD_SAMPLE_MODES),
    "privacy.central-noise-multiplier": (float, "a number >= 0 (0: no central DP)",
                                         lambda v: v >= 0 and math.isfinite(v)),
    "privacy.central-clipping-norm": (float, "a number > 0",
                                      lambda v: v > 0 and math.isfinite(v)),
    "privacy.mode": _choice(PRIVACY_MODES),
    "state-dir": (str, "a folder path, or empty for <project>/state", lambda v: True),
    "preprocessing.scaling": _choice(SCALINGS),
    "preprocessing.stats-noise-multiplier": (float, "a number >= 0 (0: no noise)",
                                             lambda v: v >= 0 and math.isfinite(v)),
    "data.manifest": (str, "a manifest CSV path, or empty for the task's built-in data",
                      lambda v: True),
    "data.schema": (str, "a JSON schema file path (task 'tabular'), or empty",
                    lambda v: True),
    "data.labels": (str, "two comma-separated class names, e.g. 'absent,present'",
                    lambda v: len([x for x in v.split(",") if x.strip()]) == 2
                    and len({x.strip() for x in v.split(",")}) == 2),
    "data.image-size": (int, "an integer in [16, 1024] (pixels per side)",
                        lambda v: 16 <= v <= 1024),
    "data.cpu-image-size": (int, "0 (never reduced) or an integer in [16, 1024]: pixels per "
                            "side when the run's device is the CPU",
                            lambda v: v == 0 or 16 <= v <= 1024),
    "data.intensity": _choice(INTENSITIES),
    "data.window-center": (float, "a number (modality units, e.g. HU)", math.isfinite),
    "data.window-width": (float, "a number >= 0 (0: the DICOM file's own window)",
                          lambda v: v >= 0 and math.isfinite(v)),
    "data.window-preset": (int, "an integer >= 0: which of a DICOM file's own display presets "
                           "(VOI LUTs, then windows; 0: the file's default)", lambda v: v >= 0),
    "data.test-fraction": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "data.partition": _choice(PARTITIONS),
    "data.dirichlet-alpha": (float, "a number > 0", lambda v: v > 0 and math.isfinite(v)),
    "evaluation.threshold": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "evaluation.operating-sensitivity": (float, "a number in (0, 1]: the report's second "
                                         "operating point, where the pooled sensitivity "
                                         "reaches it", lambda v: 0 < v <= 1),
    "evaluation.personal-epochs": (int, "an integer in [0, 100]: local fine-tuning epochs "
                                   "before the personalised evaluation (0: off)",
                                   lambda v: 0 <= v <= 100),
    "evaluation.personal-lr": (float, "a number >= 0 (0: train.lr)",
                               lambda v: v >= 0 and math.isfinite(v)),
    "evaluation.monitor-every": (int, "an integer >= 0: a noisy monitoring evaluation every "
                                 "this many rounds and at the last (0: none)",
                                 lambda v: v >= 0),
    "strategy.name": _choice(STRATEGIES),
    "strategy.fraction-train": (float, "a number in (0, 1]", lambda v: 0 < v <= 1),
    "strategy.fraction-evaluate": (float, "a number in (0, 1]", lambda v: 0 < v <= 1),
    "strategy.min-nodes": _positive_int(),
    "strategy.proximal-mu": (float, "a number >= 0 (FedProx's proximal weight)",
                             lambda v: v >= 0 and math.isfinite(v)),
    "strategy.server-lr": (float, "a number > 0 (FedAdam / FedYogi / FedAdagrad eta)",
                           lambda v: v > 0 and math.isfinite(v)),
    "strategy.server-momentum": (float, "a number in [0, 1) (FedAvgM)",
                                 lambda v: 0 <= v < 1),
    "strategy.trim-beta": (float, "a number in (0, 0.5) (FedTrimmedAvg's cut per side)",
                           lambda v: 0 < v < 0.5),
    "strategy.num-malicious": (int, "an integer >= 0 (Krum / MultiKrum)", lambda v: v >= 0),
    "strategy.norm-ratio": (float, "a number >= 0: reject updates whose norm exceeds this "
                            "many times the round's median (0: off)",
                            lambda v: v >= 0 and math.isfinite(v)),
    "strategy.min-round-nodes": (int, "an integer >= 1: a round goes ahead, and is "
                                 "aggregated, with at least this many sites", lambda v: v >= 1),
    "strategy.round-timeout": (float, "a number of seconds > 0: a site that has not replied "
                               "by then is dropped for the round",
                               lambda v: v > 0 and math.isfinite(v)),
    "strategy.fedbn": (bool, "true or false (FedBN: normalisation layers stay at each site)",
                       lambda v: True),
    "resume-from": (str, "a run folder to continue from its last checkpoint, or empty",
                    lambda v: True),
    "attack.sites": (str, "comma-separated site names, or empty", lambda v: True),
    "attack.kind": _choice(ATTACKS),
    "attack.scale": (float, "a number (the factor of a 'scale' attack)", math.isfinite),
    "transport.compression": _choice(COMPRESSIONS),
    "secure-aggregation.enabled": (bool, "true or false", lambda v: True),
    "secure-aggregation.num-shares": (int, "0 (every sampled site, at most 41) or an odd "
                                      "integer >= 3: the neighbours each site shares its "
                                      "keys with", lambda v: v == 0 or v >= 3),
    "secure-aggregation.reconstruction-threshold": (
        float, "a number in (0, 1]: the fraction of a site's shares needed to unmask (the "
        "rest may drop out)", lambda v: 0 < v <= 1),
    "secure-aggregation.clipping-range": (float, "a number > 0: each update value is "
                                          "clipped to [-range, range] before masking",
                                          lambda v: v > 0 and math.isfinite(v)),
    "secure-aggregation.quantization-range": (
        int, "a power of two in [2^8, 2^24]: integer levels per value",
        lambda v: 2 ** 8 <= v <= 2 ** 24 and v & (v - 1) == 0),
}

KNOWN_KEYS = frozenset(SCHEMA)


def coerce(key: str, value: Any) -> Any:
    """``value`` as ``key``'s type, checked; ``ConfigError`` names the key and what is valid."""
    typ, valid, check = SCHEMA[key]
    if typ is object:  # a word or a number (e.g. train.pos-weight)
        if isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not check(value):
            raise ConfigError(f"config key {key!r} has value {value!r}; expected {valid}")
        return value
    ok_type = (
        isinstance(value, bool) if typ is bool
        else isinstance(value, int) and not isinstance(value, bool) if typ is int
        else isinstance(value, (int, float)) and not isinstance(value, bool) if typ is float
        else isinstance(value, str)
    )
    if not ok_type:
        raise ConfigError(f"config key {key!r} has value {value!r}; expected {valid}")
    value = typ(value)
    if not check(value):
        raise ConfigError(f"config key {key!r} has value {value!r}; expected {valid}")
    return value
