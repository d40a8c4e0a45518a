"""App factory: settings in, FastAPI app out. The model is loaded (and its bundle
verified) in the lifespan; routers per concern; errors mapped to 401/413/415/422."""

from __future__ import annotations

import hmac
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

logger = logging.getLogger("medfl.api")


class Guard:
    """ASGI middleware in front of everything: the API key, then the body limit.

    With an API key configured every path but ``/health`` (docs and schema included)
    answers 401 without the right ``X-API-Key`` (constant-time comparison), before the
    body is read. The body is then read up to ``limit`` bytes, whether or not the client
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
        app.state.run_dir = (settings.bundle if (settings.bundle / "model").is_dir()
                             else settings.bundle.parent)
        logger.info("serving model %s", app.state.model.version)
        yield

    app = FastAPI(
        title="MedFL prediction service",
        version=__version__,
        description=f"Predictions from a MedFL federated model. {DISCLAIMER}",
        lifespan=lifespan,
    )
    app.state.settings = settings

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
