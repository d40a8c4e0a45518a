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
    model_request,
    open_site,
    report_reply,
    train_reply,
)
from medfl.federation.compression import train_payload
from medfl.federation.fedbn import check_fedbn, keep_local_norm, with_local_norm
from medfl.federation.nodes import final_query_nodes, sample_nodes, wait_for_nodes, weight_key
from medfl.federation.queries import ask, query_audit, query_feature_moments, query_report
from medfl.federation.recording import Recording, RecordingFedAvg
from medfl.federation.records import (
    QUERY_AUDIT,
    QUERY_FEATURE_MOMENTS,
    QUERY_REPORT,
    StateMemory,
    check_image_size,
    from_array_record,
    image_size_to_config,
    moments_from_metrics,
    moments_to_metrics,
    reply,
    run_key,
    scaler_from_config,
    scaler_to_config,
    site_of,
    to_array_record,
)
from medfl.federation.secure_agg import SecureTrainGrid
from medfl.federation.secure_client import secure_aggregation_mod
from medfl.federation.secure_report import is_report_request, secure_report_plan
from medfl.federation.validation import check_update, norm_outliers

__all__ = [
    "ERROR_CODES", "ERROR_EGRESS", "ERROR_OTHER", "QUERY_AUDIT", "QUERY_FEATURE_MOMENTS",
    "QUERY_REPORT", "ask", "central_dp_report", "CentralDP", "check_fedbn", "check_image_size",
    "check_update", "image_size_to_config",
    "egress_guard", "final_query_nodes", "from_array_record", "guarded", "is_report_request",
    "keep_local_norm",
    "model_request", "moments_from_metrics", "moments_to_metrics", "norm_outliers", "open_site",
    "query_audit", "query_feature_moments", "query_report", "Recording", "RecordingFedAvg",
    "reply", "report_reply", "run_key", "sample_nodes", "scaler_from_config",
    "secure_aggregation_mod",
    "SecureTrainGrid", "scaler_to_config", "secure_report_plan", "site_of",
    "StateMemory", "to_array_record", "train_payload", "train_reply", "wait_for_nodes",
    "weight_key", "with_central_dp", "with_local_norm",
]
