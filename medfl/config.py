"""Typed run configuration, parsed once from Flower's flattened ``run_config``.

Defaults live only in ``pyproject.toml [tool.flwr.app.config]``; this module knows the
*schema* (key, type, allowed values), not the defaults. Keys are kebab-case and nested
tables flatten with dots (``privacy.target-epsilon``); fields are snake_case.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import asdict, dataclass
from enum import Enum
from typing import Any

from medfl.errors import ConfigError


class TaskName(str, Enum):
    """The four tasks (``task`` in the run config); their behaviour is in ``medfl.tasks``."""

    HEART_DISEASE = "heart-disease"
    TABULAR = "tabular"
    IMAGE_CLASSIFICATION = "image-classification"
    SEGMENTATION = "segmentation"

    def __str__(self) -> str:
        return self.value

    @property
    def is_tabular(self) -> bool:
        """Heart disease (embedded) or a consortium's own table."""
        return self in (TaskName.HEART_DISEASE, TaskName.TABULAR)


TASKS = tuple(t.value for t in TaskName)
MODELS = ("logreg", "mlp", "resnet", "densenet121", "unet")
#: Which models fit which task (checked once, when the config is parsed).
TASK_MODELS = {
    "heart-disease": ("logreg", "mlp"),
    "tabular": ("logreg", "mlp"),
    "image-classification": ("resnet", "densenet121"),
    "segmentation": ("unet",),
}
INTENSITIES = ("minmax", "window", "zscore")
PARTITIONS = ("natural", "iid", "dirichlet", "dirichlet-mix", "quantity")
AUGMENTATIONS = ("none", "light", "standard")
STRATEGIES = ("fedavg", "fedprox", "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian",
              "fedtrimmedavg", "krum", "multikrum")
ATTACKS = ("none", "scale", "sign-flip", "nan", "label-flip")
#: How a site encodes its update for the wire (decoded by the server before aggregation).
COMPRESSIONS = ("none", "float16", "int8")
# Opacus' "gdp" accountant is left out on purpose: it reads only the last history entry
# (so it would drop an earlier release from the total) and is an approximation, not a bound.
ACCOUNTANTS = ("rdp", "prv")
SCALINGS = ("federated", "site", "none")
DEVICES = ("auto", "cpu", "cuda")
OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("auto", "hooks", "ew", "functorch")  # Opacus per-sample gradients


def _comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a config value listing names."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True)
class ModelConfig:
    name: str
    hidden: int
    width: int


@dataclass(frozen=True)
class TrainConfig:
    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    pos_weight: float
    augment: str


@dataclass(frozen=True)
class PrivacyConfig:
    enabled: bool
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    accountant: str
    k_threshold: int
    secure_noise: bool
    secure_mode: bool
    lifetime_epsilon: float
    audit: bool
    grad_sample_mode: str
    central_noise_multiplier: float
    central_clipping_norm: float


@dataclass(frozen=True)
class PreprocessingConfig:
    scaling: str
    stats_noise_multiplier: float


@dataclass(frozen=True)
class DataConfig:
    manifest: str
    schema: str
    labels: str
    image_size: int
    intensity: str
    window_center: float
    window_width: float
    test_fraction: float
    partition: str
    dirichlet_alpha: float

    @property
    def label_names(self) -> tuple[str, ...]:
        return _comma_list(self.labels)


@dataclass(frozen=True)
class EvaluationConfig:
    threshold: float
    #: personalised evaluation: local fine-tuning epochs before a second evaluation (0: off)
    personal_epochs: int
    #: the fine-tuning's learning rate (0: ``train.lr``)
    personal_lr: float


@dataclass(frozen=True)
class StrategyConfig:
    name: str
    fraction_train: float
    fraction_evaluate: float
    min_nodes: int
    proximal_mu: float
    server_lr: float
    server_momentum: float
    trim_beta: float
    num_malicious: int
    norm_ratio: float
    min_round_nodes: int
    round_timeout: float
    #: FedBN: normalisation-layer parameters stay at each site (imaging models)
    fedbn: bool


@dataclass(frozen=True)
class TransportConfig:
    #: ``none``: float32 weights; ``float16``: half-precision weights; ``int8``: the update
    #: (weights minus the global model) quantised to 8 bits per value, one scale per array
    compression: str


@dataclass(frozen=True)
class AttackConfig:
    """Simulation only: sites that send a corrupted update every round."""

    sites: str
    kind: str
    scale: float

    @property
    def site_names(self) -> tuple[str, ...]:
        return _comma_list(self.sites)


@dataclass(frozen=True)
class RunConfig:
    """The whole resolved run configuration (frozen; build it with :func:`parse_run_config`)."""

    num_server_rounds: int
    seed: int
    task: TaskName
    device: str
    output_dir: str
    run_name: str
    state_dir: str
    resume_from: str
    model: ModelConfig
    train: TrainConfig
    privacy: PrivacyConfig
    preprocessing: PreprocessingConfig
    data: DataConfig
    evaluation: EvaluationConfig
    strategy: StrategyConfig
    attack: AttackConfig
    transport: TransportConfig

    @property
    def is_tabular(self) -> bool:
        """Heart disease (embedded) or a consortium's own table (``task = "tabular"``)."""
        return self.task.is_tabular

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# key -> (type, validator description, check). ``check`` returns True when valid.
def _choice(options: tuple[str, ...]):
    return (str, f"one of {', '.join(options)}", lambda v: v in options)


