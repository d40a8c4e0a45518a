"""MedFL ClientApp: a thin adapter from Flower messages to ``medfl.site``, run inside the
hospital. Each handler opens this node's site once, calls one method, and replies with only
what the egress contract in DESIGN.md / PRIVACY.md allows: arrays, declared metrics, the
site's name.
"""

from __future__ import annotations

import torch
from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from medfl import federation as fed

# Flower may run several ClientApps side by side on a few cores: one thread each avoids
# oversubscription, which on 2 cores made training several times slower.
torch.set_num_threads(1)

app = ClientApp()


@app.query(fed.QUERY_FEATURE_MOMENTS, mods=[fed.egress_guard])
@fed.guarded
def moments(msg: Message, context: Context) -> Message:
    """Share this site's clipped (optionally noised, then accounted) feature moments."""
    site = fed.open_site(msg, context)
    return fed.reply(msg, site=site.name, metrics=site.moments())


@app.query(fed.QUERY_AUDIT, mods=[fed.egress_guard])
@fed.guarded
def audit(msg: Message, context: Context) -> Message:
    """Membership-inference audit of the final global model on this site's own data."""
    site = fed.open_site(msg, context)
    result = site.audit(fed.model_request(msg, context, site))
    return fed.reply(msg, site=site.name, metrics=result.to_metrics())


@app.query(fed.QUERY_REPORT, mods=[fed.egress_guard])
@fed.guarded
def report(msg: Message, context: Context) -> Message:
    """The final model's report release (one Gaussian release), and the site-local report."""
    return fed.report_reply(msg, context, fed.open_site(msg, context))


@app.train(mods=[fed.egress_guard, fed.secure_aggregation_mod])
@fed.guarded
def train(msg: Message, context: Context) -> Message:
    """One DP-SGD round on this site's data, checked against its privacy budgets (or,
    under secure aggregation, the report release: its values masked by SecAgg+)."""
    site = fed.open_site(msg, context)
    if fed.is_report_request(msg):
        return fed.report_reply(msg, context, site)
    result = site.train(fed.model_request(msg, context, site))
    return fed.train_reply(msg, context, site, result)


@app.evaluate(mods=[fed.egress_guard])
@fed.guarded
def evaluate(msg: Message, context: Context) -> Message:
    """The monitoring release: the global (and personalised) model's noisy test statistics."""
    site = fed.open_site(msg, context)
    metrics = site.evaluate(fed.model_request(msg, context, site))
    return fed.reply(msg, site=site.name, metrics=metrics)
