"""Which sites the server talks to: waiting for them, sampling them, and how FedAvg
weights them."""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

from flwr.serverapp import Grid

from medfl.config import RunConfig
from medfl.errors import MedflError

if TYPE_CHECKING:
    from medfl.federation.recording import Recording


def wait_for_nodes(grid: Grid, *, minimum: int, timeout: float = 300.0) -> list[int]:
    """Block until at least ``minimum`` nodes are connected; raise after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        nodes = list(grid.get_node_ids())
        if len(nodes) >= minimum:
            return nodes
        if time.monotonic() > deadline:
            raise MedflError(
                f"only {len(nodes)} of the required {minimum} sites connected within "
                f"{timeout:.0f}s; lower strategy.min-nodes or start more SuperNodes"
            )
        time.sleep(1.0)


def sample_nodes(nodes: Iterable[int], fraction: float, *, minimum: int, seed: int
                 ) -> list[int]:
    """The nodes a one-off query goes to: all of them at ``fraction`` 1, else a sample of
    as many as Flower's strategies sample per round (``int(fraction * n)``, at least
    ``minimum``), seeded so a run is reproducible.

    A consortium of 1,000 simulated sites with 100 sampled per round asks 100 of them for
    feature statistics, not all 1,000.
    """
    ordered = sorted(nodes)
    if fraction >= 1.0:
        return ordered
    k = min(len(ordered), max(minimum, int(fraction * len(ordered))))
    return sorted(random.Random(seed).sample(ordered, k))


def final_query_nodes(cfg: RunConfig, strategy: Recording, nodes: Iterable[int]) -> list[int]:
    """The nodes asked for the audit and the final report: all of them; with sampled
    evaluation (``strategy.fraction-evaluate`` < 1), the sites that evaluated the final
    model, so the report, the audit and the final figures describe the same sites (a
    seeded sample when those are not known, as after a resume that trained no round)."""
    ordered = sorted(nodes)
    if cfg.strategy.fraction_evaluate >= 1.0:
        return ordered
    present = set(ordered)
    evaluated = sorted(n for n, name in strategy.node_sites.items()
                       if name in strategy.final_site_stats and n in present)
    return evaluated or sample_nodes(ordered, cfg.strategy.fraction_evaluate,
                                     minimum=cfg.strategy.min_round_nodes, seed=cfg.seed)


def weight_key(cfg: RunConfig) -> str:
    """FedAvg weights sites by examples, or uniformly under central DP (whose noise is
    calibrated to one site's clipped update among equally weighted sites)."""
    return "site-weight" if cfg.privacy.central_noise_multiplier > 0 else "num-examples"
