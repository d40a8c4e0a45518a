"""The typed run configuration: one frozen dataclass per config table, and the whole."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from medfl.config.options import TaskName

__all__ = ["AttackConfig", "DataConfig", "EvaluationConfig", "ModelConfig", "PreprocessingConfig",
           "PrivacyConfig", "RunConfig", "StrategyConfig", "TrainConfig", "TransportConfig"]


def _comma_list(text: str) -> tuple[str, ...]:
    """``"a, b,"`` -> ``("a", "b")``: a config value listing names."""
    return tuple(x.strip() for x in text.split(",") if x.strip())


@dataclass(frozen=True)
class ModelConfig:
    """``model.*``: the architecture and its size (``medfl.models``)."""

    name: str
    hidden: int
    width: int


@dataclass(frozen=True)
class TrainConfig:
    """``train.*``: each site's local training (epochs, batch, optimiser, loss)."""

    local_epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    weight_decay: float
    #: a fixed weight, or "auto": from the consortium's prevalence (medfl.data.prevalence)
    pos_weight: float | str
    augment: str
    #: the forward pass's precision: fp32, bf16 (autocast), auto (bf16 on a GPU that has it)
    precision: str
    #: channels-last memory format for image models: auto (on a GPU), true, false
    channels_last: str
    #: DP-SGD batches processed in parts of at most this many rows (0: whole), one step
    max_physical_batch_size: int


@dataclass(frozen=True)
class PrivacyConfig:
    """``privacy.*``: DP-SGD, accounting, k threshold, lifetime budget, central DP."""

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
    #: ε over this run's test-row releases (evaluation, report), per site; 0: exact
    test_epsilon: float
    #: the final report's share of the test-set budget (the rest: monitoring rounds)
    report_share: float
    grad_sample_mode: str
    #: ``local``: each site adds all its noise; ``distributed``: each site adds a share,
    #: under secure aggregation (one DP-SGD step a round; PRIVACY.md)
    mode: str
    central_noise_multiplier: float
    central_clipping_norm: float


@dataclass(frozen=True)
class PreprocessingConfig:
    """``preprocessing.*``: feature scaling, and the noise on shared moments."""

    scaling: str
    stats_noise_multiplier: float


@dataclass(frozen=True)
class DataConfig:
    """``data.*``: where the data are, how images are prepared and sites split."""

    manifest: str
    schema: str
    labels: str
    image_size: int
    intensity: str
    window_center: float
    window_width: float
    #: with the file's own window: which of its display presets (VOI LUTs, then windows)
    window_preset: int
    test_fraction: float
    partition: str
    dirichlet_alpha: float
    #: on a CPU-only run, images are this size instead of ``image_size`` when smaller (0: off)
    cpu_image_size: int
    #: the configured ``data.image-size`` when the CPU reduction replaced it, else 0
    #: (set by ``parse_run_config``; ``image_size`` is always the size the run uses)
    reduced_from: int = 0

    @property
    def label_names(self) -> tuple[str, ...]:
        """``labels`` split at commas: (negative, positive) class names."""
        return _comma_list(self.labels)


@dataclass(frozen=True)
class EvaluationConfig:
    """``evaluation.*``: operating threshold and personalised evaluation."""

    threshold: float
    #: personalised evaluation: local fine-tuning epochs before a second evaluation (0: off)
    personal_epochs: int
    #: the fine-tuning's learning rate (0: ``train.lr``)
    personal_lr: float
    #: a noisy monitoring evaluation every this many rounds and at the last (0: none)
    monitor_every: int
    #: the report's second operating point: where the pooled sensitivity reaches this
    operating_sensitivity: float = 0.8


@dataclass(frozen=True)
class StrategyConfig:
    """``strategy.*``: the aggregation strategy and round participation."""

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
    """``transport.*``: how a site's update is encoded for the wire."""

    #: ``none``: float32 weights; ``float16``: half-precision weights; ``int8``: the update
    #: (weights minus the global model) quantised to 8 bits per value, one scale per array
    compression: str


@dataclass(frozen=True)
class SecureAggregationConfig:
    """``secure-aggregation.*``: Flower's SecAgg+ for model updates and the report."""

    enabled: bool
    #: neighbours per site (0: every sampled site, at most 41)
    num_shares: int
    #: fraction of a site's shares needed to unmask it
    reconstruction_threshold: float
    #: each update value is clipped to [-range, range] before quantisation
    clipping_range: float
    #: integer levels per value (a power of two)
    quantization_range: int


@dataclass(frozen=True)
class AttackConfig:
    """Simulation only: sites that send a corrupted update every round."""

    sites: str
    kind: str
    scale: float

    @property
    def site_names(self) -> tuple[str, ...]:
        """``sites`` split at commas (empty: no attacker)."""
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
    secure_aggregation: SecureAggregationConfig

    @property
    def is_tabular(self) -> bool:
        """Heart disease (embedded) or a consortium's own table (``task = "tabular"``)."""
        return self.task.is_tabular

    def to_dict(self) -> dict[str, Any]:
        """Nested plain dicts (``dataclasses.asdict``), e.g. for ``config.json``."""
        return asdict(self)
