"""The site's side of secure aggregation: Flower's ``secaggplus_mod`` around the train
handler, with the checks a site makes for itself.

The train handler is unchanged: it trains and replies with the new weights. Inside the
protocol's "collect masked vectors" stage, this mod turns that reply into the update
(new weights minus the global model the site received) in Flower's legacy ``FitRes`` form,
which ``secaggplus_mod`` clips, quantises and masks; the model arrays never leave in the
clear. The site's clear training metrics (example count, DP accounting) and its name stay
beside the masked vector, as in a plain round.

The site, not the server, decides (the run config is the consortium's agreement; the
server's protocol messages are untrusted):

* a run with ``secure-aggregation.enabled`` (or ``privacy.mode = "distributed"``) gets no
  update outside the protocol, and a run without it no protocol messages;
* the setup must use the run's clipping and quantisation ranges and Flower's modulus, and
  name at least ``strategy.min-round-nodes`` sites (the fewest a round is aggregated with,
  which distributed DP's noise share is calibrated to);
* a site does not help unmask a sum of fewer than that many contributing sites (of those
  it can see: its SecAgg+ neighbours), nor answer an unmask that names a site twice (a
  padded count, or one site as both contributing and dropped: both of its secrets).

Flower's own checks (stage order, key uniqueness, ciphertext sources) run inside
``secaggplus_mod``; any failure is answered with a fixed error naming the stage only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Context, Error, Message, MetricRecord
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from medfl.config import RunConfig, parse_run_config
from medfl.evaluation.release_sum import VALUE_KEYS, ReportLayout, split_release
from medfl.federation.records import array_values
from medfl.federation.secure_agg import ERROR_SECAGG, MAX_WEIGHT, MODULUS, share_plan
from medfl.federation.secure_report import is_report_request
from medfl.privacy.egress import check_metrics
from medfl.privacy.secagg_contract import ProtocolReply, check_protocol_reply
from medfl.wire import ReplyBounds

logger = logging.getLogger(__name__)

Handler = Callable[[Message, Context], Message]


class _HandlerRefused(Exception):
    """The train handler answered with an error: that error is the site's reply."""

    def __init__(self, reply: Message) -> None:
        super().__init__("the train handler refused")
        self.reply = reply


def _refuse(msg: Message, reason: str) -> Message:
    logger.error("secure aggregation: %s", reason)
    return Message(Error(code=ERROR_SECAGG, reason="SecureAggregationRefused: " + reason),
                   reply_to=msg)


def secure_required(cfg: RunConfig) -> bool:
    """Whether this run's updates may leave only inside the SecAgg+ protocol."""
    return cfg.secure_aggregation.enabled or cfg.privacy.mode == "distributed"


def _setup_problem(cfg: RunConfig, configs: ConfigRecord) -> str | None:
    """What is wrong with a setup the server proposes, or None."""
    sa, m = cfg.secure_aggregation, cfg.strategy.min_round_nodes
    expected = {Key.CLIPPING_RANGE: sa.clipping_range,
                Key.TARGET_RANGE: sa.quantization_range, Key.MOD_RANGE: MODULUS,
                Key.MAX_WEIGHT: MAX_WEIGHT}
    for key, value in expected.items():
        if configs.get(key) != value:
            return (f"the setup's {key} differs from the run's secure-aggregation settings "
                    f"(expected {value})")
    sample_num = configs.get(Key.SAMPLE_NUMBER)
    if not isinstance(sample_num, int) or sample_num < m:
        return (f"the setup names fewer sites than strategy.min-round-nodes={m}, the fewest "
                "a sum may hold")
    shares, threshold = share_plan(sa, sample_num)
    if (configs.get(Key.SHARE_NUMBER), configs.get(Key.THRESHOLD)) != (shares, threshold):
        return (f"the setup's {Key.SHARE_NUMBER} / {Key.THRESHOLD} differ from what the run's "
                f"secure-aggregation settings give for {sample_num} sites ({shares} / "
                f"{threshold})")
    return None


