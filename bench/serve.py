"""Latency and throughput of `medfl serve` against the in-process forward pass.

    .venv/bin/python -m bench.serve [--requests 400]

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


def _load(url: str, method: str, n: int, clients: int,
          image: bytes | None = None) -> tuple[float, float, float]:
    def one(_):
        with httpx.Client(timeout=30) as c:  # one connection per client thread
            out = []
            for _ in range(n // clients):
                t = time.perf_counter()
                if method == "health":
                    r = c.get(f"{url}/health")
                elif image is not None:
                    r = c.post(f"{url}/predict", files=[("files", ("x.png", image))])
                else:
                    r = c.post(f"{url}/predict", json={"records": [RECORD]})
                r.raise_for_status()
                out.append(1000 * (time.perf_counter() - t))
            return out

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        ms = [x for chunk in pool.map(one, range(clients)) for x in chunk]
    rps = len(ms) / (time.perf_counter() - start)
    p50, p99 = _quantiles(ms)
    return p50, p99, rps


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


def _measure(run_dir: Path, predict, n: int, image: bytes | None) -> tuple[list, float]:
    """Rows for one model: in-process predict, then /health and /predict at 1 and 8
    clients; and the figure: /predict p50 over (/health p50 + in-process p50)."""
    predict()
    forward = []
    for _ in range(n):
        t = time.perf_counter()
        predict()
        forward.append(1000 * (time.perf_counter() - t))
    url, proc = _start(run_dir)
    try:
        _load(url, "predict", 40, 1, image)  # warm-up
        rows, health1, predict1 = [], None, None
        for clients in (1, 8):
            for method in ("health", "predict"):
                p50, p99, rps = _load(url, method, n, clients, image)
                if clients == 1:
                    health1 = p50 if method == "health" else health1
                    predict1 = p50 if method == "predict" else predict1
                rows.append((f"`{'GET /health' if method == 'health' else 'POST /predict'}`",
                             str(clients), f"{p50:.2f}", f"{p99:.2f}", f"{rps:.0f}"))
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=15)
    f50, f99 = _quantiles(forward)
    what = "`ImageModel.predict` (1 PNG)" if image else "`TabularModel.predict` (1 record)"
    rows.insert(0, (f"in-process {what}", "-", f"{f50:.2f}", f"{f99:.2f}", f"{1000 / f50:.0f}"))
    return rows, predict1 / (health1 + f50)


def main() -> None:
    """Measure `medfl serve` against the in-process pass; write the section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores"
    with tempfile.TemporaryDirectory() as tmp:
        cfg = inprocess.default_run_config()
        cfg.update({"num-server-rounds": 2, "privacy.enabled": False, "privacy.audit": False,
                    "output-dir": tmp, "run-name": "serve", "state-dir": f"{tmp}/state"})
        inprocess.run(cfg)
        model = TabularModel.from_bundle(load_bundle(Path(tmp) / "serve"))
        rows, ratio = _measure(Path(tmp) / "serve", lambda: model.predict([RECORD]),
                               args.requests, None)
        cfg.update({"task": "image-classification", "model.name": "resnet",
                    "train.lr": 0.01, "train.momentum": 0.9, "run-name": "serve-image"})
        inprocess.run(cfg)
        image_model = ImageModel.from_bundle(load_bundle(Path(tmp) / "serve-image"))
        manifest = next((Path(tmp) / "state" / "_synthetic").glob("*/manifest.csv"))
        png = (manifest.parent / "riverside" / "0000.png").read_bytes()
        image_rows, image_ratio = _measure(Path(tmp) / "serve-image",
                                           lambda: image_model.predict([png]),
                                           args.requests // 2, png)
    for r in rows + image_rows:
        print(r)
    print(f"tabular {ratio:.2f}x, image {image_ratio:.2f}x")
    intro = ("Command: `.venv/bin/python -m bench.serve --requests {n}` (uvicorn, 1 worker, "
             f"loopback, keep-alive client per thread; {machine}). Milliseconds. Median "
             "`/predict` at 1 client over (median `/health` + in-process predict): "
             "**{r:.2f}×** (target ≤ 1.5×).")
    columns = ["what", "clients", "p50 ms", "p99 ms", "requests/s"]
    write_section(args.out, "serve", heading="Serving latency (tabular /predict)",
                  intro=intro.format(n=args.requests, r=ratio), columns=columns, rows=rows)
    write_section(args.out, "serve-image", heading="Serving latency (imaging /predict)",
                  intro=intro.format(n=args.requests, r=image_ratio)
                  + " One 64 x 64 PNG per request (multipart), ResNet (MONAI, width 8), "
                    f"{args.requests // 2} requests per row.",
                  columns=columns, rows=image_rows)


if __name__ == "__main__":
    main()
