"""Who this site is, how it applies the run config, and what its own policy allows.

The run config comes from the server, so a site does not trust it blindly: its node
config names the site and its files, and may bound what any run asks of it.
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import Any

from medfl import tasks
from medfl.config import RunConfig
from medfl.data.types import SiteData
from medfl.errors import ConfigError
from medfl.privacy.distributed import is_distributed
from medfl.site.policy import SITE_POLICY_KEYS, SitePolicy
from medfl.site.releases import check_releases

__all__ = ["SITE_POLICY_KEYS", "check_distributed", "check_local_epsilon", "check_test_epsilon",
           "enforce_site_policy", "lifetime_limit", "load_node_site", "load_site",
           "resolve_site", "round_seed", "site_config", "site_state_dir"]


def resolve_site(cfg: RunConfig, node_config: dict[str, Any]) -> str:
    """The site this node serves.

    Deployment: ``node_config`` names it (``site='cleveland'``). Simulation: Flower sets
    ``partition-id`` / ``num-partitions``, and partition *i* is the task's *i*-th site
    (heart disease: the *i*-th hospital; tabular: the CSV's sites in sorted order; imaging:
    the manifest's sites in sorted order, or ``part-<i+1>`` under ``data.partition``).
    """
    if "site" in node_config:
        site = str(node_config["site"])
        tasks.task_for(cfg).check_site_name(site)
        if not site or not all(c.isalnum() or c in "-_." for c in site):
            raise ConfigError("node-config site must be a name of letters, digits, '-', '_' "
                              "or '.'")
        return site
    if "partition-id" not in node_config:
        raise ConfigError("node-config needs site='<name>' (deployment) or partition-id "
                          "(simulation); neither was given")
    pid, num = int(node_config["partition-id"]), int(node_config.get("num-partitions", 0))
    names = tasks.task_for(cfg).sites(num_partitions=num)
    if num != len(names):
        raise ConfigError(
            f"the {cfg.task.value} data has {len(names)} sites but the federation has {num} "
            f"supernodes; run with --federation-config 'num-supernodes={len(names)}'"
        )
    return names[pid]


def site_config(cfg: RunConfig, node_config: dict[str, Any]) -> RunConfig:
    """The run config as this site applies it.

    A deployed site (node-config ``site``) reads only files its own node-config names:
    ``data-path`` (its image manifest or tabular CSV) and, for ``task = "tabular"``,
    ``schema-path`` (its copy of the consortium's schema). The run config's
    ``data.manifest`` and ``data.schema`` are paths on the researcher's machine, chosen by
    the server, so they apply in simulation only.
    """
    if "site" in node_config and cfg.attack.kind != "none":
        raise ConfigError("attack.kind is a simulation option; a deployed site refuses a run "
                          "that asks it to corrupt its update")
    if "site" not in node_config:
        return cfg
    return tasks.task_for(cfg).deployed_config(node_config)


def site_state_dir(cfg: RunConfig, site: str, node_config: dict[str, Any]) -> Path:
    """Where this site keeps its privacy ledger and DP state.

    Deployment: ``node_config`` ``site-dir``, which a deployed site must set (the server's
    ``state-dir`` could point the ledger at a fresh folder). Simulation: ``site-dir`` when
    set, else ``<state-dir>/<site>/`` with ``state-dir`` from the run config, by default
    ``<project>/state``.
    """
    policy = SitePolicy.from_node_config(node_config)
    if policy.site_dir is not None:
        return policy.site_dir
    return tasks.state_root(cfg) / site


def lifetime_limit(cfg: RunConfig, node_config: dict[str, Any]) -> float:
    """The lifetime ε limit in force: the tighter of the site's own (node-config
    ``lifetime-epsilon``) and the run's ``privacy.lifetime-epsilon``; 0 means none. The run
    config comes from the server, so it can tighten a site's limit, never loosen it."""
    own = SitePolicy.from_node_config(node_config).lifetime_epsilon
    limits = [v for v in (own or 0.0, cfg.privacy.lifetime_epsilon) if v > 0]
    return min(limits) if limits else 0.0


def check_test_epsilon(cfg: RunConfig, policy: SitePolicy) -> None:
    """Refuse (``ConfigError``) a run whose ``privacy.test-epsilon`` this site does not
    accept: above its ``max-test-epsilon``, or 0 (exact test-set figures) without
    ``allow-exact-evaluation=true``."""
    eps, cap = cfg.privacy.test_epsilon, policy.max_test_epsilon
    valid = f"a value in (0, {cap:g}]" if cap is not None else "a value above 0"
    if policy.allow_exact_evaluation:
        valid += " or 0 (exact)"
    if eps == 0 and not policy.allow_exact_evaluation:
        raise ConfigError("privacy.test-epsilon=0 asks for exact test-set figures (no noise); "
                          "this site does not allow it: its node config would need "
                          f"allow-exact-evaluation=true. Valid here: {valid}")
    if cap is not None and eps > cap:
        raise ConfigError(f"privacy.test-epsilon={eps:g} exceeds this site's "
                          f"max-test-epsilon={cap:g}. Valid here: {valid}")


def check_distributed(cfg: RunConfig, policy: SitePolicy) -> None:
    """Refuse (``ConfigError``) a distributed-DP run unless this site trusts secure
    aggregation (node-config ``trust-secure-aggregation``, false when deployed)."""
    if is_distributed(cfg) and not policy.trust_secure_aggregation:
        raise ConfigError(
            "privacy.mode='distributed' asks this site to add only a share of the DP-SGD "
            "noise and to trust SecAgg+ with the rest; its node config would need "
            "trust-secure-aggregation=true. Valid here: privacy.mode='local'")


def check_local_epsilon(policy: SitePolicy, planned: float) -> None:
    """Refuse (``ConfigError``) a distributed-DP run whose planned unconditional ε (the
    whole run at the site's own noise share) exceeds node-config ``max-local-epsilon``."""
    cap = policy.max_local_epsilon
    if cap is not None and planned > cap:
        raise ConfigError(
            f"privacy.mode='distributed' would give this site an unconditional ε={planned:.3f} "
            f"over the run (its own noise share alone), above its max-local-epsilon={cap:g}; "
            "lower privacy.target-epsilon or strategy.min-round-nodes, or train in "
            "privacy.mode='local'")


def enforce_site_policy(cfg: RunConfig, node_config: dict[str, Any]) -> SitePolicy:
    """Refuse a run whose privacy settings are weaker than this site's own policy, and
    return that policy (:class:`SitePolicy`).

    The run config comes from the server, so a site must not trust it: ``max-epsilon``
    caps ``privacy.target-epsilon``, ``min-k`` floors ``privacy.k-threshold`` (10 when a
    deployed site sets none), ``require-dp`` (true when deployed) demands DP-SGD with
    secure noise, ``max-test-epsilon`` (1.0 when deployed) caps ``privacy.test-epsilon``
    and ``allow-exact-evaluation`` (false when deployed) allows it to be 0, and each
    non-DP release the run asks must be allowed (``allow-*``), and a distributed-DP run
    needs ``trust-secure-aggregation``. A deployed site with no explicit policy refuses
    every run (``ConfigError``).
    """
    policy = SitePolicy.from_node_config(node_config)
    p = cfg.privacy
    if policy.max_epsilon is not None and p.target_epsilon > policy.max_epsilon:
        raise ConfigError(f"privacy.target-epsilon={p.target_epsilon} exceeds this site's "
                          f"max-epsilon={policy.max_epsilon}")
    check_test_epsilon(cfg, policy)
    if p.k_threshold < policy.min_k:
        raise ConfigError(f"privacy.k-threshold={p.k_threshold} is below this site's "
                          f"min-k={policy.min_k}")
    if policy.require_dp and not (p.enabled and p.secure_noise):
        raise ConfigError("this site requires DP-SGD with secure noise (privacy.enabled=true, "
                          "privacy.secure-noise=true)")
    check_releases(cfg, policy)
    check_distributed(cfg, policy)
    return policy


def load_site(cfg: RunConfig, site: str, *, data_path: str | None = None,
              verify: bool = True, num_partitions: int | None = None) -> SiteData:
    """This site's data (see :meth:`medfl.tasks.Task.load_site`)."""
    return tasks.task_for(cfg).load_site(site, data_path=data_path, verify=verify,
                                         num_partitions=num_partitions)


def load_node_site(cfg: RunConfig, site: str, node: dict[str, Any]) -> SiteData:
    """This site's data as its node config places it (``data-path``, ``verify-checksum``,
    and in simulation ``num-partitions``)."""
    return load_site(cfg, site, data_path=str(node["data-path"]) if "data-path" in node else None,
                     verify=bool(node.get("verify-checksum", True)),
                     num_partitions=(int(node["num-partitions"]) if "num-partitions" in node
                                     else None))


def round_seed(cfg: RunConfig, site: str, server_round: int) -> int:
    """A seed distinct per site and round, reproducible from the run's seed."""
    return cfg.seed * 1_000_003 + zlib.crc32(site.encode()) % 10_007 * 10_007 + server_round
