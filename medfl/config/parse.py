"""Parse Flower's flattened ``run_config`` once into a :class:`RunConfig`."""

from __future__ import annotations

import difflib
from typing import Any

from medfl.config.image_size import with_effective_image_size
from medfl.config.options import TASK_MODELS, TaskName
from medfl.config.schema import KNOWN_KEYS, SCHEMA, coerce
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
from medfl.errors import ConfigError

__all__ = ["parse_recorded_config", "parse_run_config"]


def parse_run_config(raw: dict[str, Any], *, device: str | None = None) -> RunConfig:
    """Validate a flattened run config and build the typed :class:`RunConfig`.

    ``data.image_size`` is the size the run uses: ``data.cpu-image-size`` when the run's
    device is the CPU and that is smaller (``medfl.config.image_size``). ``device``
    (``"cpu"`` or ``"cuda"``) says where the run trains; None: ``device`` resolved in this
    process (``auto``: a visible CUDA GPU, else the CPU).

    Raises ``ConfigError`` naming the first unknown key (with a suggestion), missing key,
    or invalid value (with what would be valid).
    """
    _check_keys(raw)
    values = {key: coerce(key, value) for key, value in raw.items()}

    def section(prefix: str, cls: type) -> Any:
        fields = {
            k[len(prefix) + 1:].replace("-", "_"): val
            for k, val in values.items() if k.startswith(prefix + ".")
        }
        return cls(**fields)

    cfg = RunConfig(
        num_server_rounds=values["num-server-rounds"],
        seed=values["seed"],
        task=TaskName(values["task"]),
        device=values["device"],
        output_dir=values["output-dir"],
        run_name=values["run-name"],
        state_dir=values["state-dir"],
        resume_from=values["resume-from"],
        model=section("model", ModelConfig),
        train=section("train", TrainConfig),
        privacy=section("privacy", PrivacyConfig),
        preprocessing=section("preprocessing", PreprocessingConfig),
        data=section("data", DataConfig),
        evaluation=section("evaluation", EvaluationConfig),
        strategy=section("strategy", StrategyConfig),
        attack=section("attack", AttackConfig),
        transport=section("transport", TransportConfig),
        secure_aggregation=section("secure-aggregation", SecureAggregationConfig),
    )
    _check_cross_fields(cfg)
    _check_secure_aggregation(cfg)
    return with_effective_image_size(cfg, device=device)


def parse_recorded_config(record: dict[str, Any]) -> RunConfig:
    """The config of a finished run from its ``config.json`` (``record``): its raw run
    config, with the image size the run used, wherever it is read again (a report rebuilt
    on a machine without the run's GPU must not shrink the images the model was trained on).
    """
    reduced = record.get("config", {}).get("data", {}).get("reduced_from", 0)
    return parse_run_config(record["run_config"], device="cpu" if reduced else "cuda")


def _check_keys(raw: dict[str, Any]) -> None:
    """Every key known (else a "did you mean"), none missing."""
    for key in raw:
        if key not in SCHEMA:
            close = difflib.get_close_matches(key, sorted(SCHEMA), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint}")
    missing = sorted(KNOWN_KEYS - set(raw))
    if missing:
        raise ConfigError(
            f"config keys missing: {missing}; defaults live in pyproject.toml "
            "[tool.flwr.app.config]"
        )


def _check_cross_fields(cfg: RunConfig) -> None:
    """The rules that tie one key's valid values to another's."""
    task, model, data = cfg.task, cfg.model.name, cfg.data
    if model not in TASK_MODELS[task]:
        raise ConfigError(f"model.name={model!r} does not fit task={task.value!r}; valid for this "
                          f"task: {', '.join(TASK_MODELS[task])}")
    if task is TaskName.TABULAR and data.manifest and not data.schema:
        raise ConfigError("task='tabular' with data.manifest needs data.schema: the "
                          "consortium's JSON schema file (label, features with types, "
                          "sensitive columns); with neither, the built-in synthetic cohort")
    if cfg.privacy.central_noise_multiplier > 0 and cfg.strategy.fraction_train < 1:
        raise ConfigError("privacy.central-noise-multiplier > 0 needs strategy.fraction-train "
                          "= 1: central DP's noise is calibrated to every site taking part")
    if task is TaskName.HEART_DISEASE and data.partition != "natural":
        raise ConfigError(f"data.partition={data.partition!r} does not apply to task="
                          "'heart-disease': its sites are the four hospitals (use 'natural', "
                          "or task='tabular' to re-partition a table)")


#: Strategies that must see each site's update (a median, a trimmed mean, Krum's
#: distances): secure aggregation shows the server only the sum.
NEEDS_SINGLE_UPDATES = ("fedmedian", "fedtrimmedavg", "krum", "multikrum")


def _check_secure_aggregation(cfg: RunConfig) -> None:
    """What cannot work when the server sees only the sum of the updates."""
    sa, p = cfg.secure_aggregation, cfg.privacy
    if p.mode == "distributed" and not (sa.enabled and p.enabled):
        raise ConfigError("privacy.mode='distributed' needs secure-aggregation.enabled = true "
                          "and privacy.enabled = true: each site adds only a share of the "
                          "noise, which protects a patient only inside the secure sum")
    if not sa.enabled:
        return
    if cfg.strategy.name in NEEDS_SINGLE_UPDATES:
        raise ConfigError(f"strategy.name={cfg.strategy.name!r} needs each site's update, "
                          "which secure-aggregation.enabled hides from the server; valid "
                          "with it: fedavg, fedprox, fedavgm, fedadam, fedyogi, fedadagrad")
    if cfg.transport.compression != "none":
        raise ConfigError("transport.compression must be 'none' with secure-aggregation."
                          "enabled: SecAgg+ quantises the update itself")
    if p.central_noise_multiplier > 0:
        raise ConfigError("privacy.central-noise-multiplier > 0 clips each site's update at "
                          "the server, which secure-aggregation.enabled hides; use "
                          "privacy.mode = 'distributed' instead")
    if cfg.strategy.min_round_nodes < 3:
        raise ConfigError("secure-aggregation.enabled needs strategy.min-round-nodes >= 3: "
                          "a sum of one site's update is that update, and in a sum of two "
                          "each is hidden by one mask (Flower seeds it from 32 bits)")
    if p.mode == "distributed" and (cfg.train.optimizer != "sgd" or cfg.train.momentum):
        raise ConfigError("privacy.mode='distributed' needs train.optimizer='sgd' and "
                          "train.momentum=0: the sites' noise adds up only if each update "
                          "is linear in its noisy gradient")
