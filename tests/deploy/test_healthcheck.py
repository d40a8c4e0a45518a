"""deploy/healthcheck.py, the containers' health check, against real local servers: plain
HTTP (the API's /health, a SuperNode's Runtime API) and TLS with the consortium's CA (the
SuperLink's Fleet listener, which answers 404 to a path that is not a Fleet route)."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.healthcheck import check, main
from medfl.deployment import certs


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200 if self.path == "/health" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@contextmanager
def _server(tls: ssl.SSLContext | None = None) -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_any_reply_is_healthy_unless_a_status_is_asked():
    with _server() as port:
        assert check(f"http://127.0.0.1:{port}/health", status=200) is None
        assert check(f"http://127.0.0.1:{port}/") is None  # 404: it answers all the same
        problem = check(f"http://127.0.0.1:{port}/", status=200)
        assert problem is not None and "answered 404, expected 200" in problem
        assert main([f"http://127.0.0.1:{port}/health", "--status", "200"]) == 0
        assert main([f"http://127.0.0.1:{port}/", "--status", "200"]) == 1


def test_a_closed_port_is_unhealthy_and_says_so(capsys):
    url = f"http://127.0.0.1:{_closed_port()}/"
    assert "no answer" in (check(url) or "")
    assert main([url]) == 1
    assert url in capsys.readouterr().err


def test_tls_is_verified_with_the_consortium_ca(tmp_path: Path):
    certs.init_ca(tmp_path / "a")
    certs.init_ca(tmp_path / "b")  # another consortium's CA
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(tmp_path / "a" / certs.SERVER_CERT, tmp_path / "a" / certs.SERVER_KEY)
    with _server(tls) as port:
        url = f"https://127.0.0.1:{port}/"
        assert check(url, ca=str(tmp_path / "a" / certs.CA_CERT)) is None
        problem = check(url, ca=str(tmp_path / "b" / certs.CA_CERT))
        assert problem is not None and "CERTIFICATE_VERIFY_FAILED" in problem


def test_a_listener_that_does_not_speak_http_is_unhealthy():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]

        def answer_garbage() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"SSH-2.0-not-http\r\n")

        thread = threading.Thread(target=answer_garbage, daemon=True)
        thread.start()
        problem = check(f"http://127.0.0.1:{port}/")
        thread.join(timeout=5)
    assert problem is not None and "no answer" in problem
