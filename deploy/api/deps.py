"""Dependencies: the loaded model (tabular or imaging), and a slot to decode images in.

The API key is enforced by the ``Guard`` middleware in ``deploy.api.guard``, before any
body is read, for every path but ``/health``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from medfl.serving import ImageModel, TabularModel


def get_model(request: Request) -> TabularModel | ImageModel:
    """The model loaded at start-up (``app.state.model``)."""
    return request.app.state.model


#: A route parameter annotated with this receives the served model.
ModelDep = Annotated[TabularModel | ImageModel, Depends(get_model)]


@asynccontextmanager
async def decode_slot(request: Request) -> AsyncIterator[None]:
    """Hold one of ``max_concurrent_decodes`` slots while images are decoded and predicted.

    Decoding is where an image costs memory (about 40 bytes per declared pixel), so at
    most that many requests decode at once, per worker process, whatever the number of
    connections. A request waits (on the event loop, holding no thread) up to
    ``decode_wait_s`` for a slot, then gets 503 with ``Retry-After``.
    """
    settings = request.app.state.settings
    slots: asyncio.Semaphore = request.app.state.decode_slots
    try:
        async with asyncio.timeout(settings.decode_wait_s):
            await slots.acquire()
    except TimeoutError:
        raise HTTPException(status_code=503, headers={"Retry-After": "5"},
                            detail=f"all {settings.max_concurrent_decodes} image-decoding "
                                   "slots are busy; retry later") from None
    try:
        yield
    finally:
        slots.release()
