"""Keep Flower's local simulation inside the project checkout (stdlib only).

``flwr run .`` against ``:local:`` starts a detached SuperLink that lives in
``$FLWR_HOME`` (default ``~/.flwr``) and listens on fixed ports (39091/39093). MedFL sets
``FLWR_HOME`` to ``<checkout>/.flwr`` and derives the ports from the checkout's path, so a
run never reads a user's global Flower state and two checkouts never share a SuperLink.
The Makefile and the virtualenv's ``activate`` script get the values from here.

Usage::

    python -m medfl.localsim port                 # the checkout's base port
    python -m medfl.localsim activate PATH        # append the exports to an activate script
    python -m medfl.localsim stop                 # stop this checkout's local SuperLink
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
import zlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MARK = "# >>> medfl flower environment >>>"


def base_port(root: Path = ROOT) -> int:
    """An even port in [21000, 29000) derived from the checkout path.

    The range sits below Linux's ephemeral ports (32768+), so an outgoing connection never
    holds it; 4000 slots make a clash between two checkouts unlikely, not impossible.
    """
    return 21000 + 2 * (zlib.crc32(str(root).encode()) % 4000)


def free_port_pair() -> int:
    """A free loopback port p with p + 1 free too (a local SuperLink's two APIs)."""
    for _ in range(50):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
        if port >= 65000:
            continue
        try:
            with socket.socket() as b:
                b.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair on loopback")


def flower_env(root: Path = ROOT, *, port: int | None = None) -> dict[str, str]:
    """Environment variables under which ``flwr run .`` behaves as MedFL expects."""
    port = base_port(root) if port is None else port
    return {
        "MEDFL_HOME": str(root),
        "FLWR_HOME": str(root / ".flwr"),
        "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(port),
        "FLWR_LOCAL_CONTROL_API_PORT": str(port + 1),
        # Without this the SuperLink runs `uv sync` per run and may install another torch.
        "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
        "FLWR_TELEMETRY_ENABLED": "0",
        "FLWR_DISABLE_UPDATE_CHECK": "1",
    }


def write_activate_hook(activate: Path, root: Path = ROOT) -> None:
    """Append the exports to a virtualenv ``activate`` script, once."""
    text = activate.read_text()
    if MARK in text:
        return
    lines = [MARK] + [f'export {k}="{v}"' for k, v in flower_env(root).items()]
    lines.append("# <<< medfl flower environment <<<")
    activate.write_text(text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


def superlink_pids(flwr_home: Path) -> list[int]:
    """PIDs of ``flower-superlink`` processes whose command line names ``flwr_home``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "flower-superlink" in cmd and str(flwr_home) in cmd:
            pids.append(int(proc.name))
    return pids


def stop_superlink(flwr_home: Path, *, timeout: float = 10.0) -> int:
    """Terminate (then kill) the local SuperLink started under ``flwr_home``; return count."""
    pids = superlink_pids(flwr_home)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
        time.sleep(0.2)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(pids)


def main(argv: list[str]) -> int:
    """``python -m medfl.localsim port|activate <file>|stop`` (the Makefile's helper)."""
    if argv[:1] == ["port"]:
        print(base_port())
    elif argv[:1] == ["activate"] and len(argv) == 2:
        write_activate_hook(Path(argv[1]))
    elif argv[:1] == ["stop"]:
        home = Path(os.environ.get("FLWR_HOME", ROOT / ".flwr"))
        print(f"stopped {stop_superlink(home)} local SuperLink process(es)")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
