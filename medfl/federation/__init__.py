"""The Flower adapter: the only part of ``medfl`` that imports ``flwr``.

``records`` converts MedFL values to and from Flower records, ``client`` holds the
ClientApp's wrappers (vetted errors, the egress guard mod). The server side is one concept
per module: ``recording`` (the strategy's per-round record), ``validation`` (update
checks), ``queries`` (one-off questions to the sites), ``central_dp``, ``nodes`` (waiting
and sampling), ``strategies`` and ``run_start`` (fresh or resumed). ``server/`` and
``client/`` use this package and the Flower-free library; nothing else in ``medfl``
imports ``flwr``.
"""

from __future__ import annotations

from medfl.federation.central_dp import CentralDP, central_dp_report, with_central_dp
from medfl.federation.client import (
    ERROR_CODES,
    ERROR_EGRESS,
    ERROR_OTHER,
    egress_guard,
    guarded,
)
from medfl.federation.compression import train_payload
from medfl.federation.fedbn import check_fedbn, keep_local_norm, with_local_norm
from medfl.federation.nodes import final_query_nodes, sample_nodes, wait_for_nodes, weight_key
from medfl.federation.queries import ask, query_audit, query_feature_moments, query_report
from medfl.federation.recording import Recording, RecordingFedAvg
from medfl.federation.records import (
    DP_STATE_KEY,
    QUERY_AUDIT,
    QUERY_FEATURE_MOMENTS,
    QUERY_REPORT,
    answer_once,
    from_array_record,
    load_dp_state,
    moments_from_metrics,
    moments_to_metrics,
    reply,
    run_key,
    save_dp_state,
    scaler_from_config,
    scaler_to_config,
    site_of,
    to_array_record,
)
from medfl.federation.validation import check_update, norm_outliers

__all__ = [
    "DP_STATE_KEY", "ERROR_CODES", "ERROR_EGRESS", "ERROR_OTHER", "QUERY_AUDIT",
    "QUERY_FEATURE_MOMENTS", "QUERY_REPORT", "CentralDP", "Recording", "RecordingFedAvg",
    "answer_once", "ask", "central_dp_report", "check_fedbn",
    "check_update", "egress_guard", "final_query_nodes", "from_array_record", "guarded",
    "keep_local_norm", "load_dp_state", "moments_from_metrics",
    "moments_to_metrics", "norm_outliers", "query_audit", "query_feature_moments",
    "query_report", "reply",
    "run_key", "sample_nodes", "save_dp_state",
    "scaler_from_config", "scaler_to_config", "site_of", "to_array_record", "wait_for_nodes",
    "train_payload", "weight_key", "with_central_dp", "with_local_norm",
]
