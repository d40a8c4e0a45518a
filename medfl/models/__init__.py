"""One model registry: ``build_model`` is used by the server, the clients and serving alike."""

from __future__ import annotations

import torch
from torch import nn

from medfl.config import MODELS, ModelConfig
from medfl.errors import ConfigError

__all__ = ["MODELS", "build_model"]


def build_model(cfg: ModelConfig, *, n_features: int, n_outputs: int = 1) -> nn.Module:
    """Build an untrained model for ``n_features`` inputs and ``n_outputs`` logits.

    ``logreg`` is logistic regression (one linear layer); ``mlp`` adds one hidden ReLU
    layer of ``cfg.hidden`` units. Parameters are initialised by torch's default scheme,
    so seed torch first for reproducible weights.
    """
    if n_features < 1:
        raise ConfigError(f"n_features must be >= 1, got {n_features}")
    if cfg.name == "logreg":
        return nn.Sequential(nn.Linear(n_features, n_outputs))
    if cfg.name == "mlp":
        if cfg.hidden < 1:
            raise ConfigError(f"model.hidden must be >= 1 for model 'mlp', got {cfg.hidden}")
        return nn.Sequential(
            nn.Linear(n_features, cfg.hidden), nn.ReLU(), nn.Linear(cfg.hidden, n_outputs)
        )
    raise ConfigError(f"unknown model {cfg.name!r}; valid models are {', '.join(MODELS)}")


def state_arrays(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters and buffers by name, detached on the CPU (what is exchanged)."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
