"""FedBN at the site: normalisation-layer parameters stay local (``strategy.fedbn``).

FedBN (Li et al., ICLR 2021) keeps each site's normalisation layers out of the shared
model, which helps when hospitals differ in scanner, protocol or intensity. Flower has no
FedBN class, and none is needed: aggregation is the configured strategy's own. What
changes is the site. Before it trains or evaluates, it puts its own normalisation entries
back into the global model it received; after training it keeps the new ones. The reply
still holds every array (the egress contract checks names and shapes), so the server's
copy of the normalisation entries is the strategy's aggregate of the sites' own. Sites
never load it; it only serves the exported model (``/predict``) and a site's first round.

The local entries live in the run's node state (``Context.state``), like the DP plan: a
SuperNode that restarts starts again from the aggregate for its next round.
"""

from __future__ import annotations

import functools

import torch
from flwr.app import ArrayRecord, RecordDict
from torch import nn

from medfl import tasks
from medfl.config import RunConfig
from medfl.errors import ConfigError
from medfl.federation.records import from_array_record

STATE_KEY = "fedbn-local-norm"
NORM_TYPES = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def norm_keys(model: nn.Module) -> frozenset[str]:
    """State-dict names of every normalisation layer's parameters and buffers."""
    keys: set[str] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, NORM_TYPES):
            keys.update(f"{prefix}.{name}" if prefix else name
                        for name, _ in [*module.named_parameters(recurse=False),
                                        *module.named_buffers(recurse=False)])
    return frozenset(keys)


def check_fedbn(cfg: RunConfig) -> None:
    """Raise ``ConfigError`` when ``strategy.fedbn`` is on for a model without norm layers."""
    if cfg.strategy.fedbn:
        _task_norm_keys(cfg)


@functools.lru_cache(maxsize=8)
def _task_norm_keys(cfg: RunConfig) -> frozenset[str]:
    keys = norm_keys(tasks.task_for(cfg).build_model())
    if not keys:
        raise ConfigError(f"strategy.fedbn=true needs a model with normalisation-layer "
                          f"parameters; model {cfg.model.name!r} has none (valid: "
                          "resnet, densenet121, unet, or strategy.fedbn=false)")
    return keys


def with_local_norm(cfg: RunConfig, weights: dict[str, torch.Tensor],
                    state: RecordDict) -> dict[str, torch.Tensor]:
    """The global ``weights`` with this site's own normalisation entries, once it has them."""
    if not cfg.strategy.fedbn or STATE_KEY not in state.array_records:
        return weights  # off, or this site's first round: start from the aggregate
    local = from_array_record(state.array_records[STATE_KEY])  # norm entries only
    return {k: local.get(k, v) for k, v in weights.items()}


def keep_local_norm(cfg: RunConfig, weights: dict[str, torch.Tensor], state: RecordDict) -> None:
    """Remember the normalisation entries of this site's freshly trained ``weights``."""
    if cfg.strategy.fedbn:
        keys = _task_norm_keys(cfg)
        state[STATE_KEY] = ArrayRecord({k: v for k, v in weights.items() if k in keys})
