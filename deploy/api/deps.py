"""Dependencies: the loaded model and the JSON body check.

The API key is enforced by the ``Guard`` middleware in ``deploy.api.app``, before any
body is read, for every path but ``/health``.
"""

from __future__ import annotations

from fastapi import HTTPException, Request

from medfl.serving import TabularModel


def get_model(request: Request) -> TabularModel:
    return request.app.state.model


def require_json(request: Request) -> None:
    """415 unless the body is declared as JSON."""
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise HTTPException(status_code=415,
                            detail="Content-Type must be application/json")
