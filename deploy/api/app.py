"""App factory: settings in, FastAPI app out. The model is loaded (and its bundle, report
and model card verified) in the lifespan; routers per concern; errors mapped to
401/403/413/415/422/503."""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
import uuid
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from deploy.api.routers import health, model, predict
from deploy.api.settings import Settings
from medfl import DISCLAIMER, __version__
from medfl.serving import ImageModel, InputError, TabularModel, load_bundle
from medfl.serving.admission import ImageTooLarge
from medfl.serving.attachments import served_attachments
from medfl.serving.exposure import is_loopback

logger = logging.getLogger("medfl.api")


class Guard:
    """ASGI middleware in front of everything: the API key, then the body limit.

    With an API key configured every path but ``/health`` (docs and schema included)
    answers 401 without the right ``X-API-Key`` (constant-time comparison), before the
    body is read. Without one, every path but ``/health`` answers 403 to a request that
    arrived on a network (non-loopback) address: a service started by plain ``uvicorn
    --host 0.0.0.0`` is no more open than ``medfl serve``, which refuses to start so.

    The body is then read up to ``limit`` bytes, whether or not the client
    declared its length, and replayed to the app; past the limit the answer is 413.
    """

    def __init__(self, app, *, limit: int, api_key: str | None) -> None:
        self.app, self.limit = app, limit
        self.key = api_key.encode() if api_key else None

    async def __call__(self, scope, receive, send):
        """Check the key, buffer the body up to ``limit`` bytes, then call the app.

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
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await _reply(send, 413, f"request body larger than {self.limit} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body = message.get("body", b"")
            size += len(body)
            if size > self.limit:
                return await _reply(send, 413, f"request body larger than {self.limit} bytes")
            chunks.append(body)
            more = message.get("more_body", False)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


def _over_network(scope) -> bool:
    """Whether the connection's local address is an IP that is not loopback (a real
    server reports an IP; test transports report a name and are local)."""
    host = str((scope.get("server") or (None,))[0])
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False  # no socket address (a unix socket), or a test transport's name
    return not is_loopback(host)


async def _reply(send, status: int, detail: str) -> None:
    body = JSONResponse({"detail": detail}, status).body
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"X-API-Key"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service. Without ``settings`` they are read from ``MEDFL_*`` variables."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        bundle = load_bundle(settings.bundle, public_key=settings.public_key)
        image = bundle.manifest.get("input_schema", {}).get("type") == "image"
        app.state.model = (ImageModel if image else TabularModel).from_bundle(bundle)
        app.state.run_dir = bundle.path.parent
        # Read once and verified now: what is served is what was signed, whatever the
        # files on disk become later.
        app.state.attachments = served_attachments(
            bundle, signed_only=settings.public_key is not None)
        logger.info("serving model %s", app.state.model.version)
        yield

    app = FastAPI(
        title="MedFL prediction service",
        version=__version__,
        description=f"Predictions from a MedFL federated model. {DISCLAIMER}",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.decode_slots = asyncio.Semaphore(settings.max_concurrent_decodes)

    @app.middleware("http")
    async def log_requests(request: Request, call_next):
        # Request id, route, status and latency only: never a body or a value.
        request_id = uuid.uuid4().hex[:12]
        start = time.perf_counter()
        response = await call_next(request)
        logger.info("request %s %s %s -> %d in %.1f ms", request_id, request.method,
                    request.url.path, response.status_code, 1000 * (time.perf_counter() - start))
        response.headers["X-Request-ID"] = request_id
        return response

    @app.exception_handler(ImageTooLarge)
    async def image_too_large(request: Request, exc: ImageTooLarge):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=413)

    @app.exception_handler(InputError)
    async def input_error(request: Request, exc: InputError):
        return JSONResponse({"detail": str(exc), "field": exc.field}, status_code=422)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        # FastAPI's default echoes the offending input back; name the field only.
        detail = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid")}
                  for e in exc.errors()]
        return JSONResponse({"detail": detail}, status_code=422)

    app.include_router(health.router)
    app.include_router(model.router)
    app.include_router(predict.router)
    key = settings.api_key.get_secret_value() if settings.api_key is not None else None
    app.add_middleware(Guard, limit=settings.max_body_bytes, api_key=key)
    return app
