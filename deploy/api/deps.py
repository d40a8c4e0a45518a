"""Dependencies: the loaded model, the settings, and the API-key check."""

from __future__ import annotations

import hmac

from fastapi import Header, HTTPException, Request

from deploy.api.settings import Settings
from medfl.serving import TabularModel


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_model(request: Request) -> TabularModel:
    return request.app.state.model


def require_api_key(request: Request,
                    x_api_key: str | None = Header(default=None, alias="X-API-Key")) -> None:
    """401 unless ``X-API-Key`` equals ``MEDFL_API_KEY`` (compared in constant time)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    given = (x_api_key or "").encode()
    if not hmac.compare_digest(given, expected.get_secret_value().encode()):
        raise HTTPException(status_code=401, detail="missing or wrong X-API-Key",
                            headers={"WWW-Authenticate": "X-API-Key"})


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(status_code=415,
                            detail="Content-Type must be application/json")
