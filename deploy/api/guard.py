"""The ASGI middleware in front of every route: the API key, then the body limit.

With an API key configured every path but ``/health`` (docs, their assets and the schema
included) answers 401 without the right ``X-API-Key`` (constant-time comparison), before
the body is read. Without one, every path but ``/health`` answers 403 to a request that
arrived on a network (non-loopback) address: a service started by plain ``uvicorn --host
0.0.0.0`` is no more open than ``medfl serve``, which refuses to start so.

The body is then streamed into a spooled temporary file (memory up to ``SPOOL_BYTES``,
disk past that), counted as it arrives whether or not the client declared its length,
and answered 413 the moment the count passes the limit; the file is closed (and so
deleted) whatever happens. The app reads the body back from the file in chunks, so a 30
MB radiograph is never held whole in memory before the route reads its one upload.
"""

from __future__ import annotations

import hmac
import ipaddress
import tempfile
from collections.abc import Callable
from typing import IO, Any

from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from medfl.serving.exposure import is_loopback

__all__ = ["CHUNK_BYTES", "SPOOL_BYTES", "Guard"]

#: A body up to this size stays in memory; a larger one is written to a temporary file
#: (Starlette's own multipart spool uses the same 1 MiB).
SPOOL_BYTES = 1 << 20
#: The size of the chunks in which the spooled body is replayed to the app.
CHUNK_BYTES = 64 << 10

Scope = dict[str, Any]
Receive = Callable[[], Any]
Send = Callable[[dict[str, Any]], Any]


class Guard:
    """The API key and loopback rules, then the body limit (see the module docstring).

    ``limit`` is called once per request: the service knows its limit only once the
    lifespan has loaded the bundle (imaging and tabular bundles have different defaults).
    """

    def __init__(self, app: Any, *, limit: Callable[[], int], api_key: str | None) -> None:
        self.app, self.limit = app, limit
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, spool the body up to the limit, then call the app.

        Non-HTTP scopes (lifespan, websockets) pass through untouched. A client that
        disconnects while the body is read gets no answer.
        """
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers", []))
        if self.key is not None and scope["path"] != "/health":
            if not hmac.compare_digest(headers.get(b"x-api-key", b""), self.key):
                return await _reply(send, 401, "missing or wrong X-API-Key")
        if self.key is None and scope["path"] != "/health" and _over_network(scope):
            return await _reply(send, 403, "this service has no API key, so it answers only "
                                "over loopback; set MEDFL_API_KEY to serve the network")
        limit = self.limit()
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await _too_large(send, limit)
        with tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES) as body:
            size = await _spool(receive, body, limit)
            if size is None:
                return None  # the client went away
            if size > limit:
                return await _too_large(send, limit)
            body.seek(0)
            await self.app(scope, _replay(body, size, receive), send)
        return None


async def _spool(receive: Receive, body: IO[bytes], limit: int) -> int | None:
    """Write the request's body into ``body``; return its size, or a size over ``limit``
    as soon as the count passes it (nothing more is read), or None on a disconnect."""
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return size
        if size > SPOOL_BYTES:  # on disk: keep file writes off the event loop
            await run_in_threadpool(body.write, chunk)
        else:
            body.write(chunk)
        more = message.get("more_body", False)
    return size


def _replay(body: IO[bytes], size: int, receive: Receive) -> Receive:
    """A ``receive`` that hands the app the spooled body in ``CHUNK_BYTES`` chunks, then
    passes on to the real one (so the app still sees a disconnect)."""
    left = size

    async def replay() -> dict[str, Any]:
        nonlocal left
        if left < 0:
            return await receive()
        if size > SPOOL_BYTES:
            chunk = await run_in_threadpool(body.read, CHUNK_BYTES)
        else:
            chunk = body.read(CHUNK_BYTES)
        left -= len(chunk)
        more = left > 0
        if not more:
            left = -1  # the body has been handed over whole
        return {"type": "http.request", "body": chunk, "more_body": more}

    return replay


def _over_network(scope: Scope) -> bool:
    """Whether the connection's local address is an IP that is not loopback (a real
    server reports an IP; test transports report a name and are local)."""
    host = str((scope.get("server") or (None,))[0])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False  # no socket address (a unix socket), or a test transport's name
    return not is_loopback(host)


async def _too_large(send: Send, limit: int) -> None:
    await _reply(send, 413, f"request body larger than {limit} bytes, this service's limit "
                 "(set by MEDFL_MAX_BODY_BYTES): send fewer or smaller files, or raise it")


async def _reply(send: Send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}, status).body
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"X-API-Key"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
