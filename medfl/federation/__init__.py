"""The Flower adapter: the only part of ``medfl`` that imports ``flwr``.

``records`` converts MedFL values to and from Flower records, ``client`` holds the
ClientApp's wrappers (vetted errors, the egress guard mod), ``server`` the strategy and
the server's queries. ``server/`` and ``client/`` use this package and the Flower-free
library; nothing else in ``medfl`` imports ``flwr``.
"""

from __future__ import annotations

from medfl.federation.client import (
    ERROR_CODES,
    ERROR_EGRESS,
    ERROR_OTHER,
    egress_guard,
    guarded,
    model_request,
    open_site,
    train_reply,
)
from medfl.federation.compression import train_payload
from medfl.federation.fedbn import check_fedbn, keep_local_norm, with_local_norm
from medfl.federation.records import (
    QUERY_AUDIT,
    QUERY_FEATURE_MOMENTS,
    QUERY_REPORT,
    StateMemory,
    from_array_record,
    moments_from_metrics,
    moments_to_metrics,
    reply,
    run_key,
    scaler_from_config,
    scaler_to_config,
    site_of,
    to_array_record,
)
from medfl.federation.server import (
    RecordingFedAvg,
    central_dp_report,
    check_update,
    final_query_nodes,
    query_audit,
    query_feature_moments,
    query_report,
    sample_nodes,
    wait_for_nodes,
    weight_key,
    with_central_dp,
)

__all__ = [
    "ERROR_CODES", "ERROR_EGRESS", "ERROR_OTHER", "QUERY_AUDIT",
    "QUERY_FEATURE_MOMENTS", "QUERY_REPORT", "RecordingFedAvg", "StateMemory",
    "central_dp_report", "check_fedbn",
    "check_update", "egress_guard", "final_query_nodes", "from_array_record", "guarded",
    "keep_local_norm", "model_request", "moments_from_metrics",
    "moments_to_metrics", "open_site", "query_audit", "query_feature_moments",
    "query_report", "reply", "run_key", "sample_nodes", "train_reply",
    "scaler_from_config", "scaler_to_config", "site_of", "to_array_record", "wait_for_nodes",
    "train_payload", "weight_key", "with_central_dp", "with_local_norm",
]
