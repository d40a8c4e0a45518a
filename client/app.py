"""MedFL ClientApp: a thin adapter from Flower messages to ``medfl.site``, run inside the
hospital. It trains on this site's data with DP-SGD and replies with only what the egress
contract in DESIGN.md / PRIVACY.md allows: arrays, declared metrics, the site's name.
"""

from __future__ import annotations

import logging

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from medfl import federation as fed
from medfl import site as site_lib
from medfl import site_report
from medfl.config import parse_run_config

logger = logging.getLogger(__name__)
# Flower may run several ClientApps side by side on a few cores: one thread each avoids
# oversubscription, which on 2 cores made training several times slower.
torch.set_num_threads(1)

app = ClientApp()


def _setup(msg: Message, context: Context):
    node = dict(context.node_config)
    cfg = site_lib.site_config(parse_run_config(dict(context.run_config)), node)
    site = site_lib.resolve_site(cfg, node)
    site_lib.enforce_site_policy(cfg, node)
    return cfg, site, site_lib.load_node_site(cfg, site, node)


def _weights(cfg, msg: Message, context: Context):  # FedBN: with the site's own norm layers
    return fed.with_local_norm(cfg, fed.from_array_record(msg.content["arrays"]), context.state)


@app.query(fed.QUERY_FEATURE_MOMENTS, mods=[fed.egress_guard])
@fed.guarded
def moments(msg: Message, context: Context) -> Message:
    """Share this site's clipped (optionally noised) feature moments."""
    cfg, site, data = _setup(msg, context)
    moments = site_lib.feature_stats(cfg, data, rng=site_lib.moments_rng(cfg, site))
    sigma = cfg.preprocessing.stats_noise_multiplier
    if cfg.privacy.enabled and sigma > 0:
        # A Gaussian mechanism on the whole vector, once, accounted before anything leaves.
        node, key = dict(context.node_config), fed.run_key(msg.content["config"], context.run_id)
        backup = site_lib.dp_state_path(cfg, site, node, key)
        plan, history = fed.load_dp_state(context.state, backup)
        history = site_lib.release_noised_moments(
            cfg, site_lib.open_ledger(cfg, site, node), run_id=key, history=history,
            limit=site_lib.lifetime_limit(cfg, node))
        fed.save_dp_state(context.state, plan, history, backup)
    return fed.reply(msg, site=site, metrics=fed.moments_to_metrics(moments))


@app.query(fed.QUERY_AUDIT, mods=[fed.egress_guard])
@fed.guarded
def audit(msg: Message, context: Context) -> Message:
    """Membership-inference audit of the final global model on this site's own data."""
    cfg, site, data = _setup(msg, context)
    scaler = site_lib.site_scaler(cfg, data, fed.scaler_from_config(msg.content["config"]))
    result = site_lib.audit(cfg, data, weights=_weights(cfg, msg, context), scaler=scaler)
    return fed.reply(msg, site=site, metrics=result.to_metrics())


@app.query(fed.QUERY_REPORT, mods=[fed.egress_guard])
@fed.guarded
def report(msg: Message, context: Context) -> Message:
    """Report statistics of the final model (suppressed at k), and the site-local report."""
    cfg, site, data = _setup(msg, context)
    fed.answer_once(context.state, "report")
    config = msg.content["config"]
    local = site_report.local_dir(site_lib.site_state_dir(cfg, site, dict(context.node_config)),
                                  str(config.get("run-name", "")), run_id=context.run_id)
    stats = site_report.report(
        cfg, data, weights=_weights(cfg, msg, context), local_dir=local,
        scaler=site_lib.site_scaler(cfg, data, fed.scaler_from_config(config)))
    return fed.reply(msg, site=site, metrics=stats.to_metrics())


@app.train(mods=[fed.egress_guard])
@fed.guarded
def train(msg: Message, context: Context) -> Message:
    cfg, site, data = _setup(msg, context)
    config, node = msg.content["config"], dict(context.node_config)
    server_round, key = int(config["server-round"]), fed.run_key(config, context.run_id)
    scaler = site_lib.site_scaler(cfg, data, fed.scaler_from_config(config))
    backup = site_lib.dp_state_path(cfg, site, node, key)  # survives a restart or resume
    plan, history = fed.load_dp_state(context.state, backup)
    result = site_lib.fit_with_ledger(
        cfg, data, site_lib.open_ledger(cfg, site, node), run_id=key,
        server_round=server_round, plan=plan, history=history, replay=backup,
        limit=site_lib.lifetime_limit(cfg, node),
        weights=_weights(cfg, msg, context), scaler=scaler,
        seed=site_lib.round_seed(cfg, site, server_round),
        proximal_mu=float(config.get("proximal-mu", 0.0)),  # FedProx sends it
    )
    fed.save_dp_state(context.state, result.plan, result.history, backup)
    fed.keep_local_norm(cfg, result.weights, context.state)
    logger.info("site %s round %d: trained, epsilon %.3f", site, server_round,
                result.metrics["epsilon"])
    return fed.reply(msg, site=site, **fed.train_payload(cfg, msg, result.metrics, result.weights))


@app.evaluate(mods=[fed.egress_guard])
@fed.guarded
def evaluate(msg: Message, context: Context) -> Message:
    cfg, site, data = _setup(msg, context)
    config = msg.content["config"]
    return fed.reply(msg, site=site, metrics=site_lib.evaluation_metrics(
        cfg, data, weights=_weights(cfg, msg, context),
        scaler=site_lib.site_scaler(cfg, data, fed.scaler_from_config(config)),
        seed=site_lib.round_seed(cfg, site, int(config.get("server-round", 0)))))
