"""Liveness: no key needed, no model details."""

from __future__ import annotations

from fastapi import APIRouter, Request

router = APIRouter(tags=["health"])


@router.get("/health")
def health(request: Request) -> dict:
    """Liveness: ``status`` (always ``"ok"``) and whether the model has loaded."""
    return {"status": "ok", "model_loaded": getattr(request.app.state, "model", None) is not None}
