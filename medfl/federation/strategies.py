"""``strategy.name`` -> one of Flower's strategies, wrapped with MedFL's recording and
update validation (:class:`medfl.federation.recording.Recording`). Nothing is
re-implemented: aggregation, server optimisers and robust rules are Flower's own.

| name | Flower class | parameters from the run config |
| --- | --- | --- |
| fedavg | FedAvg | - |
| fedprox | FedProx | ``strategy.proximal-mu`` (sent to the sites, which add the term) |
| fedavgm | FedAvgM | ``strategy.server-momentum`` |
| fedadam, fedyogi, fedadagrad | FedAdam, FedYogi, FedAdagrad | ``strategy.server-lr`` (eta) |
| fedmedian | FedMedian | - |
| fedtrimmedavg | FedTrimmedAvg | ``strategy.trim-beta`` |
| krum, multikrum | Krum, MultiKrum | ``strategy.num-malicious`` |
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flwr.serverapp.strategy import (
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedMedian,
    FedProx,
    FedTrimmedAvg,
    FedYogi,
    Krum,
    MultiKrum,
)

from medfl.config import RunConfig
from medfl.federation.recording import CheckpointHook, Recording
from medfl.privacy.mechanisms import monitor_rounds

BASES: dict[str, type[FedAvg]] = {
    "fedavg": FedAvg, "fedprox": FedProx, "fedavgm": FedAvgM, "fedadam": FedAdam,
    "fedyogi": FedYogi, "fedadagrad": FedAdagrad, "fedmedian": FedMedian,
    "fedtrimmedavg": FedTrimmedAvg, "krum": Krum, "multikrum": MultiKrum,
}


def _parameters(cfg: RunConfig, num_sites: int) -> dict[str, Any]:
    s = cfg.strategy
    by_name: dict[str, dict[str, Any]] = {
        "fedprox": {"proximal_mu": s.proximal_mu},
        "fedavgm": {"server_momentum": s.server_momentum},
        "fedadam": {"eta": s.server_lr},
        "fedyogi": {"eta": s.server_lr},
        "fedadagrad": {"eta": s.server_lr},
        "fedtrimmedavg": {"beta": s.trim_beta},
        "krum": {"num_malicious_nodes": s.num_malicious},
        "multikrum": {"num_malicious_nodes": s.num_malicious,
                      "num_nodes_to_select": max(1, num_sites - s.num_malicious)},
    }
    return by_name.get(s.name, {})


def build_strategy(cfg: RunConfig, *, num_sites: int,
                   on_round: Callable[[dict[str, Any]], None],
                   node_sites: dict[int, str] | None, weighted_by_key: str,
                   on_checkpoint: CheckpointHook | None = None) -> Recording:
    """The run's strategy: Flower's class for ``strategy.name`` with the recording mixin."""
    base = BASES[cfg.strategy.name]
    cls = type(f"Recording{base.__name__}", (Recording, base), {})
    s = cfg.strategy
    # A round needs ``min_round_nodes`` sites, never more than the federation started with.
    per_round = min(s.min_round_nodes, num_sites)
    strategy: Recording = cls(
        on_round=on_round, node_sites=node_sites, norm_ratio=s.norm_ratio,
        min_round_nodes=per_round, round_timeout=s.round_timeout,
        on_checkpoint=on_checkpoint, compression=cfg.transport.compression,
        threshold=cfg.evaluation.threshold,
        monitor_rounds=monitor_rounds(cfg.num_server_rounds, cfg.evaluation.monitor_every),
        fraction_train=s.fraction_train, fraction_evaluate=s.fraction_evaluate,
        min_train_nodes=per_round, min_evaluate_nodes=per_round,
        min_available_nodes=per_round, weighted_by_key=weighted_by_key,
        **_parameters(cfg, num_sites))
    return strategy