def _positive_int():
    return (int, "an integer >= 1", lambda v: v >= 1)


_SCHEMA: dict[str, tuple[type, str, Any]] = {
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
    "train.pos-weight": (float, "a number > 0 (1: unweighted)",
                         lambda v: v > 0 and math.isfinite(v)),
    "train.augment": _choice(AUGMENTATIONS),
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
    "privacy.grad-sample-mode": _choice(GRAD_SAMPLE_MODES),
    "privacy.central-noise-multiplier": (float, "a number >= 0 (0: no central DP)",
                                         lambda v: v >= 0 and math.isfinite(v)),
    "privacy.central-clipping-norm": (float, "a number > 0",
                                      lambda v: v > 0 and math.isfinite(v)),
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
    "data.intensity": _choice(INTENSITIES),
    "data.window-center": (float, "a number (modality units, e.g. HU)", math.isfinite),
    "data.window-width": (float, "a number >= 0 (0: the DICOM file's own window)",
                          lambda v: v >= 0 and math.isfinite(v)),
    "data.test-fraction": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "data.partition": _choice(PARTITIONS),
    "data.dirichlet-alpha": (float, "a number > 0", lambda v: v > 0 and math.isfinite(v)),
    "evaluation.threshold": (float, "a number in (0, 1)", lambda v: 0 < v < 1),
    "evaluation.personal-epochs": (int, "an integer in [0, 100]: local fine-tuning epochs "
                                   "before the personalised evaluation (0: off)",
                                   lambda v: 0 <= v <= 100),
    "evaluation.personal-lr": (float, "a number >= 0 (0: train.lr)",
                               lambda v: v >= 0 and math.isfinite(v)),
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
}

KNOWN_KEYS = frozenset(_SCHEMA)


def _coerce(key: str, value: Any) -> Any:
    typ, valid, check = _SCHEMA[key]
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


def parse_run_config(raw: dict[str, Any]) -> RunConfig:
    """Validate a flattened run config and build the typed :class:`RunConfig`.

    Raises ``ConfigError`` naming the first unknown key (with a suggestion), missing key,
    or invalid value (with what would be valid).
    """
    for key in raw:
        if key not in _SCHEMA:
            close = difflib.get_close_matches(key, sorted(_SCHEMA), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
    missing = sorted(KNOWN_KEYS - set(raw))
    if missing:
        raise ConfigError(
            f"config keys missing: {missing}; defaults live in pyproject.toml "
            "[tool.flwr.app.config]"
        )
    v = {key: _coerce(key, value) for key, value in raw.items()}

    def section(prefix: str, cls: type) -> Any:
        fields = {
            k[len(prefix) + 1:].replace("-", "_"): val
            for k, val in v.items() if k.startswith(prefix + ".")
        }
        return cls(**fields)

    privacy = section("privacy", PrivacyConfig)
    task, model = TaskName(v["task"]), v["model.name"]
    if model not in TASK_MODELS[task]:
        raise ConfigError(f"model.name={model!r} does not fit task={task.value!r}; valid for this "
                          f"task: {', '.join(TASK_MODELS[task])}")
    data = section("data", DataConfig)
    if task is TaskName.TABULAR and data.manifest and not data.schema:
        raise ConfigError("task='tabular' with data.manifest needs data.schema: the "
                          "consortium's JSON schema file (label, features with types, "
                          "sensitive columns); with neither, the built-in synthetic cohort")
    strategy = section("strategy", StrategyConfig)
    if privacy.central_noise_multiplier > 0 and strategy.fraction_train < 1:
        raise ConfigError("privacy.central-noise-multiplier > 0 needs strategy.fraction-train "
                          "= 1: central DP's noise is calibrated to every site taking part")
    if task is TaskName.HEART_DISEASE and data.partition != "natural":
        raise ConfigError(f"data.partition={data.partition!r} does not apply to task="
                          "'heart-disease': its sites are the four hospitals (use 'natural', "
                          "or task='tabular' to re-partition a table)")
    return RunConfig(
        num_server_rounds=v["num-server-rounds"],
        seed=v["seed"],
        task=task,
        device=v["device"],
        output_dir=v["output-dir"],
        run_name=v["run-name"],
        state_dir=v["state-dir"],
        resume_from=v["resume-from"],
        model=section("model", ModelConfig),
        train=section("train", TrainConfig),
        privacy=privacy,
        preprocessing=section("preprocessing", PreprocessingConfig),
        data=data,
        evaluation=section("evaluation", EvaluationConfig),
        strategy=strategy,
        attack=section("attack", AttackConfig),
        transport=section("transport", TransportConfig),
    )
