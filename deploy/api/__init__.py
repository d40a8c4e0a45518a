"""The MedFL prediction service (FastAPI). Build it with ``create_app(settings)``."""

from __future__ import annotations

from deploy.api.app import create_app
from deploy.api.settings import Settings

__all__ = ["Settings", "create_app"]
