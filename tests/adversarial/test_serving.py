"""Attacks on the prediction service (issue 18, point 8 and point 9's unsigned reports),
each against a real ``medfl serve`` (uvicorn) process over HTTP.

Memory is read from the server process itself: ``VmHWM`` in ``/proc/<pid>/status`` is
its peak resident set, so a request that decodes a bomb raises it for good, whatever
the allocator returns afterwards. Bombs are built here: a 4096 x 4096 PNG of zeros is
16 KB, a gzip of 512 MiB of zeros half a megabyte.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from medfl.deployment.processes import free_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
KEY = "k-adversarial-0123456789"
HEADERS = {"X-API-Key": KEY}
MIB = 1 << 20
#: Generous: a refused bomb should cost a few MB; decoding one costs hundreds.
MAX_GROWTH = 64 * MIB


def _start(run: Path, *args: str, **env_extra: str) -> tuple[subprocess.Popen, int]:
    """``medfl serve RUN`` from this checkout (PYTHONPATH), without any MEDFL_* variable
    the test does not set."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDFL_")}
    env.update(PYTHONPATH=str(ROOT), **env_extra)
    proc = subprocess.Popen([str(Path(sys.executable).parent / "medfl"), "serve", str(run),
                             "--port", str(port), *args], env=env, cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return proc, port


def _stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


@contextlib.contextmanager
def _serve(run: Path, *args: str, **env_extra: str):
    """A running server on a free loopback port; yields (url, pid)."""
    proc, port = _start(run, *args, **env_extra)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            time.sleep(0.3)
        else:
            pytest.fail(f"medfl serve did not come up:\n{_stop(proc)[-2000:]}")
        yield url, proc.pid
    finally:
        _stop(proc)


def _exit_of(run: Path, *args: str, **env_extra: str) -> tuple[int | None, str]:
    """Start ``medfl serve``; its exit code and output, or None if still up after 60 s."""
    proc, _ = _start(run, *args, **env_extra)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        return None, _stop(proc)
    return proc.returncode, _stop(proc)


def _peak_rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM in /proc status")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _nii_gz(shape: tuple[int, ...], dtype, data: bytes, *, zeros: int = 0) -> bytes:
    """A gzip-compressed NIfTI-1: header for ``shape``/``dtype``, then ``data``, then
    ``zeros`` bytes of zeros, compressed chunk by chunk (never held inflated here)."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header.set_data_offset(352)
    stream = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [stream.compress(header.binaryblock + b"\0" * 4 + data)]
    chunk = bytes(MIB)
    parts += [stream.compress(chunk) for _ in range(zeros // MIB)]
    return b"".join([*parts, stream.flush()])


def _post(url: str, *blobs: bytes, path: str = "/predict") -> httpx.Response:
    files = [("files", (f"f{i}", b, "application/octet-stream")) for i, b in enumerate(blobs)]
    return httpx.post(f"{url}{path}", files=files, headers=HEADERS, timeout=120)


@pytest.fixture(scope="module")
def image_server(image_run):
    """The imaging service with one decoding slot and no waiting for it."""
    with _serve(image_run[0], MEDFL_API_KEY=KEY, MEDFL_MAX_CONCURRENT_DECODES="1",
                MEDFL_DECODE_WAIT_S="0") as served:
        url, _ = served
        small = _png((np.arange(64 * 64).reshape(64, 64) % 251).astype(np.uint8))
        assert _post(url, small).status_code == 200  # warm: lazy imports, first forward
        yield served


# --- amplification: refused from the header, before any pixel is decoded ----------------

def test_a_png_declaring_4096_squared_pixels_is_refused_before_decoding(image_server):
    url, pid = image_server
    bomb = _png(np.zeros((4096, 4096), np.uint8))
    assert len(bomb) < 64_000  # tiny on the wire
    before = _peak_rss(pid)
    r = _post(url, bomb)
    grown = _peak_rss(pid) - before
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "4096 x 4096" in detail and "16777216 pixels" in detail
    assert "at most 6710886 pixels" in detail and r.json()["field"] == "files[0]"
    assert grown < MAX_GROWTH, f"the refused PNG still cost {grown / MIB:.0f} MiB"


def test_a_nii_gz_bomb_is_refused_without_inflating_it(image_server):
    url, pid = image_server
    bomb = _nii_gz((8192, 8192, 8), np.uint8, b"", zeros=512 * MIB)
    assert len(bomb) < 1_000_000
    before = _peak_rss(pid)
    r = _post(url, bomb)
    grown = _peak_rss(pid) - before
    assert r.status_code == 413, r.text
    assert "8192 x 8192 x 8" in r.json()["detail"]
    assert grown < MAX_GROWTH, f"the refused NIfTI still cost {grown / MIB:.0f} MiB"


def test_a_nii_gz_is_inflated_only_as_far_as_its_header_declares(image_server):
    # A small 2-D slice followed by 512 MiB of trailing zeros in the same gzip stream:
    # the slice is read, the tail never inflated.
    url, pid = image_server
    pixels = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    blob = _nii_gz((64, 64), np.float32, pixels.tobytes(), zeros=512 * MIB)
    before = _peak_rss(pid)
    r = _post(url, blob)
    grown = _peak_rss(pid) - before
    assert r.status_code == 200, r.text
    assert set(r.json()["predictions"][0]["probabilities"]) == {"absent", "present"}
    assert grown < MAX_GROWTH, f"the trailing gzip data cost {grown / MIB:.0f} MiB"


def test_concurrent_decoding_is_bounded_and_the_rest_get_503(image_server):
    # One slot, no wait: of six simultaneous requests of four 1500 x 1500 images each,
    # those that find the slot taken are told to retry; the others are answered.
    url, _ = image_server
    grid = np.add.outer(np.arange(1500), np.arange(1500)) % 256
    blobs = [_png(((grid + k) % 256).astype(np.uint8)) for k in range(4)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        answers = list(pool.map(lambda _: _post(url, *blobs), range(6)))
    codes = sorted(r.status_code for r in answers)
    assert set(codes) == {200, 503} and codes.count(200) >= 1, codes
    busy = next(r for r in answers if r.status_code == 503)
    assert busy.headers["retry-after"] == "5" and "slots are busy" in busy.json()["detail"]


# --- no API key: loopback only ----------------------------------------------------------

def test_serve_on_a_network_host_without_an_api_key_refuses_to_start(image_run):
    code, out = _exit_of(image_run[0], "--host", "0.0.0.0")
    assert code == 2, out[-2000:]
    assert "without an API key" in out and "MEDFL_API_KEY" in out
    # with a key it serves (image_server); on loopback without one too: the server of
    # test_a_bundle_signed_without_its_reports_serves_neither has no key (one start fewer)


# --- report.json and MODEL_CARD.md are covered by the bundle's signature -----------------

@pytest.fixture
def signed_run(image_run, tmp_path):
    from medfl.serving.signing import generate_keypair, sign_bundle

    run = tmp_path / "run"
    shutil.copytree(image_run[0], run)
    priv, pub = generate_keypair(tmp_path / "keys")
    sign_bundle(run / "model", priv)
    return run, priv, pub


@pytest.mark.parametrize("name", ["report.json", "MODEL_CARD.md"])
def test_a_tampered_report_or_model_card_is_refused(signed_run, name):
    run, _, pub = signed_run
    path = run / name
    original = path.read_bytes()
    if name == "report.json":  # quietly improve the pooled figures
        report = json.loads(path.read_text())
        for population in report["populations"]:
            for metric in population["metrics"].values():
                if isinstance(metric.get("value"), float):
                    metric["value"] = min(1.0, metric["value"] + 0.2)
        path.write_text(json.dumps(report))
    else:
        path.write_text(path.read_text() + "\nValidated for clinical use.\n")
    assert path.read_bytes() != original
    code, out = _exit_of(run, MEDFL_API_KEY=KEY, MEDFL_PUBLIC_KEY=str(pub))
    assert code == 2, out[-2000:]
    assert f"{name} does not match the sha256" in out


def test_a_bundle_signed_without_its_reports_serves_neither(signed_run):
    # As bundles were signed before: the signature covers a manifest listing no reports.
    from cryptography.hazmat.primitives import serialization

    run, priv, pub = signed_run
    manifest = json.loads((run / "model" / "manifest.json").read_text())
    del manifest["signed_files"]
    data = json.dumps(manifest).encode()
    (run / "model" / "manifest.json").write_bytes(data)
    key = serialization.load_pem_private_key(priv.read_bytes(), password=None)
    (run / "model" / "signature.ed25519").write_bytes(base64.b64encode(key.sign(data)))
    # no API key: on loopback it serves anyway (the other half of the network-host test)
    with _serve(run, MEDFL_PUBLIC_KEY=str(pub)) as (url, _):
        card = httpx.get(f"{url}/model-card")
        assert card.status_code == 404 and "not covered" in card.json()["detail"]
        model = httpx.get(f"{url}/model")
        assert model.status_code == 200, model.text
        assert model.json()["metrics_with_ci"] is None and model.json()["weights_sha256"]
