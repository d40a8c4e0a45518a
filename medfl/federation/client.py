"""Client-side adapter: open the site for a message, vetted errors (`guarded`), the egress
guard (a Flower mod), and the train reply."""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
)

from medfl.config import parse_run_config
from medfl.errors import ConfigError, DataError, MedflError, PrivacyBudgetExceeded
from medfl.federation.compression import train_payload
from medfl.federation.fedbn import keep_local_norm, with_local_norm
from medfl.federation.records import (
    Handler,
    StateMemory,
    check_image_size,
    from_array_record,
    reply,
    run_key,
    scaler_from_config,
)
from medfl.federation.secure_client import protocol_violations
from medfl.federation.secure_report import check_report_path
from medfl.privacy.egress import check_reply
from medfl.privacy.secagg_contract import PROTOCOL_RECORD
from medfl.site import ModelRequest, Site, reply_bounds, site_config
from medfl.site.training import FitResult
from medfl.wire import ReplyBounds

logger = logging.getLogger(__name__)

# --- the site, opened once per message --------------------------------------------------

#: The sites opened while the egress guard handles a message: the guard checks the reply
#: against the config the handler's site parsed, instead of parsing it a second time.
_OPENED: ContextVar[list[Site] | None] = ContextVar("medfl_opened_sites", default=None)


def _config(msg: Message) -> Mapping[str, Any]:
    return msg.content.config_records.get("config", ConfigRecord())


def open_site(msg: Message, context: Context) -> Site:
    """This node's site for ``msg`` (parses the run config once; see :meth:`Site.open`)."""
    site = Site.open(dict(context.run_config), dict(context.node_config),
                     run_id=context.run_id, run_key=run_key(_config(msg), context.run_id),
                     memory=StateMemory(context.state))
    opened = _OPENED.get()
    if opened is not None:
        opened.append(site)
    return site


def model_request(msg: Message, context: Context, site: Site) -> ModelRequest:
    """What ``msg`` asks of the site: the global model, with this site's own FedBN
    normalisation entries put back in, and the round's settings from its config."""
    config = _config(msg)
    cfg = site.config
    check_image_size(cfg, config)
    is_train = msg.metadata.message_type == "train"
    return ModelRequest(
        weights=with_local_norm(cfg, from_array_record(msg.content.array_records["arrays"]),
                                context.state),
        scaler=scaler_from_config(config),
        # a train message must name its round; the others default to 0
        server_round=int(config["server-round"] if is_train else config.get("server-round", 0)),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # FedProx sends it
        run_name=str(config.get("run-name", "")),
    )


def train_reply(msg: Message, context: Context, site: Site, result: FitResult) -> Message:
    """Keep the site's own FedBN entries, then reply with the (compressed) update."""
    keep_local_norm(site.config, result.weights, context.state)
    weights, metrics = train_payload(site.config, msg, result.metrics, result.weights)
    return reply(msg, site=site.name, metrics=metrics.to_metrics(), weights=weights)


def report_reply(msg: Message, context: Context, site: Site) -> Message:
    """The site's report release on the final model: a ``query.report`` reply without
    secure aggregation; with it, the reply to a train-typed report request whose values
    the SecAgg+ mod masks. A request the other way is refused before anything is read
    (:func:`medfl.federation.secure_report.check_report_path`)."""
    check_report_path(site.config, secure=msg.metadata.message_type == "train")
    stats = site.report(model_request(msg, context, site))
    return reply(msg, site=site.name, metrics=stats.to_metrics())


# --- egress guard (a client mod) -----------------------------------------------------------

ERROR_EGRESS = 1010


def _shapes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {name: tuple(arr.shape) for name, arr in record.items()}


def _bounds(opened: list[Site], context: Context) -> ReplyBounds:
    """The handler's site's bounds; a handler that opened none: the run config's."""
    if opened:
        return opened[-1].reply_bounds()
    node = dict(context.node_config)
    return reply_bounds(site_config(parse_run_config(dict(context.run_config)), node), node)


