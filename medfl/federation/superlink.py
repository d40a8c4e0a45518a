"""The consortium's SuperLink with its control plane on loopback only.

Flower 1.42 serves every SuperLink API from one HTTP(S) listener (``--host``/``--port``):
the Fleet API the SuperNodes use, the Control API (``flwr run``, ``flwr supernode
register``) and the Runtime API the ServerApp uses to send messages to the sites. Its
``--control-api-address`` is deprecated and only moves an *extra* gRPC control server;
the HTTP control routes stay on the shared port, and without OIDC (not in the open-source
SuperLink) anyone who reaches that port and trusts the CA may submit runs, register
SuperNode keys or act as the ServerApp.

This launcher runs Flower's own SuperLink application (same arguments, same database,
same lifespan) on two listeners in one process:

- the full application on ``--host``/``--port``, which must be a loopback address: only
  the operator on the coordinator host (and the ServerApp, which Flower connects there)
  reaches the Control and Runtime APIs;
- a Fleet-only listener on ``--fleet-address`` (e.g. ``0.0.0.0:9091``), the one port the
  hospitals' SuperNodes connect to. It answers exactly the Fleet API's routes and 404 to
  everything else, whatever the path's spelling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ipaddress
import signal
import sys
from collections.abc import Awaitable, Callable, Generator, MutableMapping, Sequence
from typing import Any

from medfl.errors import MedflError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: the prefix of the Fleet API's routes (flwr/superlink/routers/fleet/router.py)
FLEET_PREFIX = "/v1/fleet/"


def fleet_paths() -> frozenset[str]:
    """The exact paths of the Fleet API's routes (Flower's fleet router, the one the
    SuperLink application includes)."""
    from flwr.superlink.routers.fleet.router import router

    fleet = frozenset(str(getattr(r, "path", "")) for r in router.routes)
    if not fleet or not all(p.startswith(FLEET_PREFIX) for p in fleet):
        raise MedflError(f"this Flower version's Fleet API routes are not all under "
                         f"{FLEET_PREFIX}: the Fleet-only listener cannot be set up")
    return fleet


class FleetOnly:
    """An ASGI application that passes only the given exact paths to ``app``."""

    def __init__(self, app: ASGIApp, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward a Fleet API request; answer 404 to any other request."""
        if scope["type"] == "http" and scope.get("path") in self.paths:
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            body = b'{"detail": "not found on the Fleet API listener"}'
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6) as (host, port); a clear error otherwise."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise MedflError(f"address {address!r} is not host:port (e.g. 0.0.0.0:9091)")
    return host, int(port)


def check_loopback(host: str) -> None:
    """Refuse a control/runtime host that is not a loopback address."""
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise MedflError(f"--host {host!r}: the Control and Runtime APIs have no user "
                         "authentication in open-source Flower, so they must listen on a "
                         "loopback address (127.0.0.1 or ::1); put the SuperNodes' address "
                         "in --fleet-address")


class _Server:
    """A uvicorn server whose signals the launcher handles (one handler for both)."""

    @staticmethod
    def make(config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Generator[None, None, None]:
                yield

        return Server(config)


async def _serve_both(servers: Sequence[Any]) -> None:
    def stop(signum: int, _frame: object) -> None:
        for server in servers:
            server.should_exit = True

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    # the full application first: its lifespan starts Flower's state and SuperExec
    tasks = [asyncio.create_task(servers[0].serve())]
    while not servers[0].started and not tasks[0].done():
        await asyncio.sleep(0.05)
    tasks.append(asyncio.create_task(servers[1].serve()))
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    stop(signal.SIGTERM, None)  # one listener stopped (e.g. its port was taken): stop both
    await asyncio.gather(*tasks, return_exceptions=True)
    for task in done:
        task.result()


def main(argv: Sequence[str] | None = None) -> None:
    """``medfl superlink --fleet-address HOST:PORT [flower-superlink options]``."""
    import importlib

    import uvicorn
    from flwr.supercore.http_logging import get_uvicorn_log_config
    from flwr.supercore.logger import console_handler
    from flwr.superlink.main import create_app

    # the module, not the function of the same name that flwr.superlink.cli re-exports
    flower = importlib.import_module("flwr.superlink.cli.flower_superlink")

    parser = argparse.ArgumentParser(prog="medfl superlink", add_help=False)
    parser.add_argument("--fleet-address", required=True)
    ours, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    fleet_host, fleet_port = split_address(ours.fleet_address)
    sys.argv = ["flower-superlink", *rest]
    config = flower._parse_superlink_lifespan_config()
    check_loopback(config.host)
    app = create_app(config, flower.SuperLinkLifespan)
    tls = {"ssl_keyfile": config.ssl_keyfile, "ssl_certfile": config.ssl_certfile}
    log_config = get_uvicorn_log_config(console_handler.level)
    servers = [
        _Server.make(uvicorn.Config(app, host=config.host, port=config.port, workers=1,
                                    log_config=log_config, **tls)),
        _Server.make(uvicorn.Config(FleetOnly(app, fleet_paths()), host=fleet_host,
                                    port=fleet_port, lifespan="off", workers=1,
                                    log_config=log_config, **tls)),
    ]
    asyncio.run(_serve_both(servers))


if __name__ == "__main__":
    try:
        main()
    except MedflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
