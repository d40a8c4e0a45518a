"""A hospital's own privacy policy: the authority over whatever a run config asks.

Everything the coordinator sends (run config, weights, messages) is untrusted input. The
site's node config carries its policy; a run asking more than the policy allows is
refused before any row is read. A deployed site (node-config ``site``) must state its
policy: with none it refuses to train. Every release that is not DP-accounted
(personalised evaluation, the membership audit, exact feature moments, site-local
scaling) is off unless the policy allows it.

| node-config key | meaning | default |
| --- | --- | --- |
| ``max-epsilon`` | cap on a run's ``privacy.target-epsilon`` | required when deployed |
| ``max-delta`` | cap on a run's δ, and the δ the lifetime ledger is composed at | 1/(10·n) |
| ``min-k`` | floor on ``privacy.k-threshold`` | 10 deployed, 1 in simulation |
| ``lifetime-epsilon`` | the site's lifetime ε over every run | required when deployed |
| ``site-dir`` | where the ledger and DP state live | required when deployed |
| ``require-dp`` | demand DP-SGD with secure noise | true deployed |
| ``allow-personal-eval`` | answer personalised (fine-tuned, non-DP) evaluation | false deployed |
| ``allow-audit`` | run the membership audit on training rows | false deployed |
| ``allow-exact-moments`` | release feature moments without noise | false deployed |
| ``allow-site-scaling`` | standardise with the site's own (non-DP) statistics | false deployed |
| ``max-test-epsilon`` | cap on a run's ``privacy.test-epsilon`` (its test rows' ε) | 1.0 deployed |
| ``lifetime-test-epsilon`` | the test rows' lifetime ε (0: none) | ``lifetime-epsilon`` |
| ``allow-exact-evaluation`` | answer ``test-epsilon = 0`` (exact test figures) | false deployed |
| ``trust-secure-aggregation`` | join ``privacy.mode = "distributed"`` runs | false deployed |
| ``max-local-epsilon`` | cap on a distributed run's unconditional ε (0: none) | 10.0 deployed |

A distributed run adds only a share of the DP-SGD noise at each site and relies on SecAgg+
for the rest (:mod:`medfl.privacy.distributed`): ``trust-secure-aggregation`` consents to
that; ``max-local-epsilon`` caps what the site's own share guarantees if that trust fails.

In simulation (no ``site`` key: Flower sets ``partition-id``) the researcher runs every
site, so the run config decides what a key left unset allows, as it always did; a key that
is set binds in simulation too.

The training rows and the test rows are disjoint patients with a budget each in the one
ledger (:mod:`medfl.privacy.ledger`); a patient's ε is the larger of the two.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfl.errors import ConfigError

#: node-config keys a hospital sets to bound what any run may ask of it.
SITE_POLICY_KEYS = ("max-epsilon", "max-delta", "min-k", "require-dp", "lifetime-epsilon",
                    "allow-personal-eval", "allow-audit", "allow-exact-moments",
                    "allow-site-scaling", "max-test-epsilon", "lifetime-test-epsilon",
                    "allow-exact-evaluation", "trust-secure-aggregation", "max-local-epsilon")
#: what a deployed site must state before it trains.
REQUIRED_WHEN_DEPLOYED = ("max-epsilon", "lifetime-epsilon", "site-dir")
#: the floor on k when a site does not set ``min-k``.
DEFAULT_MIN_K = 10
#: the cap on a run's test-set ε when a deployed site does not set ``max-test-epsilon``.
DEFAULT_MAX_TEST_EPSILON = 1.0
#: the cap on a distributed run's unconditional ε when a deployed site sets no
#: ``max-local-epsilon`` (the lifetime default: one run may not spend more unconditionally).
DEFAULT_MAX_LOCAL_EPSILON = 10.0


def _flag(node_config: dict[str, Any], key: str, default: bool) -> bool:
    value = node_config.get(key, default)
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ConfigError(f"node-config {key}={value!r} is not a boolean (true or false)")


def _number(node_config: dict[str, Any], key: str) -> float:
    try:
        return float(node_config[key])
    except (TypeError, ValueError):
        raise ConfigError(f"node-config {key}={node_config[key]!r} is not a number") from None


def _positive(node_config: dict[str, Any], key: str) -> float | None:
    if key not in node_config:
        return None
    value = _number(node_config, key)
    if not value > 0 or value != value or value == float("inf"):
        raise ConfigError(f"node-config {key} must be a finite number above 0")
    return value


def _limit(node_config: dict[str, Any], key: str, default: float | None) -> float | None:
    """A limit the site may switch off: a finite number above 0, or 0 for none."""
    if key not in node_config:
        return default
    if _number(node_config, key) == 0:
        return None
    try:
        return _positive(node_config, key)
    except ConfigError:
        raise ConfigError(f"node-config {key} must be a finite number above 0, or 0 for "
                          "no limit") from None


@dataclass(frozen=True)
class SitePolicy:
    """What this site allows any run to ask (parse with :meth:`from_node_config`)."""

    deployed: bool
    max_epsilon: float | None
    max_delta: float | None
    min_k: int
    lifetime_epsilon: float | None
    site_dir: Path | None
    require_dp: bool
    allow_personal_eval: bool
    allow_audit: bool
    allow_exact_moments: bool
    allow_site_scaling: bool
    max_test_epsilon: float | None = None
    lifetime_test_epsilon: float | None = None
    allow_exact_evaluation: bool = True
    trust_secure_aggregation: bool = True
    max_local_epsilon: float | None = None

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> SitePolicy:
        """The policy a node config states. A deployed site (``site`` set) missing any of
        :data:`REQUIRED_WHEN_DEPLOYED` is refused (``ConfigError`` naming the keys)."""
        deployed = "site" in node_config
        missing = [k for k in REQUIRED_WHEN_DEPLOYED if k not in node_config]
        if deployed and missing:
            raise ConfigError(
                "this site has no explicit privacy policy, so it refuses to train: set "
                + ", ".join(missing) + " in its node config (deploy/start-site.sh sets them "
                "from MAX_EPSILON, LIFETIME_EPSILON and STATE_DIR)")
        min_k = int(node_config.get("min-k", DEFAULT_MIN_K if deployed else 1))
        if min_k < 1:
            raise ConfigError("node-config min-k must be at least 1")
        lifetime = _positive(node_config, "lifetime-epsilon")
        max_test = _positive(node_config, "max-test-epsilon")
        return cls(
            deployed=deployed,
            max_epsilon=_positive(node_config, "max-epsilon"),
            max_delta=_positive(node_config, "max-delta"),
            min_k=min_k,
            lifetime_epsilon=lifetime,
            site_dir=Path(str(node_config["site-dir"])) if "site-dir" in node_config else None,
            require_dp=_flag(node_config, "require-dp", deployed or any(
                k in node_config for k in ("max-epsilon", "min-k", "lifetime-epsilon"))),
            allow_personal_eval=_flag(node_config, "allow-personal-eval", not deployed),
            allow_audit=_flag(node_config, "allow-audit", not deployed),
            allow_exact_moments=_flag(node_config, "allow-exact-moments", not deployed),
            allow_site_scaling=_flag(node_config, "allow-site-scaling", not deployed),
            max_test_epsilon=(max_test if max_test is not None or not deployed
                              else DEFAULT_MAX_TEST_EPSILON),
            lifetime_test_epsilon=_limit(node_config, "lifetime-test-epsilon", lifetime),
            allow_exact_evaluation=_flag(node_config, "allow-exact-evaluation", not deployed),
            trust_secure_aggregation=_flag(node_config, "trust-secure-aggregation",
                                           not deployed),
            max_local_epsilon=_limit(node_config, "max-local-epsilon",
                                     DEFAULT_MAX_LOCAL_EPSILON if deployed else None),
        )

    def delta_for(self, n_train: int) -> float:
        """The largest δ this site accepts, and the δ its lifetime ledger is composed at:
        ``max-delta`` when set, else 1/(10·n) for its ``n_train`` training rows."""
        if self.max_delta is not None:
            return self.max_delta
        return 1.0 / (10.0 * max(int(n_train), 1))

    def test_limit(self, run_limit: float) -> float:
        """The test rows' lifetime ε limit in force: the tighter of the site's
        (``lifetime-test-epsilon``, by default ``lifetime-epsilon``) and the run's
        ``privacy.lifetime-epsilon`` (``run_limit``, which can only tighten it); 0: none."""
        limits = [v for v in (self.lifetime_test_epsilon or 0.0, run_limit) if v > 0]
        return min(limits) if limits else 0.0
