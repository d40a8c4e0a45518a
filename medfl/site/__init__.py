"""What one hospital does in a run, independent of Flower.

The ClientApp opens a :class:`Site` once per message and calls one method: ``moments``,
``train``, ``evaluate``, ``audit`` or ``report``. Each returns only what the egress
contract allows.

| module | holds |
| --- | --- |
| ``site`` | :class:`Site`, opened once per message; :class:`ModelRequest` |
| ``identity`` | the site's name, the run config as it applies it, its own policy, its data |
| ``policy`` | :class:`SitePolicy`, the node config's privacy policy |
| ``releases`` | non-DP releases only where allowed; each query answered once |
| ``accountant`` | :class:`SiteAccountant`: DP plan and history, ledger, replay, persistence |
| ``training`` | DP-SGD :func:`fit` and the ledger-checked :func:`train_round` |
| ``evaluation`` | evaluation, personalised evaluation, the membership-inference audit |
| ``moments`` | the feature moments a site shares, and the standardiser it applies |
| ``report`` | the final report's statistics and the site-local report |
| ``metrics`` | :class:`TrainMetrics` and the moments' wire form |
| ``memory`` | :class:`NodeMemory`, what a node keeps between messages |
"""  # noqa: E501

from __future__ import annotations

from medfl.site.accountant import SiteAccountant, dp_state_path
from medfl.site.evaluation import audit, evaluate, evaluation_metrics, personalise
from medfl.site.identity import (
    SITE_POLICY_KEYS,
    enforce_site_policy,
    lifetime_limit,
    load_node_site,
    load_site,
    resolve_site,
    round_seed,
    site_config,
    site_state_dir,
)
from medfl.site.memory import DictMemory, NodeMemory
from medfl.site.metrics import TrainMetrics
from medfl.site.moments import feature_stats, moments_rng, site_scaler
from medfl.site.releases import answer_once, answer_round_once
from medfl.site.site import ModelRequest, Site, reply_bounds
from medfl.site.training import FitResult, fit, train_round

__all__ = [
    "SITE_POLICY_KEYS", "DictMemory", "FitResult", "ModelRequest", "NodeMemory", "Site",
    "SiteAccountant", "TrainMetrics", "answer_once", "answer_round_once", "audit", "dp_state_path",
    "enforce_site_policy", "evaluate", "evaluation_metrics", "feature_stats", "fit",
    "lifetime_limit", "load_node_site", "load_site", "moments_rng", "personalise",
    "reply_bounds", "resolve_site", "round_seed", "site_config", "site_scaler",
    "site_state_dir", "train_round",
]
