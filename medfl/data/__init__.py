"""Datasets, preprocessing and site loading."""

from __future__ import annotations

from medfl.data.heart import HEART_SITES, SiteData, load_heart_site, load_site_frame
from medfl.data.scaling import FeatureMoments, Standardizer, pool_moments, site_moments

__all__ = [
    "HEART_SITES",
    "FeatureMoments",
    "SiteData",
    "Standardizer",
    "load_heart_site",
    "load_site_frame",
    "pool_moments",
    "site_moments",
]
