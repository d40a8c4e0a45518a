"""The Guard middleware's body handling, driven as a bare ASGI app: bodies are counted as
they arrive, refused the moment they pass the limit, spooled to a temporary file rather
than held in memory, replayed whole, and leave nothing behind."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import tempfile
import tracemalloc
from pathlib import Path

import pytest

from deploy.api.guard import SPOOL_BYTES, Guard

CHUNK = 64 << 10


def _scope(length: int | None = None) -> dict:
    headers = [] if length is None else [(b"content-length", str(length).encode())]
    return {"type": "http", "path": "/predict", "method": "POST", "headers": headers,
            "server": ("127.0.0.1", 8000)}


def _chunks(n: int, size: int = CHUNK):
    """A receive callable handing out ``n`` chunks of ``size`` bytes, made on demand (the
    test holds none of them), counting how many were asked for."""
    state = {"asked": 0}

    async def receive() -> dict:
        i = state["asked"]
        state["asked"] += 1
        if i >= n:
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": bytes([i % 251]) * size,
                "more_body": i < n - 1}

    return receive, state


def _expected_sha(n: int, size: int = CHUNK) -> str:
    digest = hashlib.sha256()
    for i in range(n):
        digest.update(bytes([i % 251]) * size)
    return digest.hexdigest()


class _Sink:
    """The app behind the Guard: reads the whole body, hashing it, and notes whether the
    body was in a file under ``spool`` while it was read."""

    def __init__(self, spool: Path) -> None:
        self.spool, self.sha, self.size, self.called, self.on_disk = spool, None, 0, False, False

    async def __call__(self, scope, receive, send) -> None:
        self.called = True
        digest, more = hashlib.sha256(), True
        while more:
            message = await receive()
            digest.update(message["body"])
            self.size += len(message["body"])
            more = message["more_body"]
        self.on_disk = bool(_open_files_under(self.spool))
        self.sha = digest.hexdigest()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _open_files_under(folder: Path) -> list[str]:
    """This process's open file descriptors that point into ``folder`` (Linux)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # closed between listing and reading
        if target.startswith(str(folder)):
            found.append(target)
    return found


@pytest.fixture
def spool(tmp_path, monkeypatch):
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc to see open files")
    folder = tmp_path / "spool"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def _call(guard: Guard, scope: dict, receive) -> list[dict]:
    sent: list[dict] = []

    async def send(message: dict) -> None:
        sent.append(message)

    asyncio.run(guard(scope, receive, send))
    return sent


def test_a_body_past_the_limit_is_413_as_soon_as_the_count_passes_it(spool):
    sink = _Sink(spool)
    guard = Guard(sink, limit=lambda: 10 * CHUNK + 5, api_key=None)
    receive, state = _chunks(40)  # 40 chunks, no declared length
    sent = _call(guard, _scope(), receive)
    assert sent[0]["status"] == 413 and not sink.called
    detail = json.loads(sent[1]["body"])["detail"]
    assert str(10 * CHUNK + 5) in detail and "MEDFL_MAX_BODY_BYTES" in detail
    assert state["asked"] == 11  # the 11th chunk passed the limit: nothing more was read
    assert list(spool.iterdir()) == [] and _open_files_under(spool) == []


def test_a_declared_length_past_the_limit_is_413_before_anything_is_read(spool):
    guard = Guard(_Sink(spool), limit=lambda: 1000, api_key=None)
    receive, state = _chunks(1)
    sent = _call(guard, _scope(length=1001), receive)
    assert sent[0]["status"] == 413 and state["asked"] == 0
    assert "1000 bytes" in json.loads(sent[1]["body"])["detail"]


def test_a_large_body_is_spooled_to_disk_and_replayed_whole(spool):
    n = 384  # 24 MiB, under a 30 MB limit
    sink = _Sink(spool)
    guard = Guard(sink, limit=lambda: 30_000_000, api_key=None)
    receive, _ = _chunks(n)
    tracemalloc.start()
    try:
        sent = _call(guard, _scope(), receive)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sent[0]["status"] == 200
    assert sink.size == n * CHUNK and sink.sha == _expected_sha(n)
    assert sink.on_disk  # past SPOOL_BYTES the body was in a file while the app read it
    # Held in memory, the 24 MiB body would peak at 24 MiB (48 when joined); spooled, at
    # the in-memory spool plus a few chunks.
    assert peak < SPOOL_BYTES + 16 * CHUNK + (2 << 20)
    assert list(spool.iterdir()) == [] and _open_files_under(spool) == []


def test_a_small_body_stays_in_memory_and_is_replayed_whole(spool):
    sink = _Sink(spool)
    guard = Guard(sink, limit=lambda: SPOOL_BYTES, api_key=None)
    receive, _ = _chunks(3, size=1000)
    assert _call(guard, _scope(), receive)[0]["status"] == 200
    assert sink.size == 3000 and sink.sha == _expected_sha(3, size=1000)
    assert not sink.on_disk


def test_an_empty_body_reaches_the_app(spool):
    sink = _Sink(spool)
    guard = Guard(sink, limit=lambda: 10, api_key=None)

    async def receive() -> dict:
        return {"type": "http.request", "body": b"", "more_body": False}

    assert _call(guard, _scope(), receive)[0]["status"] == 200
    assert sink.size == 0 and sink.sha == hashlib.sha256().hexdigest()


def test_a_client_that_disconnects_mid_body_gets_no_answer_and_leaves_nothing(spool):
    sink = _Sink(spool)
    guard = Guard(sink, limit=lambda: 30_000_000, api_key=None)
    receive, _ = _chunks(40)

    async def cut_off() -> dict:
        message = await receive()
        return message if message["body"][:1] != bytes([30]) else {"type": "http.disconnect"}

    assert _call(guard, _scope(), cut_off) == [] and not sink.called
    assert list(spool.iterdir()) == [] and _open_files_under(spool) == []
