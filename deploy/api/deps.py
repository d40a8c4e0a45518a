"""Dependencies: the loaded model (tabular or imaging).

The API key is enforced by the ``Guard`` middleware in ``deploy.api.app``, before any
body is read, for every path but ``/health``.
"""

from __future__ import annotations

from fastapi import Request

from medfl.serving import ImageModel, TabularModel


def get_model(request: Request) -> TabularModel | ImageModel:
    return request.app.state.model
