"""Central (site-level) DP: Flower's server-side fixed clipping wrapped around the
recording strategy, and the (ε, δ) it gives the global model."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping, Strategy

from medfl.config import RunConfig
from medfl.federation.recording import Recording
from medfl.privacy.dp import epsilon_from_history


class CentralDP(DifferentialPrivacyServerSideFixedClipping):
    """Flower's server-side fixed clipping, aggregating only complete rounds.

    The noise is calibrated to ``num_sampled_clients`` equally weighted sites, so a round
    in which any site refused, failed, dropped out or sent an invalid update is recorded
    and *not* aggregated (its noise would be too small for fewer sites), instead of being
    skipped silently as the wrapper alone does. Updates are validated before clipping.
    """

    def __init__(self, strategy: Recording, *, noise_multiplier: float,
                 clipping_norm: float, num_sampled_clients: int) -> None:
        super().__init__(strategy, noise_multiplier, clipping_norm, num_sampled_clients)
        self.recording = strategy

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Record and validate the round, then clip, aggregate and noise it if complete."""
        run_round = self.recording.run_round(server_round)
        accepted = self.recording.record_train(run_round, list(replies))
        valid = [r for r in accepted if not r.has_error()]
        if len(valid) != self.num_sampled_clients:
            self.recording.unrecord_round(
                run_round, "central DP needs every site's valid update; "
                           f"{len(valid)} of {self.num_sampled_clients}")
            return None, None
        # Flower's round number: the wrapper keys its accounting by it, and the recording
        # strategy, seeing the round already recorded, only aggregates.
        return super().aggregate_train(server_round, valid)


def with_central_dp(strategy: Recording, cfg: RunConfig, *, num_sites: int) -> Strategy:
    """Wrap ``strategy`` in server-side fixed-clipping central DP, if configured."""
    if cfg.privacy.central_noise_multiplier <= 0:
        return strategy
    return CentralDP(strategy, noise_multiplier=cfg.privacy.central_noise_multiplier,
                     clipping_norm=cfg.privacy.central_clipping_norm,
                     num_sampled_clients=num_sites)


def central_dp_report(cfg: RunConfig, strategy: Recording) -> dict[str, Any] | None:
    """Site-level (ε, δ) of the global model under central DP, from Opacus' accountant.

    Each aggregated round is one Gaussian mechanism on the sum of the sites' clipped
    updates (sensitivity: one site's clipping norm), with every site taking part (no
    sampling amplification): history ``[(z, 1, rounds)]``.
    """
    z = cfg.privacy.central_noise_multiplier
    if z <= 0:
        return None
    rounds = len({r for rs in strategy.rounds_trained.values() for r in rs})
    history = [(z, 1.0, rounds)] if rounds else []
    return {
        "unit": "site (a whole hospital's data)",
        "protects_against": "anyone who sees the global model; not the server, which "
                            "sees each site's update",
        "noise_multiplier": z, "clipping_norm": cfg.privacy.central_clipping_norm,
        "rounds": rounds, "delta": cfg.privacy.target_delta,
        "accountant": cfg.privacy.accountant,
        "epsilon": epsilon_from_history(history, delta=cfg.privacy.target_delta,
                                        accountant=cfg.privacy.accountant),
    }
