"""Model bundles: save, load and verify (no web code here)."""

from __future__ import annotations

from medfl.serving.bundle import Bundle, load_bundle, save_bundle

__all__ = ["Bundle", "load_bundle", "save_bundle"]
