"""Simulated misbehaving sites (``attack.sites`` / ``attack.kind``), to show what robust
aggregation and the server's update validation withstand. Simulation only: a deployed
site refuses a run that asks for it (:func:`medfl.site.site_config`).

| kind | what the site sends |
| --- | --- |
| ``scale`` | the global model plus ``attack.scale`` times its honest update |
| ``sign-flip`` | the global model minus its honest update |
| ``nan`` | NaN everywhere |
| ``label-flip`` | an honest update trained on labels flipped (classification only) |
"""

from __future__ import annotations

from dataclasses import replace

import torch

from medfl.config import RunConfig
from medfl.data.types import SiteData


def attacking(cfg: RunConfig, site: str) -> bool:
    """Whether ``site`` is one of the simulation's attacking sites (``attack.sites``)."""
    return cfg.attack.kind != "none" and site in cfg.attack.site_names


def poison_data(cfg: RunConfig, data: SiteData) -> SiteData:
    """Labels flipped for a ``label-flip`` site (binary classification labels only)."""
    if not attacking(cfg, data.name) or cfg.attack.kind != "label-flip" \
            or data.y_train.ndim != 1:
        return data
    return replace(data, y_train=1 - data.y_train)


def corrupt_update(cfg: RunConfig, site: str, sent: dict[str, torch.Tensor],
                   trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What an attacking site returns instead of ``trained`` (``sent``: the global model)."""
    if not attacking(cfg, site) or cfg.attack.kind == "label-flip":
        return trained
    out = {}
    for name, w in trained.items():
        if not torch.is_floating_point(w):
            out[name] = w
            continue
        w0 = sent[name].to(w.dtype)
        if cfg.attack.kind == "scale":
            out[name] = w0 + cfg.attack.scale * (w - w0)
        elif cfg.attack.kind == "sign-flip":
            out[name] = w0 - (w - w0)
        else:  # nan
            out[name] = torch.full_like(w, float("nan"))
    return out
