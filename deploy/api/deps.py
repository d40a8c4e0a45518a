"""Dependencies: the loaded model (tabular or imaging).

The API key is enforced by the ``Guard`` middleware in ``deploy.api.app``, before any
body is read, for every path but ``/health``.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from medfl.serving import ImageModel, TabularModel


def get_model(request: Request) -> TabularModel | ImageModel:
    """The model loaded at start-up (``app.state.model``)."""
    return request.app.state.model


#: A route parameter annotated with this receives the served model.
ModelDep = Annotated[TabularModel | ImageModel, Depends(get_model)]