def _violations(msg: Message, reply_msg: Message, bounds: ReplyBounds,
                protocol: dict[str, Any] | None) -> list[str]:
    if protocol is not None:  # a SecAgg+ stage of a train round
        return protocol_violations(msg, protocol, reply_msg, bounds)
    content = reply_msg.content
    records = {**{n: "metrics" for n in content.metric_records},
               **{n: "config" for n in content.config_records},
               **{n: "arrays" for n in content.array_records}}
    metrics = dict(content["metrics"]) if "metrics" in content.metric_records else {}
    site = dict(content["site"]) if "site" in content.config_records else None
    arrays = (_shapes(content.array_records["arrays"]) if "arrays" in content.array_records
              else None)
    expected = (_shapes(msg.content.array_records["arrays"])
                if "arrays" in msg.content.array_records else None)
    return check_reply(msg.metadata.message_type, records=records, metrics=metrics,
                       site_record=site, arrays=arrays, expected_arrays=expected,
                       bounds=bounds)


def egress_guard(msg: Message, context: Context, call_next: Handler) -> Message:
    """Client mod: check the reply against the egress contract; block it if it breaks it.

    Fails closed: a reply that cannot be checked is blocked too. The log line and the
    error sent instead name the offending keys, never their values.
    """
    opened: list[Site] = []
    # Flower's SecAgg+ mod consumes its record's stage: keep what the server asked
    protocol = (dict(msg.content.config_records[PROTOCOL_RECORD])
                if PROTOCOL_RECORD in msg.content.config_records else None)
    token = _OPENED.set(opened)
    try:
        reply_msg = call_next(msg, context)
    finally:
        _OPENED.reset(token)
    if reply_msg.has_error():
        return reply_msg  # errors are already vetted by `guarded`
    kind = msg.metadata.message_type
    try:
        violations = _violations(msg, reply_msg, _bounds(opened, context), protocol)
    except Exception as exc:  # noqa: BLE001 - fail closed
        violations = [f"the reply could not be checked ({type(exc).__name__})"]
    if not violations:
        return reply_msg
    logger.error("egress guard blocked a %s reply: %s", kind, "; ".join(violations))
    return Message(Error(code=ERROR_EGRESS, reason="EgressBlocked: " + "; ".join(violations)),
                   reply_to=msg)


# --- replies -------------------------------------------------------------------------------

#: Error codes a MedFL site replies with (Flower's own codes are below 100).
ERROR_CODES = {ConfigError: 1001, DataError: 1002, PrivacyBudgetExceeded: 1003}
ERROR_OTHER = 1099


def guarded(handler: Handler) -> Handler:
    """Wrap a ClientApp handler so that no exception text leaves the site unvetted.

    Flower would send ``str(exception)`` to the server and log it with a traceback. A
    ``MedflError``'s message is written to name keys and files, never values or paths,
    so it is sent as the error reason; any other exception (whose text could hold a path
    or a value) is reduced to its type name. The site's log gets the same text; set
    ``MEDFL_DEBUG=1`` on a site to also log the full traceback locally.
    """

    @functools.wraps(handler)
    def wrapped(msg: Message, context: Context) -> Message:
        try:
            return handler(msg, context)
        except Exception as exc:  # noqa: BLE001 - fail closed: see the docstring
            error = exc
        if isinstance(error, MedflError):
            code = next((c for t, c in ERROR_CODES.items() if isinstance(error, t)),
                        ERROR_OTHER)
            reason = f"{type(error).__name__}: {error}"
        else:  # reply with the type only
            code, reason = ERROR_OTHER, f"{type(error).__name__} at the site (details withheld)"
        logger.error("%s message refused: %s", msg.metadata.message_type, reason)
        if os.environ.get("MEDFL_DEBUG") == "1":  # after the except block: pass the exception
            logger.error("traceback (site-local, MEDFL_DEBUG=1)", exc_info=error)
        return Message(Error(code=code, reason=reason), reply_to=msg)

    return wrapped