def _unmask_problem(cfg: RunConfig, configs: ConfigRecord, share_num: int,
                    node_id: int) -> str | None:
    active, dead = configs.get(Key.ACTIVE_NODE_ID_LIST), configs.get(Key.DEAD_NODE_ID_LIST)
    need = min(cfg.strategy.min_round_nodes, share_num)
    if isinstance(active, list) and isinstance(dead, list):
        named = [*active, *dead]
        if len(set(named)) != len(named):  # a padded count, or both secrets of one site
            return ("the unmask names a site more than once (as contributing and as "
                    "dropped, or twice); each site may be named once")
        if node_id in dead:  # it sent its masked vector, so it is alive
            return ("the unmask names this site as dropped out after it sent its masked "
                    "vector; its secret key's shares would unmask its update")
    if not isinstance(active, list) or len(active) < need:
        return (f"the sum to unmask holds fewer than {need} sites this site can see "
                "(strategy.min-round-nodes)")
    return None


def _share_num(context: Context) -> int:
    state = context.state.config_records.get("secaggplus_state", ConfigRecord())
    return int(cast(int, state.get("share_num", 0)))


def _update(msg: Message, out: Message) -> list[np.ndarray]:
    """A train reply's new weights minus the global model the site received."""
    sent = msg.content.array_records["arrays"]
    got = out.content.array_records["arrays"]
    if list(got.keys()) != list(sent.keys()):
        raise ValueError("the trained model's arrays differ from the global model's")
    return [array_values(got[name]).astype(np.float64) - array_values(sent[name]).astype(np.float64)
            for name in sent.keys()]


def _as_update(call_next: Handler) -> Handler:
    """The train handler, its reply turned into the update in legacy ``FitRes`` form."""

    def handler(msg: Message, context: Context) -> Message:
        out = call_next(msg, context)
        if out.has_error():
            raise _HandlerRefused(out)
        metrics = out.content["metrics"]
        if is_report_request(msg):  # the report's values are the vector, the rest clear
            vector, clear = split_release(dict(metrics))
            update, metrics = [vector], MetricRecord(clear)
        else:
            update = _update(msg, out)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update),
                        num_examples=int(MAX_WEIGHT), metrics={})
        content = compat.fitres_to_recorddict(fitres, keep_input=False)
        content["metrics"] = metrics
        content["site"] = out.content["site"]
        return Message(content, reply_to=msg)

    return handler


def _problem(cfg: RunConfig, msg: Message, context: Context) -> str | None:
    """The site's own checks of a protocol message, before Flower's mod runs it."""
    if not cfg.secure_aggregation.enabled:
        return "a SecAgg+ message in a run without secure-aggregation.enabled"
    configs = msg.content.config_records[RECORD_KEY_CONFIGS]
    stage = configs.get(Key.STAGE)
    if stage == Stage.SETUP:
        return _setup_problem(cfg, configs)
    if stage == Stage.UNMASK:
        return _unmask_problem(cfg, configs, _share_num(context), msg.metadata.dst_node_id)
    return None


def _simulated_dropout(cfg: RunConfig, msg: Message, context: Context) -> bool:
    """Simulation only (``attack.kind = "secagg-dropout"``): the named sites vanish after
    sharing their keys, as a hospital whose node crashes mid-protocol."""
    if cfg.attack.kind != "secagg-dropout":
        return False
    stage = msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE)
    if stage != Stage.COLLECT_MASKED_VECTORS:
        return False
    from medfl.site.identity import resolve_site

    return resolve_site(cfg, dict(context.node_config)) in cfg.attack.site_names


