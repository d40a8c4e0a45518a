"""Model bundles: save, load and verify (no web code here)."""

from __future__ import annotations

from medfl.serving.bundle import Bundle, load_bundle, save_bundle
from medfl.serving.imaging import ImageModel
from medfl.serving.tabular import InputError, TabularModel

__all__ = ["Bundle", "ImageModel", "InputError", "TabularModel", "load_bundle", "save_bundle"]
