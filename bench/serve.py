"""Latency and throughput of `medfl serve` against the in-process forward pass.

    .venv/bin/python -m bench.serve [--requests 400] [--part tabular|image|both]

Trains a quick model (2 rounds, in-process), starts `medfl serve` on loopback and measures,
side by side in one run: the in-process prediction of one record (validation,
preprocessing, forward), `GET /health`, and `POST /predict` with one record, at 1 and 8
concurrent clients (p50/p99 latency, requests/s). Then the same for an imaging model
(ResNet on the synthetic hospitals, 64 x 64): one 16-bit PNG uploaded as multipart against
`ImageModel.predict` on the same bytes. Writes two tables to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from bench import inprocess
from bench.report import write_section
from medfl.serving import ImageModel, TabularModel, load_bundle

RECORD = {"age": 63, "sex": 1, "cp": 4, "trestbps": 145, "chol": 233, "fbs": 1,
          "restecg": 2, "thalach": 150, "exang": 0, "oldpeak": 2.3}


def _quantiles(ms: list[float]) -> tuple[float, float]:
    q = statistics.quantiles(ms, n=100)
    return statistics.median(ms), q[98]


def _request(c: httpx.Client, url: str, method: str, image: bytes | None) -> float:
    t = time.perf_counter()
    if method == "health":
        r = c.get(f"{url}/health")
    elif image is not None:
        r = c.post(f"{url}/predict", files=[("files", ("x.png", image))])
    else:
        r = c.post(f"{url}/predict", json={"records": [RECORD]})
    r.raise_for_status()
    return 1000 * (time.perf_counter() - t)


def _load(url: str, method: str, n: int, clients: int,
          image: bytes | None = None) -> tuple[float, float, float]:
    def one(_):
        with httpx.Client(timeout=30) as c:  # one connection per client thread
            return [_request(c, url, method, image) for _ in range(n // clients)]

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        ms = [x for chunk in pool.map(one, range(clients)) for x in chunk]
    rps = len(ms) / (time.perf_counter() - start)
    p50, p99 = _quantiles(ms)
    return p50, p99, rps


def _paired(url: str, n: int, image: bytes | None) -> dict[str, tuple[float, float, float]]:
    """One client alternating ``/health`` and ``/predict``, so that both see the same
    machine (a shared machine's load drifts between two blocks of requests)."""
    ms: dict[str, list[float]] = {"health": [], "predict": []}
    with httpx.Client(timeout=30) as c:
        for _ in range(n):
            for method in ms:
                ms[method].append(_request(c, url, method, image))
    # requests/s of each kind alone: 1000 over its mean latency
    return {m: (*_quantiles(v), 1000 / statistics.mean(v)) for m, v in ms.items()}


def _start(run_dir: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "MEDFL_API_KEY"}
    proc = subprocess.Popen([str(Path(sys.executable).parent / "medfl"), "serve",
                             str(run_dir), "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.2)
    return url, proc


def _measure(run_dir: Path, predict, n: int,
             image: bytes | None) -> tuple[list, dict[str, float]]:
    """Rows for one model: in-process predict, then /health and /predict at 1 client
    (alternating, :func:`_paired`) and 8; and the p50s at 1 client (``health``,
    ``predict``, ``inprocess``)."""
    predict()
    forward = []
    for _ in range(n):
        t = time.perf_counter()
        predict()
        forward.append(1000 * (time.perf_counter() - t))
    url, proc = _start(run_dir)
    try:
        _load(url, "predict", 40, 1, image)  # warm-up
        paired = _paired(url, n, image)
        rows = [(f"`{'GET /health' if m == 'health' else 'POST /predict'}`", "1",
                 f"{p50:.2f}", f"{p99:.2f}", f"{rps:.0f}")
                for m, (p50, p99, rps) in paired.items()]
        health1, predict1 = paired["health"][0], paired["predict"][0]
        for method in ("health", "predict"):
            p50, p99, rps = _load(url, method, n, 8, image)
            rows.append((f"`{'GET /health' if method == 'health' else 'POST /predict'}`",
                         "8", f"{p50:.2f}", f"{p99:.2f}", f"{rps:.0f}"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    f50, f99 = _quantiles(forward)
    what = "`ImageModel.predict` (1 PNG)" if image else "`TabularModel.predict` (1 record)"
    rows.insert(0, (f"in-process {what}", "-", f"{f50:.2f}", f"{f99:.2f}", f"{1000 / f50:.0f}"))
    return rows, {"health": health1, "predict": predict1, "inprocess": f50}


def _figures(p50: dict[str, float]) -> str:
    """The targets, side by side: /predict against 1.5 x /health + 1 ms (issue 22), and
    against /health + the in-process predict."""
    bound = 1.5 * p50["health"] + 1.0
    return (f"Median `/predict` at 1 client {p50['predict']:.2f} ms against 1.5 × median "
            f"`/health` + 1 ms = {bound:.2f} ms (**{'met' if p50['predict'] <= bound else 'missed'}"
            f"**); over (median `/health` + in-process predict): "
            f"**{p50['predict'] / (p50['health'] + p50['inprocess']):.2f}×** (target ≤ 1.5×).")


def _tabular(tmp: str, cfg: dict, n: int) -> tuple[list, dict[str, float]]:
    cfg.update({"num-server-rounds": 2, "privacy.enabled": False, "privacy.audit": False,
                "output-dir": tmp, "run-name": "serve", "state-dir": f"{tmp}/state"})
    inprocess.run(cfg)
    model = TabularModel.from_bundle(load_bundle(Path(tmp) / "serve"))
    return _measure(Path(tmp) / "serve", lambda: model.predict([RECORD]), n, None)


def _image(tmp: str, cfg: dict, n: int) -> tuple[list, dict[str, float]]:
    cfg.update({"num-server-rounds": 2, "privacy.enabled": False, "privacy.audit": False,
                "output-dir": tmp, "state-dir": f"{tmp}/state", "task": "image-classification",
                "model.name": "resnet", "train.lr": 0.01, "train.momentum": 0.9,
                "run-name": "serve-image"})
    inprocess.run(cfg)
    image_model = ImageModel.from_bundle(load_bundle(Path(tmp) / "serve-image"))
    manifest = next((Path(tmp) / "state" / "_synthetic").glob("*/manifest.csv"))
    png = (manifest.parent / "riverside" / "0000.png").read_bytes()
    return _measure(Path(tmp) / "serve-image", lambda: image_model.predict([png]), n, png)


def main() -> None:
    """Measure `medfl serve` against the in-process pass; write the section(s)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--part", choices=("tabular", "image", "both"), default="both")
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    machine = (f"{platform.machine()}, {os.cpu_count()} cores, 1-minute load average "
               f"{os.getloadavg()[0]:.1f} at the start")
    part = "" if args.part == "both" else f" --part {args.part}"
    intro = (f"Command: `.venv/bin/python -m bench.serve --requests {args.requests}{part}` "
             "(uvicorn, 1 worker, no API key, loopback, keep-alive client per thread; "
             f"{machine}). Milliseconds. ")
    columns = ["what", "clients", "p50 ms", "p99 ms", "requests/s"]
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("tabular", "both"):
            rows, p50 = _tabular(tmp, inprocess.default_run_config(), args.requests)
            for r in rows:
                print(r)
            print(_figures(p50))
            write_section(args.out, "serve", heading="Serving latency (tabular /predict)",
                          intro=intro + _figures(p50), columns=columns, rows=rows)
        if args.part in ("image", "both"):
            rows, p50 = _image(tmp, inprocess.default_run_config(), args.requests // 2)
            for r in rows:
                print(r)
            print(_figures(p50))
            write_section(args.out, "serve-image", heading="Serving latency (imaging /predict)",
                          intro=intro + _figures(p50) + " One 64 x 64 PNG per request "
                          "(multipart), ResNet (MONAI, width 8), "
                          f"{args.requests // 2} requests per row.",
                          columns=columns, rows=rows)


if __name__ == "__main__":
    main()
