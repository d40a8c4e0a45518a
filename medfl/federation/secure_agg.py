"""Secure aggregation of the sites' training updates: Flower's SecAgg+ under the Message API.

Flower 1.42 ships SecAgg+ as a legacy workflow (``SecAggPlusWorkflow``, driven by a legacy
``Strategy`` through a ``LegacyContext``) and a client mod (``secaggplus_mod``). MedFL's
strategies use the Message API, so :class:`SecureTrainGrid` stands between the strategy and
the grid: a train round's messages go out through Flower's workflow, unchanged, with two
adapters around it (the legacy strategy that hands the workflow MedFL's own messages and
keeps the unmasked sum, and a tap on the grid that keeps the sites' clear metrics). The
protocol itself, its masks, shares, quantisation and dropout recovery are Flower's.

What the server learns of a round: the uniform mean of the contributing sites' updates
(each the site's new weights minus the global model, clipped to ``clipping-range`` and
stochastically quantised to ``quantization-range`` levels by the site), which sites
contributed, and each site's clear training metrics (its example count and DP accounting).
Each contributing site's reply, as the strategy sees it, carries the same aggregated model,
so FedAvg (and the server optimisers on top of it) aggregate exactly that.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Error, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.common import (
    FitIns,
    FitRes,
    Parameters,
    Scalar,
    parameters_to_ndarrays,
)
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.client_manager import ClientManager, SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.server_config import ServerConfig
from flwr.server.strategy import Strategy
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from medfl.config import SecureAggregationConfig
from medfl.federation.records import array_values

logger = logging.getLogger(__name__)

#: Flower's mask modulus (its default): sites x quantization-range must stay below it.
MODULUS = 2 ** 32
#: Every site has the same weight (the mean): a weight of 1 out of 1 keeps the masked
#: vector at full quantisation precision (Flower scales by weight / max-weight first).
MAX_WEIGHT = 1.0
#: ``num-shares = 0``: every sampled site, at most this many (SecAgg+ needs O(log n)).
AUTO_MAX_SHARES = 41
#: The error a site's train reply carries when the protocol did not complete for it.
ERROR_SECAGG = 1020


def protocol_settings(sa: SecureAggregationConfig, num_sites: int) -> dict[str, Any]:
    """The SecAgg+ setup for ``num_sites`` sampled sites, as Flower's workflow takes it.

    Raises ``ValueError`` when the sum could overflow the modulus (``num_sites`` x
    ``quantization-range`` must stay below 2^32)."""
    if num_sites * sa.quantization_range >= MODULUS:
        raise ValueError(
            f"{num_sites} sites x secure-aggregation.quantization-range="
            f"{sa.quantization_range} overflows Flower's 2^32 modulus; use a range below "
            f"{MODULUS // num_sites}")
    shares, threshold = share_plan(sa, num_sites)
    every = shares == num_sites
    return {"num_shares": 1.0 if every else shares,
            "reconstruction_threshold": threshold / shares if every else threshold,
            "clipping_range": sa.clipping_range, "quantization_range": sa.quantization_range,
            "modulus_range": MODULUS, "max_weight": MAX_WEIGHT}


def share_plan(sa: SecureAggregationConfig, num_sites: int) -> tuple[int, int]:
    """(shares per site, shares needed to unmask) for ``num_sites`` sampled sites, as
    Flower's workflow ends up with them from :func:`protocol_settings`: a site checks the
    setup it receives against this, so the server cannot lower either."""
    shares = min(sa.num_shares or AUTO_MAX_SHARES, num_sites)
    if shares < num_sites and shares % 2 == 0:
        shares += 1  # SecAgg+ wants an odd number (Flower would fix it after announcing it)
    threshold = max(2, round(sa.reconstruction_threshold * shares))
    if shares < num_sites:  # Flower: an integer threshold below the number of shares
        threshold = min(threshold, shares - 1)
    return shares, threshold


class _LegacyBridge(Strategy):
    """The legacy strategy the workflow asks: it samples the round's messages' sites and
    keeps the unmasked aggregate. Nothing else of the legacy API is used."""

    def __init__(self, grid: Any, nodes: Iterable[int], run_id: int) -> None:
        self.proxies = [GridClientProxy(node, grid, run_id) for node in nodes]
        self.aggregate: list[np.ndarray] | None = None

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        """Unused: the Message-API strategy holds the model."""
        return None

    def configure_fit(self, server_round: int, parameters: Parameters,
                      client_manager: ClientManager) -> list[tuple[ClientProxy, FitIns]]:
        """Every site the strategy sampled; the content is replaced by MedFL's message."""
        return [(proxy, FitIns(Parameters([], ""), {})) for proxy in self.proxies]

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]],
                      failures: Any) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Keep the unmasked mean (every result carries it)."""
        if results:
            self.aggregate = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}

    def configure_evaluate(self, server_round: int, parameters: Parameters,
                           client_manager: ClientManager) -> list[Any]:
        """Unused."""
        return []

    def aggregate_evaluate(self, server_round: int, results: Any, failures: Any
                           ) -> tuple[float | None, dict[str, Scalar]]:
        """Unused."""
        return None, {}

    def evaluate(self, server_round: int, parameters: Parameters) -> None:
        """Unused."""
        return None


class _Workflow(SecAggPlusWorkflow):
    """Flower's SecAgg+ workflow, sending each site MedFL's own train message content (the
    model arrays and the round's config) instead of a legacy ``FitIns``."""

    def __init__(self, contents: dict[int, RecordDict], **settings: Any) -> None:
        super().__init__(**settings)
        self.contents = contents

    def setup_stage(self, grid: Any, context: LegacyContext, state: Any) -> bool:
        """Flower's setup stage, then MedFL's message content per site."""
        ok = super().setup_stage(grid, context, state)
        state.nid_to_fitins = {nid: RecordDict(dict(self.contents[nid]))
                               for nid in state.nid_to_fitins}
        return ok


class _Tap:
    """The grid as the workflow sees it: every reply is kept by stage and site."""

    def __init__(self, grid: Any) -> None:
        self.grid = grid
        self.replies: dict[str, dict[int, Message]] = {}

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """Forward, and keep each reply under its stage."""
        sent = list(messages)
        stages = {m.metadata.dst_node_id: str(m.content.config_records[RECORD_KEY_CONFIGS]
                                              [Key.STAGE]) for m in sent}
        replies = list(self.grid.send_and_receive(sent, timeout=timeout))
        for reply in replies:
            node = reply.metadata.src_node_id
            self.replies.setdefault(stages.get(node, "?"), {})[node] = reply
        return replies

    def first_error(self, node: int) -> Error | None:
        """The first error ``node`` replied with, at any stage."""
        for stage in Stage.all():
            reply = self.replies.get(stage, {}).get(node)
            if reply is not None and reply.has_error():
                return reply.error
        return None


@dataclass
class SecureSum:
    """What one SecAgg+ protocol run gave the server.

    ``mean``: the uniform mean of the contributing sites' vectors (None when the protocol
    halted); ``contributed``: each contributing site's "collect masked vectors" reply (its
    clear records: ``metrics``, ``site``); ``errors``: the first error each other site sent.
    """

    mean: list[np.ndarray] | None
    contributed: dict[int, Message]
    errors: dict[int, Error | None]

    @property
    def count(self) -> int:
        """How many sites' vectors the mean is over."""
        return len(self.contributed)


def secure_sum(grid: Any, messages: list[Message], sa: SecureAggregationConfig, *,
               run_id: int, timeout: float | None) -> SecureSum:
    """Run Flower's SecAgg+ over ``messages`` (train-type, one per site): each site's
    handler answers its message's content, and its vector is masked by Flower's mod."""
    by_node = {m.metadata.dst_node_id: m for m in messages}
    tap, bridge = _Tap(grid), _LegacyBridge(grid, by_node, run_id)
    manager = SimpleClientManager()
    for proxy in bridge.proxies:
        manager.register(proxy)
    config = messages[0].content.config_records["config"]
    server_round = int(cast(int, config.get("server-round", 0)))
    state = RecordDict({MAIN_CONFIGS_RECORD: ConfigRecord({WorkflowKey.CURRENT_ROUND:
                                                           server_round}),
                        MAIN_PARAMS_RECORD: ArrayRecord()})
    context = LegacyContext(Context(run_id=run_id, node_id=0, node_config={}, state=state,
                                    run_config={}),
                            config=ServerConfig(num_rounds=max(1, server_round)),
                            strategy=bridge, client_manager=manager)
    workflow = _Workflow({n: m.content for n, m in by_node.items()}, timeout=timeout,
                         **protocol_settings(sa, len(by_node)))
    try:
        workflow(cast(Any, tap), context)
    except Exception as exc:  # noqa: BLE001 - e.g. a site's malformed shares: no sum, no crash
        logger.error("secure aggregation, round %d: the protocol failed (%s); the round is "
                     "not aggregated", server_round, type(exc).__name__)
        bridge.aggregate = None
    contributed = {n: r for n, r in tap.replies.get(Stage.COLLECT_MASKED_VECTORS, {}).items()
                   if not r.has_error()}
    if bridge.aggregate is None:
        contributed = {}
    logger.info("secure aggregation, round %d: %d of %d sites in the sum", server_round,
                len(contributed), len(by_node))
    return SecureSum(bridge.aggregate if contributed else None, contributed,
                     {n: tap.first_error(n) for n in by_node if n not in contributed})


def secure_train_round(grid: Any, messages: list[Message], sa: SecureAggregationConfig, *,
                       run_id: int, timeout: float | None) -> list[Message]:
    """Run one train round through SecAgg+; one reply per message, as the strategy expects.

    A contributing site's reply carries the aggregated model (the global model plus the
    mean update) and its own clear metrics; any other site's reply is an error: the one it
    sent, or ``ERROR_SECAGG`` when the protocol halted (fewer sites than its threshold)."""
    result = secure_sum(grid, messages, sa, run_id=run_id, timeout=timeout)
    model = _aggregated_model(messages[0], result.mean) if result.mean is not None else None
    return [_reply(msg, result.contributed.get(msg.metadata.dst_node_id), model,
                   result.errors.get(msg.metadata.dst_node_id)) for msg in messages]


def _aggregated_model(msg: Message, mean_update: list[np.ndarray] | None) -> ArrayRecord:
    """The global model the strategy sent plus the unmasked mean update, in its dtypes."""
    sent = msg.content.array_records["arrays"]
    names = list(sent.keys())
    if mean_update is None or len(mean_update) != len(names):
        raise ValueError("the unmasked sum does not match the model's arrays")
    out = {}
    for name, delta in zip(names, mean_update, strict=True):
        base = array_values(sent[name])
        out[name] = Array((base.astype(np.float64) + delta.reshape(base.shape))
                          .astype(base.dtype))
    return ArrayRecord(out)


def _reply(msg: Message, masked: Message | None, model: ArrayRecord | None,
           error: Error | None) -> Message:
    if masked is not None and model is not None:
        content = RecordDict({"arrays": model, "metrics": masked.content["metrics"],
                              "site": masked.content["site"]})
        return Message(content, reply_to=msg)
    if error is None:
        error = Error(code=ERROR_SECAGG, reason="SecureAggregationHalted: the round's sum "
                      "could not be unmasked (fewer sites than the reconstruction threshold)")
    return Message(error, reply_to=msg)


class SecureTrainGrid:
    """The grid a strategy drives: train rounds through SecAgg+, everything else as is."""

    def __init__(self, grid: Any, sa: SecureAggregationConfig, *, run_id: int) -> None:
        self.grid, self.sa, self.run_id = grid, sa, run_id

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None
                         ) -> list[Message]:
        """A train round's messages go through :func:`secure_train_round`."""
        sent = list(messages)
        if not sent or sent[0].metadata.message_type != MessageType.TRAIN:
            return list(self.grid.send_and_receive(sent, timeout=timeout))
        return secure_train_round(self.grid, sent, self.sa, run_id=self.run_id,
                                  timeout=timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.grid, name)
