"""The coordinator's control plane: only the operator on the SuperLink's host submits runs
and registers sites. A real TLS SuperLink started by deploy/start-superlink.sh; an outsider
holds the consortium's CA certificate (public) and an EC key of its own, and reaches the
address the SuperNodes use (the deployment test is marked slow: real processes)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medfl.deployment import certs
from medfl.deployment.local import ROOT
from medfl.deployment.processes import free_port, stop_tree
from medfl.errors import MedflError
from medfl.federation.superlink import FleetOnly, check_loopback, fleet_paths


def _status(app: FleetOnly, path: str) -> int:
    """The HTTP status ``app`` answers a POST to ``path`` with."""
    sent: list[dict] = []

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(app({"type": "http", "method": "POST", "path": path}, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start")


def test_the_sites_listener_answers_only_the_fleet_api():
    async def flower(scope, receive, send):  # stands for Flower's whole SuperLink app
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    app = FleetOnly(flower, fleet_paths())
    assert _status(app, "/v1/fleet/pull-messages") == 200
    assert _status(app, "/v1/fleet/register-node") == 200  # a registered key's session
    for path in ("/v1/control/register-node", "/v1/control/start-run",
                 "/v1/runtime/push-messages", "/v1/fleet/../control/start-run",
                 "/v1/fleet", "/docs", "/openapi.json", "//v1/control/start-run"):
        assert _status(app, path) == 404, path


def test_the_control_api_may_not_listen_on_a_network_address():
    for host in ("0.0.0.0", "::", "203.0.113.10", "fl.example.org"):
        with pytest.raises(MedflError, match="must listen on a loopback address"):
            check_loopback(host)
    check_loopback("127.0.0.1")
    check_loopback("::1")


def _listening(port: int) -> list[str]:
    """The local addresses of the sockets listening on TCP ``port`` (from /proc/net)."""
    found = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, hexport = fields[1].split(":")
            if fields[3] != "0A" or int(hexport, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(addr)
            # /proc/net holds each 32-bit word in host (little-endian) order
            words = b"".join(raw[i:i + 4][::-1] for i in range(0, width, 4))
            found.append(str(ipaddress.ip_address(words)))
    return found


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_LOCAL_")}
    env.update(FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1", FLWR_TELEMETRY_ENABLED="0",
               FLWR_DISABLE_UPDATE_CHECK="1", PYTHONPATH=str(ROOT),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
               **extra)
    return env


def _flwr(home: Path, address: str, ca: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The flwr CLI with one connection, ``link``, to ``address`` (TLS, trusting ``ca``)."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "link"\n\n[superlink.link]\naddress = "{address}"\n'
        f'root-certificates = "{ca}"\n')
    return subprocess.run([str(Path(sys.executable).parent / "flwr"), *args],
                          env=_env(home, FLWR_HOME=str(home)), cwd=home, capture_output=True,
                          text=True, timeout=120)


def _wait_listening(port: int, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)
    raise AssertionError(f"the SuperLink did not listen on {port}: {log.read_text()[-3000:]}")


@pytest.mark.slow
def test_an_outsider_with_the_ca_cannot_register_a_site_or_submit_a_run(tmp_path):
    folder = tmp_path / "certs"
    certs.init_ca(folder)
    site = certs.add_site(folder, "cleveland")
    intruder = certs.add_site(tmp_path / "outsider", "intruder")  # its own EC P-384 key
    ca = folder / certs.CA_CERT
    fleet, control = free_port(), free_port()
    log = tmp_path / "start-superlink.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["sh", str(ROOT / "deploy" / "start-superlink.sh")], cwd=tmp_path,
            env=_env(tmp_path, CERTS=str(folder), STATE=str(tmp_path / "state"),
                     PORT=str(fleet), CONTROL_PORT=str(control)),
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_listening(fleet, proc, log)
        outsider = tmp_path / "outsider-home"
        registered = _flwr(outsider, f"127.0.0.1:{fleet}", ca, "supernode", "register",
                           str(intruder.public_key), "link", "--format", "json")
        assert registered.returncode != 0 or "node-id" not in registered.stdout, \
            registered.stdout
        submitted = _flwr(outsider, f"127.0.0.1:{fleet}", ca, "run", str(ROOT), "link",
                          "--run-config", "num-server-rounds=1")
        assert submitted.returncode != 0, submitted.stdout
        # the control port listens, on loopback only
        _wait_listening(control, proc, log)
        addresses = _listening(control)
        assert addresses and all(ipaddress.ip_address(a).is_loopback for a in addresses), \
            addresses
        # the operator, on the host, finds neither the outsider's key nor a run, and can
        # register a site
        operator = tmp_path / "operator-home"
        nodes = _flwr(operator, f"127.0.0.1:{control}", ca, "supernode", "list", "link",
                      "--format", "json")
        assert json.loads(nodes.stdout)["nodes"] == [], nodes.stdout
        runs = _flwr(operator, f"127.0.0.1:{control}", ca, "ls", "link", "--format", "json")
        assert json.loads(runs.stdout)["runs"] == [], runs.stdout
        ok = _flwr(operator, f"127.0.0.1:{control}", ca, "supernode", "register",
                   str(site.public_key), "link", "--format", "json")
        assert int(json.loads(ok.stdout)["node-id"]) > 0, ok.stdout + ok.stderr
    finally:
        stop_tree(proc)
