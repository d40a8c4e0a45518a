"""The processes of a loopback federation: free ports, process trees, stopping them.

Flower's SuperExec starts its own session, so a SuperNode's ClientApps are found through
``/proc`` (parent links and ``--parent-pid``), not through a process group.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

_GIVEN: set[int] = set()
_GIVEN_LOCK = threading.Lock()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago, and never one this process gave
    out before: Linux can answer two binds to port 0 in a row with the same port, and two
    SuperNodes started together then fight over it (seen here)."""
    with _GIVEN_LOCK:
        for _ in range(1000):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = int(s.getsockname()[1])
            if port not in _GIVEN:
                _GIVEN.add(port)
                return port
    raise OSError(f"no loopback port left that this process has not given out "
                  f"({len(_GIVEN)} given)")


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants, also those already orphaned. Flower's SuperExec
    starts its own session and names its parent only as ``--parent-pid``, so neither a
    process group nor the parent links alone hold everything a SuperNode started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or (st := _proc_stat(int(entry.name))) is None:
            continue
        children.setdefault(st[1], []).append(int(entry.name))
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"--parent-pid" in argv and argv.index(b"--parent-pid") + 1 < len(argv):
            named = argv[argv.index(b"--parent-pid") + 1]
            if named.isdigit() and st[1] != int(named):
                children.setdefault(int(named), []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        if pid not in tree:
            tree.append(pid)
            todo.extend(children.get(pid, []))
    return tree


def alive(pids: list[int]) -> list[int]:
    """The processes of ``pids`` still running (zombies count as gone)."""
    return [p for p in pids if (st := _proc_stat(p)) is not None and st[0] != "Z"]


def stop_tree(proc: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM a process and its descendants, then SIGKILL what is left after ``grace``."""
    stop_trees([proc], grace=grace)


def stop_trees(procs: Sequence[subprocess.Popen], *, grace: float = 10.0) -> None:
    """:func:`stop_tree` for several processes at once: one grace period for all."""
    pids = [pid for proc in procs for pid in process_tree(proc.pid)]
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        for pid in alive(pids):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            for proc in procs:
                proc.poll()
            if not alive(pids):
                return
            time.sleep(0.1)