def secure_aggregation_mod(msg: Message, context: Context, call_next: Handler) -> Message:
    """Client mod: run train messages through SecAgg+ when the run asks for it."""
    if msg.metadata.message_type != MessageType.TRAIN:
        return call_next(msg, context)
    try:
        cfg = parse_run_config(dict(context.run_config))
    except Exception:  # noqa: BLE001 - the handler's own parse reports the config error
        return call_next(msg, context)
    if RECORD_KEY_CONFIGS not in msg.content.config_records:
        if secure_required(cfg):
            return _refuse(msg, "this run sends updates only through secure aggregation "
                                "(secure-aggregation.enabled / privacy.mode); a plain train "
                                "message is refused")
        return call_next(msg, context)
    problem = _problem(cfg, msg, context)
    if problem is not None:
        return _refuse(msg, problem)
    if _simulated_dropout(cfg, msg, context):
        return _refuse(msg, "simulated dropout (attack.kind = 'secagg-dropout')")
    stage = str(msg.content.config_records[RECORD_KEY_CONFIGS].get(Key.STAGE))
    try:
        reply = secaggplus_mod(msg, context, _as_update(call_next))
    except _HandlerRefused as refused:
        return refused.reply
    except Exception as exc:  # noqa: BLE001 - Flower's texts may hold protocol values
        return _refuse(msg, f"the {stage} stage failed at the site ({type(exc).__name__})")
    for name in [n for n, r in reply.content.array_records.items() if not len(r)]:
        if name != "fitres.parameters":  # Flower's workflow reads this one back
            del reply.content.array_records[name]
    return reply



def _asked(stage: str, configs: dict[str, Any]) -> frozenset[int]:
    """The node ids the server's message named (what a reply may refer to)."""
    if stage == Stage.SHARE_KEYS:
        return frozenset(int(k) for k in configs if k != Key.STAGE and k.isdigit())
    if stage == Stage.UNMASK:
        return frozenset(cast(list[int], configs.get(Key.ACTIVE_NODE_ID_LIST, [])) +
                         cast(list[int], configs.get(Key.DEAD_NODE_ID_LIST, [])))
    return frozenset()


def protocol_violations(msg: Message, incoming: dict[str, Any], reply: Message,
                        bounds: ReplyBounds) -> list[str]:
    """The egress contract of a SecAgg+ reply (:mod:`medfl.privacy.secagg_contract`),
    and of its clear training metrics (or, for a report request, its clear report
    metrics: no values, and one vector of the report's declared length); ``incoming``:
    the protocol record the server sent (as received: Flower's mod consumes its stage)."""
    stage = str(incoming.get(Key.STAGE))
    content = reply.content
    records = {**{n: "metrics" for n in content.metric_records},
               **{n: "config" for n in content.config_records},
               **{n: "arrays" for n in content.array_records}}
    legacy: dict[str, Any] = {n: dict(r) for n, r in content.config_records.items()
                              if n.startswith("fitres.")}
    legacy.update({n: dict(r) for n, r in content.metric_records.items()
                   if n.startswith("fitres.")})
    legacy.update({n: len(r) for n, r in content.array_records.items()})
    report = is_report_request(msg)
    # a report's one vector: the declared lengths of its values (ReplyBounds)
    n_arrays = 1 if report else len(msg.content.array_records.get("arrays", {}))
    out = check_protocol_reply(ProtocolReply(
        stage=stage, records=records,
        configs=dict(content.config_records.get(RECORD_KEY_CONFIGS, {})), legacy=legacy,
        asked=_asked(stage, incoming), n_arrays=n_arrays, weight=int(MAX_WEIGHT),
        vector_sizes=(ReportLayout.of(bounds).length,) if report else None))
    if "metrics" in content.metric_records:
        metrics = dict(content["metrics"])
        out += check_metrics("query.report" if report else "train", metrics, bounds=bounds,
                             n_arrays=n_arrays)
        if report:
            out += [f"metric {key!r} of the report may leave only masked, in the SecAgg+ "
                    "vector" for key in VALUE_KEYS if key in metrics]
    site = dict(content["site"]) if "site" in content.config_records else None
    if site is not None and (set(site) != {"name"} or not isinstance(site["name"], str)):
        out.append("record 'site' may hold only the site's name")
    return out
