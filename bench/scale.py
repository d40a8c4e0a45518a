"""Simulation scale: time per round and peak memory of the whole process tree as the number
of simulated sites grows, through the real ``flwr run`` (local SuperLink, Ray simulation).

Scenario ``simulations/many-sites.toml``: the synthetic cohort (100,000 patients) re-split
into N sites (``dirichlet-mix``), DP-SGD at every site, 100 sites sampled per round (all of
them when N <= 100), one CPU per ClientApp. Memory is the sum of the proportional set size
(PSS: shared pages split between the processes sharing them, so torch's libraries are
counted once) over every process of the run: the SuperLink and its descendants (ServerApp,
simulation, Ray's GCS, raylet and workers), sampled every 0.5 s; the peak is the largest sum.

Usage: ``python -m bench.scale [--sites 10 100 1000] [--rounds 3] [--repeats 1]
[--out BENCHMARKS.md]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.report import write_section
from medfl.deployment.local import process_tree
from medfl.localsim import flower_env, free_port_pair, stop_superlink, superlink_pids

ROOT = Path(__file__).resolve().parents[1]
SAMPLED = 100  # sites per round
SECTION = "scale"


def _pss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1])
    return 0


def tree_pss_bytes(roots: list[int]) -> tuple[int, int]:
    """Sum of PSS over ``roots`` and all their descendants; (bytes, number of processes)."""
    pids = {pid for root in roots for pid in process_tree(root)}
    total = 0
    for pid in pids:
        try:
            total += _pss_kib(pid) * 1024
        except OSError:  # exited meanwhile
            pass
    return total, len(pids)


class PeakSampler(threading.Thread):
    """Polls the process tree of the SuperLink(s) under ``flwr_home`` every ``period`` s."""

    def __init__(self, flwr_home: Path, period: float = 0.5):
        super().__init__(daemon=True)
        self.flwr_home, self.period = flwr_home, period
        self.peak, self.peak_procs, self._halt = 0, 0, threading.Event()

    def run(self) -> None:
        """Sample until :meth:`stop`, keeping the peak."""
        while not self._halt.is_set():
            roots = superlink_pids(self.flwr_home)
            if roots:
                total, procs = tree_pss_bytes(roots)
                if total > self.peak:
                    self.peak, self.peak_procs = total, procs
            self._halt.wait(self.period)

    def stop(self) -> None:
        """Stop sampling and wait for the thread."""
        self._halt.set()
        self.join()


def _run_config(path: Path, sites: int, rounds: int, tmp: Path, name: str) -> None:
    import tomllib

    cfg = tomllib.loads((ROOT / "simulations" / "many-sites.toml").read_text())
    fraction = min(1.0, SAMPLED / sites)
    cfg["strategy"].update({"fraction-train": fraction, "fraction-evaluate": fraction})
    top = {k: v for k, v in cfg.items() if not isinstance(v, dict)}
    top.update({"num-server-rounds": rounds, "output-dir": str(tmp / "out"),
                "run-name": name, "state-dir": str(tmp / f"state-{name}")})
    lines = [f"{k} = {json.dumps(v)}" for k, v in top.items()]
    for table, values in ((k, v) for k, v in cfg.items() if isinstance(v, dict)):
        lines += [f"[{table}]", *(f"{k} = {json.dumps(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")


def run_once(sites: int, rounds: int, tmp: Path, port: int, name: str) -> dict:
    """One ``flwr run`` of ``sites`` simulated sites: wall and round times, peak memory
    of the SuperLink's process tree, and the headline figures."""
    flwr_home = tmp / f"flwr-{name}"
    flwr_home.mkdir()
    shutil.copy(ROOT / "simulations" / "flwr-config.toml", flwr_home / "config.toml")
    run_toml = tmp / f"{name}.toml"
    _run_config(run_toml, sites, rounds, tmp, name)
    env = {**os.environ, **flower_env(ROOT, port=port), "FLWR_HOME": str(flwr_home)}
    env.pop("MEDFL_HOME", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), "--stream",
           "--run-config", str(run_toml), "--federation-config",
           # it replaces every option of the federation: repeat one CPU per ClientApp
           f"num-supernodes={sites} client-resources-num-cpus=1"]
    sampler = PeakSampler(flwr_home)
    sampler.start()
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tmp, env=env, capture_output=True, text=True,
                              timeout=3600)
        wall = time.monotonic() - t0
    finally:
        sampler.stop()
        stop_superlink(flwr_home)
    run_dir = tmp / "out" / name
    if proc.returncode != 0 or not (run_dir / "summary.json").is_file():
        raise SystemExit(f"flwr run failed for {sites} sites:\n"
                         f"{(proc.stdout + proc.stderr)[-4000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    elapsed = [json.loads(line)["elapsed_s"]
               for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    # rounds after the first (which also loads every actor's libraries), unless only one
    durations = [b - a for a, b in zip([0.0, *elapsed], elapsed, strict=False)]
    per_round = durations[1:] or durations
    return {"sites": sites, "sampled": min(sites, SAMPLED), "wall_s": wall,
            "round_s": statistics.median(per_round) if per_round else float("nan"),
            "peak_bytes": sampler.peak, "peak_procs": sampler.peak_procs,
            "rounds": summary["rounds"], "accuracy": summary["mean_site_accuracy"],
            "auroc": summary["global"]["metrics"]["auroc"],
            "max_epsilon": summary["privacy"]["max_epsilon"]}


def _gib(b: float) -> str:
    return f"{b / 2**30:.2f}"


def main(argv: list[str] | None = None) -> None:
    """Run the federation at each size; write the BENCHMARKS.md section."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sites", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = ap.parse_args(argv)
    results: dict[int, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="medfl-scale-") as tmp:
        for rep in range(args.repeats):
            for n in args.sites:
                r = run_once(n, args.rounds, Path(tmp), free_port_pair(), f"s{n}-r{rep}")
                print(json.dumps(r), flush=True)
                results.setdefault(n, []).append(r)
    rows = []
    base = None
    for n, runs in results.items():
        peak = statistics.median(r["peak_bytes"] for r in runs)
        base = peak if n == 100 else base
        rows.append((f"{n:,}", str(runs[0]["sampled"]),
                     f"{statistics.median(r['round_s'] for r in runs):.1f}",
                     f"{statistics.median(r['wall_s'] for r in runs):.0f}", _gib(peak),
                     str(runs[0]["peak_procs"]),
                     f"{statistics.median(r['accuracy'] for r in runs):.3f}",
                     f"{statistics.median(r['auroc'] for r in runs):.3f}",
                     f"{max(r['max_epsilon'] for r in runs):.2f}"))
    ratio = ""
    if base and 1000 in results:
        peak_1000 = statistics.median(r["peak_bytes"] for r in results[1000])
        ratio = f" Peak memory at 1,000 sites is {peak_1000 / base:.2f}x the figure at 100."
    columns = ["sites", "sampled per round", "time per round (s, median)", "whole run (s)",
               "peak memory, process tree (GiB)", "processes at peak",
               "mean per-site accuracy", "pooled AUROC", "max ε"]
    intro = (
        f"Command: `.venv/bin/python -m bench.scale --sites {' '.join(map(str, args.sites))} "
        f"--rounds {args.rounds} --repeats {args.repeats}` ({platform.machine()}, "
        f"{os.cpu_count()} cores; real `flwr run` with a local SuperLink and Ray simulation, "
        f"one CPU per ClientApp; scenario `simulations/many-sites.toml`: the synthetic cohort "
        f"of 100,000 patients split into N sites by `dirichlet-mix`, DP-SGD ε ≤ 3 per site, "
        f"{args.rounds} rounds). Memory: peak over the run of the summed PSS of the SuperLink "
        f"and all its descendants (ServerApp, simulation, Ray GCS/raylet/workers), sampled "
        f"every 0.5 s. Time per round: the median over rounds 2 onwards (round 1 also "
        f"loads each actor's libraries). Whole run includes start-up, generating the "
        f"synthetic cohort, the feature-statistics query, the final audit and report "
        f"queries and writing the run directory. Medians over "
        f"{args.repeats} run(s).{ratio}")
    write_section(args.out, SECTION, heading="Simulation scale: many sites through Flower's "
                  "simulation engine", intro=intro, columns=columns, rows=rows)

if __name__ == "__main__":
    main()
