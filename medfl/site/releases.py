"""What a site releases beyond its DP-SGD updates, and how often it answers.

A hostile coordinator may send any message any number of times. So a site answers each
one-off query (the feature moments, the membership audit, the final report) at most once
per run and the evaluation at most once per round, and it makes a release that is not
DP-accounted (personalised evaluation, exact feature moments, site-local scaling), or the
membership audit (accounted, but a consent of its own), only when its own policy allows
it (:class:`medfl.site.policy.SitePolicy`).

A request is recorded in the node's memory *before* it is answered, so an answer that
fails half-way still counts.
"""

from __future__ import annotations

import logging

from medfl.config import RunConfig
from medfl.errors import ConfigError
from medfl.site.memory import NodeMemory
from medfl.site.policy import SitePolicy

logger = logging.getLogger(__name__)

#: the non-DP releases: policy attribute -> (node-config key, what it releases)
NON_DP_RELEASES = {
    "allow_personal_eval": ("allow-personal-eval", "a personalised evaluation (the global "
                            "model fine-tuned on training rows without DP)"),
    "allow_audit": ("allow-audit", "the membership audit (loss histograms of the training "
                    "and test rows under a model the server chooses; accounted in both "
                    "budgets, but a consent of its own)"),
    "allow_exact_moments": ("allow-exact-moments", "exact feature moments (sums of the "
                            "training rows, and under train.pos-weight='auto' the count "
                            "of positive labels, without noise)"),
    "allow_site_scaling": ("allow-site-scaling", "site-local scaling (a standardiser of "
                           "the training rows, computed outside DP)"),
}


def exact_moments(cfg: RunConfig) -> bool:
    """Whether this run's feature moments would leave without accounted noise."""
    return not (cfg.privacy.enabled and cfg.preprocessing.stats_noise_multiplier > 0)


def requested_releases(cfg: RunConfig) -> dict[str, str]:
    """The non-DP releases this run config asks of a site: policy attribute -> the run
    config setting that asks it."""
    asked: dict[str, str] = {}
    if cfg.evaluation.personal_epochs > 0:
        asked["allow_personal_eval"] = (f"evaluation.personal-epochs="
                                        f"{cfg.evaluation.personal_epochs}")
    if cfg.privacy.audit:
        asked["allow_audit"] = "privacy.audit=true"
    if cfg.is_tabular and cfg.preprocessing.scaling == "federated" and exact_moments(cfg):
        asked["allow_exact_moments"] = ("preprocessing.scaling='federated' without "
                                        "privacy.enabled and stats-noise-multiplier > 0")
    if cfg.is_tabular and cfg.preprocessing.scaling == "site":
        asked["allow_site_scaling"] = "preprocessing.scaling='site'"
    return asked


def refuse_unless_allowed(policy: SitePolicy, release: str, asked_by: str) -> None:
    """Raise ``ConfigError`` unless ``policy`` allows ``release`` (a key of
    :data:`NON_DP_RELEASES`), naming the node-config key that would allow it."""
    if getattr(policy, release):
        return
    key, what = NON_DP_RELEASES[release]
    raise ConfigError(f"{asked_by} asks for {what}; this site does not allow it: its node "
                      f"config would need {key}=true")


def check_releases(cfg: RunConfig, policy: SitePolicy) -> None:
    """Refuse a run that asks a non-DP release this site's policy does not allow."""
    for release, asked_by in requested_releases(cfg).items():
        refuse_unless_allowed(policy, release, asked_by)


def log_release(site: str, release: str) -> None:
    """Note in the site's own log that an allowed non-DP release is made (no values)."""
    key, what = NON_DP_RELEASES[release]
    logger.info("site %s releases %s, as its node config allows (%s)", site, what, key)


def answer_once(memory: NodeMemory, what: str) -> None:
    """Refuse a second request of ``what`` in this run (the node's memory is per run):
    a site answers each one-off query once, whatever arrays it is sent."""
    key = f"medfl.once.{what}"
    if memory.get(key) is not None:
        raise ConfigError(f"this site already answered this run's {what} query; it answers "
                          "once per run")
    memory.put(key, {"answered": 1})


def answer_round_once(memory: NodeMemory, what: str, *, server_round: int,
                      rounds: int) -> None:
    """Refuse ``what`` for a round outside 0..``rounds`` or already answered in this run."""
    if not 0 <= server_round <= rounds:
        raise ConfigError(f"a {what} request for server-round={server_round}: this run has "
                          f"rounds 0 to num-server-rounds={rounds}")
    key = f"medfl.once.{what}.round-{server_round}"
    if memory.get(key) is not None:
        raise ConfigError(f"this site already answered the {what} request of round "
                          f"{server_round}; it answers once per round")
    memory.put(key, {"answered": 1})
