"""Typed run configuration, parsed once from Flower's flattened ``run_config``.

Defaults live only in ``pyproject.toml [tool.flwr.app.config]``; this package knows the
*schema* (key, type, allowed values), not the defaults. Keys are kebab-case and nested
tables flatten with dots (``privacy.target-epsilon``); fields are snake_case.

- :mod:`medfl.config.options`: the tasks and the allowed values of each choice key;
- :mod:`medfl.config.sections`: the frozen dataclasses, one per config table;
- :mod:`medfl.config.schema`: per key, its type, what is valid and the check;
- :mod:`medfl.config.parse`: :func:`parse_run_config` and the cross-field rules;
- :mod:`medfl.config.image_size`: the image size a run uses (reduced on a CPU-only run).
"""

from __future__ import annotations

from medfl.config.image_size import effective_image_size
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
    SCALINGS,
    STRATEGIES,
    TASK_MODELS,
    TASKS,
    TaskName,
)
from medfl.config.parse import parse_recorded_config, parse_run_config
from medfl.config.schema import KNOWN_KEYS
from medfl.config.sections import (
    AttackConfig,
    DataConfig,
    EvaluationConfig,
    ModelConfig,
    PreprocessingConfig,
    PrivacyConfig,
    RunConfig,
    SecureAggregationConfig,
    StrategyConfig,
    TrainConfig,
    TransportConfig,
)

__all__ = [
    "ACCOUNTANTS", "ATTACKS", "AUGMENTATIONS", "COMPRESSIONS", "DEVICES", "GRAD_SAMPLE_MODES",
    "INTENSITIES", "KNOWN_KEYS", "MODELS", "OPTIMIZERS", "PARTITIONS", "SCALINGS",
    "STRATEGIES", "TASKS", "TASK_MODELS", "AttackConfig", "DataConfig", "EvaluationConfig",
    "ModelConfig", "PreprocessingConfig", "PrivacyConfig", "RunConfig", "StrategyConfig",
    "SecureAggregationConfig", "TaskName", "TrainConfig", "TransportConfig",
    "effective_image_size", "parse_recorded_config", "parse_run_config",
]
