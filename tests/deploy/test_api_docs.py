"""The API's /docs and /redoc on a closed network: their HTML names no outside host, every
asset it references is served by the service itself (behind the key, like the pages),
and headless Chromium, with every outside host unresolvable, renders the endpoints; it
renders a run's report.html too."""

from __future__ import annotations

import contextlib
import io
import re
import shutil
import socket
import subprocess
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import SecretStr

from deploy.api import Settings, create_app

KEY = {"X-API-Key": "docs-key-0123456789"}
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Headless, no profile state, nothing fetched in the background, and every host but
#: loopback unresolvable: the page gets only what this machine serves.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync",
                  "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
                  "--window-size=1280,1400", "--virtual-time-budget=10000")
ENDPOINTS = {"/predict", "/explain", "/health", "/model", "/model-card"}
#: The sections of a run's report.html, in order.
REPORT_SECTIONS = ["Summary", "Data", "Subgroups", "Fairness", "Training", "Privacy",
                   "Explanations", "Methods", "Limitations"]


class _Page(HTMLParser):
    """Every attribute value, text node and <h2> heading of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.attrs: list[tuple[str, str]] = []
        self.texts: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.attrs += [(k, v) for k, v in attrs if v is not None]
        self._in_h2 = tag == "h2"

    def handle_endtag(self, tag: str) -> None:
        self._in_h2 = False if tag == "h2" else self._in_h2

    def handle_data(self, data: str) -> None:
        self.texts.append(data.strip())
        if self._in_h2:
            self.h2.append(data.strip())


def _referenced(html: str) -> set[str]:
    """The URLs a docs page loads: src/href/spec-url attributes and Swagger UI's spec url."""
    page = _Page(html)
    urls = {v for k, v in page.attrs if k in ("src", "href", "spec-url")}
    return urls | set(re.findall(r"\burl: '([^']+)'", html))


@pytest.fixture(scope="module")
def client(run_dir):
    settings = Settings(bundle=run_dir, api_key=SecretStr(KEY["X-API-Key"]))
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.mark.parametrize("path, asset_count", [("/docs", 4), ("/redoc", 3)])
def test_docs_reference_no_outside_host_and_every_asset_is_served(client, path, asset_count):
    r = client.get(path, headers=KEY)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "://" not in r.text and not re.search(r"""["'(]//""", r.text)  # no host at all
    urls = _referenced(r.text)
    # css + js + favicon + the schema (+ Swagger UI's own script): nothing went missing
    assert len(urls) == asset_count, urls
    for url in urls:
        assert url.startswith("/") and not url.startswith("//"), url
        asset = client.get(url, headers=KEY)
        assert asset.status_code == 200 and len(asset.content) > 1000, url
        assert client.get(url).status_code == 401, url  # behind the key, like the page


def test_the_swagger_ui_bundle_is_the_installed_packages(client):
    import fastapi_offline

    html = client.get("/docs", headers=KEY).text
    (js,) = [u for u in _referenced(html) if u.endswith(".js")]
    static = Path(fastapi_offline.__file__).parent / "static" / Path(js).name
    assert client.get(js, headers=KEY).content == static.read_bytes()


# --- a real browser ---------------------------------------------------------------------


@contextlib.contextmanager
def _served(app):
    """``app`` under uvicorn on a free loopback port, in a thread; yields its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 60
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                pytest.fail("uvicorn did not start")
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


def _render(url: str, tmp_path: Path, screenshot: Path) -> _Page:
    """Load ``url`` in headless Chromium; save a screenshot, return the DOM after JS."""
    out = subprocess.run(
        [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
         f"--screenshot={screenshot}", "--dump-dom", url],
        capture_output=True, text=True, timeout=90, check=True)
    return _Page(out.stdout)


def _assert_not_blank(png: Path) -> None:
    pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("L"), dtype=float)
    assert pixels.shape == (1400, 1280)
    assert pixels.var() > 100  # a white page (what a CDN-less /docs was) has variance 0
    assert (pixels < 128).mean() > 0.005  # and some dark ink: text was drawn


needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="needs Chromium (apt-get install chromium)")


@pytest.fixture(scope="module")
def served(run_dir):
    with _served(create_app(Settings(bundle=run_dir))) as url:  # no key: loopback only
        yield url


@needs_chromium
def test_chromium_renders_swagger_ui_with_every_endpoint_offline(served, tmp_path):
    docs = _render(f"{served}/docs", tmp_path, tmp_path / "docs.png")
    # Swagger UI marks each operation with its path once it has rendered the schema.
    assert {v for k, v in docs.attrs if k == "data-path"} == ENDPOINTS
    _assert_not_blank(tmp_path / "docs.png")


@needs_chromium
def test_chromium_renders_redoc_with_every_endpoint_offline(served, tmp_path):
    redoc = _render(f"{served}/redoc", tmp_path, tmp_path / "redoc.png")
    assert ENDPOINTS <= set(redoc.texts)
    _assert_not_blank(tmp_path / "redoc.png")


@needs_chromium
def test_chromium_renders_every_section_of_a_runs_report(run_dir, tmp_path):
    report = _render((run_dir / "report.html").as_uri(), tmp_path, tmp_path / "report.png")
    assert report.h2 == REPORT_SECTIONS
    assert sum(1 for k, v in report.attrs if k == "class" and v == "banner") == 1
    assert sum(1 for k, _ in report.attrs if k == "viewbox") >= 3  # inline SVG figures
    _assert_not_blank(tmp_path / "report.png")
