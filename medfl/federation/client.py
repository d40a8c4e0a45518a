"""Client-side wrappers: vetted errors (`guarded`) and the egress guard (a Flower mod)."""

from __future__ import annotations

import functools
import logging
import os

from flwr.app import (
    ArrayRecord,
    Context,
    Error,
    Message,
)

from medfl import tasks
from medfl.config import parse_run_config
from medfl.errors import ConfigError, DataError, MedflError, PrivacyBudgetExceeded
from medfl.evaluation.subgroups import attributes, cells
from medfl.federation.records import Handler
from medfl.privacy.egress import check_reply
from medfl.site import site_config
from medfl.site_report import SALIENCY_GRID

logger = logging.getLogger(__name__)

# --- egress guard (a client mod) -----------------------------------------------------------

ERROR_EGRESS = 1010


def _shapes(record: ArrayRecord) -> dict[str, tuple[int, ...]]:
    return {name: tuple(arr.shape) for name, arr in record.items()}


def egress_guard(msg: Message, context: Context, call_next: Handler) -> Message:
    """Client mod: check the reply against the egress contract; block it if it breaks it.

    Fails closed: a reply that cannot be checked is blocked too. The log line and the
    error sent instead name the offending keys, never their values.
    """
    reply = call_next(msg, context)
    if reply.has_error():
        return reply  # errors are already vetted by `guarded`
    kind = msg.metadata.message_type
    try:
        cfg = site_config(parse_run_config(dict(context.run_config)), dict(context.node_config))
        k = max(cfg.privacy.k_threshold, int(context.node_config.get("min-k", 0)))
        n_numeric = len(tasks.task_for(cfg).feature_spec().numeric_idx) if cfg.is_tabular else 0
        cell_list = cells(cfg)
        n_cells = len(cell_list)
        n_explain = (len(tasks.task_for(cfg).feature_spec().feature_names) if cfg.is_tabular
                     else SALIENCY_GRID ** 2)
        content = reply.content
        records = {**{n: "metrics" for n in content.metric_records},
                   **{n: "config" for n in content.config_records},
                   **{n: "arrays" for n in content.array_records}}
        metrics = dict(content["metrics"]) if "metrics" in content.metric_records else {}
        site = dict(content["site"]) if "site" in content.config_records else None
        arrays = _shapes(content["arrays"]) if "arrays" in content.array_records else None
        expected = _shapes(msg.content["arrays"]) if "arrays" in msg.content else None
        violations = check_reply(kind, records=records, metrics=metrics, site_record=site,
                                 arrays=arrays, expected_arrays=expected, k=k,
                                 n_numeric=n_numeric, n_cells=n_cells, n_explain=n_explain,
                                 attribute_cells=list(attributes(cell_list).values()))
    except Exception as exc:  # noqa: BLE001 - fail closed
        violations = [f"the reply could not be checked ({type(exc).__name__})"]
    if not violations:
        return reply
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
        except MedflError as exc:
            code = next((c for t, c in ERROR_CODES.items() if isinstance(exc, t)), ERROR_OTHER)
            reason = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - fail closed: reply with the type only
            code, reason = ERROR_OTHER, f"{type(exc).__name__} at the site (details withheld)"
        logger.error("%s message refused: %s", msg.metadata.message_type, reason)
        if os.environ.get("MEDFL_DEBUG") == "1":
            logger.error("traceback (site-local, MEDFL_DEBUG=1)", exc_info=True)
        return Message(Error(code=code, reason=reason), reply_to=msg)

    return wrapped


