"""The four-hospital default run on the real deployment engine (loopback, TLS, SuperNode
authentication) against the same run simulated in process: accuracy, AUROC and wall time.

Each deployed run starts a fresh federation (``medfl.deployment.local``), so its wall time
includes certificates, the SuperLink, four SuperNodes and the ClientApp processes Flower
starts for every task. The simulated runs use the in-process harness with the default
config (secret DP noise in both, so the figures vary run to run).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path

from bench import inprocess
from bench.report import mean_sd, write_section
from medfl.deployment.local import LocalFederation


def deployed(rounds: int, tmp: Path, i: int) -> tuple[dict, float]:
    """One default run on a loopback TLS federation: its summary and wall time (s)."""
    work = tmp / f"fed-{i}"
    t0 = time.monotonic()
    with LocalFederation(work) as fed:
        fed.start()
        proc = fed.run(f"num-server-rounds={rounds} output-dir='{work / 'out'}' "
                       "run-name='run'", log=work / "run.log")
    wall = time.monotonic() - t0
    if proc.returncode != 0:
        raise SystemExit(f"deployed run {i} failed; see {work / 'run.log'}")
    summary = json.loads((work / "out" / "run" / "summary.json").read_text())
    print(f"deployed run {i}: mean per-site accuracy {summary['mean_site_accuracy']:.3f}, "
          f"{wall:.0f} s", flush=True)
    return summary, wall


def simulated(rounds: int, tmp: Path, i: int) -> tuple[dict, float]:
    """The same run in process: its summary and wall time (s)."""
    cfg = {**inprocess.default_run_config(), "num-server-rounds": rounds,
           "output-dir": str(tmp / "sim"), "run-name": f"sim-{i}",
           "state-dir": str(tmp / f"sim-state-{i}")}
    t0 = time.monotonic()
    inprocess.run(cfg, run_id=100 + i)
    wall = time.monotonic() - t0
    return json.loads((tmp / "sim" / f"sim-{i}" / "summary.json").read_text()), wall


def _row(label: str, runs: list[tuple[dict, float]]) -> tuple[str, ...]:
    acc = [s["mean_site_accuracy"] for s, _ in runs]
    auroc = [s["global"]["metrics"]["auroc"] for s, _ in runs]
    worst = [min(x["metrics"]["accuracy"] for x in s["sites"]) for s, _ in runs]
    return (label, str(len(runs)), mean_sd(acc), mean_sd(auroc), mean_sd(worst),
            f"{statistics.median(w for _, w in runs):.0f}")


def main() -> None:
    """Compare deployed and simulated runs; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--out", type=Path, default=inprocess.ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        dep = [deployed(args.rounds, Path(tmp), i) for i in range(args.runs)]
        print(_row("deployed", dep), flush=True)
        sim = [simulated(args.rounds, Path(tmp), i) for i in range(args.runs)]
    rows = [_row("deployment: TLS SuperLink + 4 authenticated SuperNodes (`flwr run`)", dep),
            _row("simulation: the same apps in process", sim)]
    intro = (f"Command: `.venv/bin/python -m bench.deployment --runs {args.runs}` "
             f"({platform.machine()}, 2 cores, no GPU; the default scenario, {args.rounds} "
             "rounds, DP-SGD ε ≤ 3 per site with secret noise, so runs differ). Wall time "
             "of a deployed run covers certificates, SuperLink, four SuperNodes and one "
             "ClientApp process per task (about 10 s of imports each).")
    write_section(args.out, "deployment", heading="Deployment on loopback vs simulation",
                  intro=intro, columns=["run", "runs", "mean per-site accuracy",
                                        "pooled AUROC", "worst-site accuracy",
                                        "wall s (median)"], rows=rows)


if __name__ == "__main__":
    main()
