"""A site's share of the feature statistics, and the standardiser it applies.

Under ``preprocessing.scaling = "federated"`` each site sends the clipped moments of its
numeric training features (optionally Gaussian-noised: an accounted release, see
:meth:`medfl.site.accountant.SiteAccountant.release_moments`), and the server sends back
one standardiser for all sites.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from medfl import tasks
from medfl.config import RunConfig
from medfl.data.missing import check_received, require_present
from medfl.data.prevalence import AUTO, pos_weight_for
from medfl.data.scaling import FeatureMoments, Standardizer, local_standardizer, site_moments
from medfl.data.types import SiteData
from medfl.errors import ConfigError, DataError
from medfl.privacy.dp import dp_seed
from medfl.site.identity import round_seed


def moments_rng(cfg: RunConfig, site: str) -> np.random.Generator:
    """The generator of the feature moments' noise: OS entropy under secure noise."""
    return np.random.default_rng(dp_seed(round_seed(cfg, site, 0),
                                         secure=cfg.privacy.secure_noise))


def feature_stats(cfg: RunConfig, data: SiteData, *, rng: np.random.Generator) -> FeatureMoments:
    """This site's clipped moments of the numeric features: noised when they are an
    accounted release (:func:`noised_release`), exact otherwise (a run without DP has no
    budget to account them in, so noise there would cost accuracy and protect nothing
    that the run's own updates do not already give away)."""
    if data.n_train < cfg.privacy.k_threshold:
        raise DataError(
            f"site has fewer training rows than privacy.k-threshold="
            f"{cfg.privacy.k_threshold}; it cannot share feature statistics"
        )
    spec = tasks.task_for(cfg).feature_spec()
    x = data.x_train[:, list(spec.moment_idx)].astype(np.float64)
    require_present(x, spec, k=cfg.privacy.k_threshold)
    return site_moments(  # with the present-cell counts where features are imputed
        x, bounds=spec.moment_bounds,
        labels=data.y_train if releases_prevalence(cfg) else None,
        noise_multiplier=cfg.preprocessing.stats_noise_multiplier if noised_release(cfg)
        else 0.0, rng=rng, present=bool(spec.impute_idx),
    )


def releases_prevalence(cfg: RunConfig) -> bool:
    """Whether this run's moments carry the count of positive training labels (the class
    weight is ``"auto"``: derived from the consortium's prevalence)."""
    return cfg.is_tabular and cfg.train.pos_weight == AUTO


def training_config(cfg: RunConfig, scaler: Standardizer) -> RunConfig:
    """``cfg`` with ``train.pos-weight`` resolved: ``"auto"`` becomes ``(1 - p) / p`` for
    the prevalence ``p`` the server sent with the standardiser (untrusted: checked and
    clipped, :func:`medfl.data.prevalence.pos_weight_for`); a fixed weight, or ``"auto"``
    without a prevalence (unweighted, see ``Task.make_loss``), is kept."""
    if cfg.train.pos_weight != AUTO or scaler.prevalence is None:
        return cfg
    return replace(cfg, train=replace(cfg.train, pos_weight=pos_weight_for(scaler.prevalence)))


def noised_release(cfg: RunConfig) -> bool:
    """Whether the moments are a Gaussian release to account (DP on, noise above 0)."""
    return cfg.privacy.enabled and cfg.preprocessing.stats_noise_multiplier > 0


def site_scaler(cfg: RunConfig, data: SiteData, received: Standardizer | None) -> Standardizer:
    """The standardiser this site applies, per ``preprocessing.scaling`` (tabular only:
    images are normalised one by one, per ``data.intensity``)."""
    if not cfg.is_tabular:
        return Standardizer((), (), ())
    if cfg.preprocessing.scaling == "federated":
        if received is None:
            raise ConfigError("scaling 'federated' but the server sent no standardiser")
        return check_received(received, tasks.task_for(cfg).feature_spec())
    if cfg.preprocessing.scaling == "site":
        return local_standardizer(data.x_train,
                                  columns=tasks.task_for(cfg).feature_spec().numeric_idx)
    return Standardizer((), (), ())
