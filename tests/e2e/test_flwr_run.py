"""End to end: the real `flwr run` (local SuperLink, Ray simulation) from another folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import ROOT
from opacus.accountants import create_accountant

from medfl.localsim import flower_env, free_port_pair, stop_superlink, superlink_pids

pytestmark = pytest.mark.slow


#: Ray's own start-up failure on a loaded 2-core machine (seen once in CI, right after
#: another simulation's Ray shut down): infrastructure, not MedFL, so it is retried once.
RAY_STARTUP_FLAKE = "timed out during startup"


def _flwr_run(cmd: list[str], *, cwd: Path, env: dict, run_dir: Path, timeout: int):
    """``flwr run``; retried once, from a clean run folder, when Ray fails to start."""
    def once() -> subprocess.CompletedProcess:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=timeout)

    proc = once()
    if RAY_STARTUP_FLAKE in proc.stdout + proc.stderr:
        shutil.rmtree(run_dir, ignore_errors=True)
        proc = once()
    return proc


@pytest.fixture
def ray_head():
    """A Ray cluster started separately (``ray start --head``), as a user who outgrew one
    machine would start it; stopped afterwards. Yields (address, its session folder)."""
    ray = str(Path(sys.executable).parent / "ray")
    # a short folder: Ray's socket paths under it must stay within the 107-byte limit
    temp = Path(tempfile.mkdtemp(prefix="ray", dir="/tmp"))
    port = free_port_pair()
    started = subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2",
                              f"--temp-dir={temp}", "--include-dashboard=false",
                              "--disable-usage-stats"], capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}", temp
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)


def test_flwr_run_writes_a_complete_run_directory(tmp_path, ray_head):
    """The default scenario through `flwr run`, its simulation attached (RAY_ADDRESS) to a
    Ray cluster started beforehand with `ray start --head`."""
    address, ray_temp = ray_head
    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    shutil.copy(ROOT / "simulations" / "flwr-config.toml", flwr_home / "config.toml")
    out = tmp_path / "outputs"
    state = tmp_path / "state"
    env = {**os.environ, **flower_env(ROOT, port=free_port_pair())}
    env["FLWR_HOME"] = str(flwr_home)
    env.pop("MEDFL_HOME", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_ADDRESS"] = address  # ray.init() in the SuperLink attaches to this cluster
    workdir = tmp_path / "elsewhere"  # the user's shell is not in the project
    workdir.mkdir()
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), "--stream",
           # (Flower refuses a TOML file together with key=value pairs)
           "--run-config",
           f"num-server-rounds=2 output-dir='{out}' run-name='e2e' state-dir='{state}'"]
    try:
        proc = _flwr_run(cmd, cwd=workdir, env=env, run_dir=out / "e2e", timeout=420)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        run = out / "e2e"
        assert (run / "summary.json").is_file(), log[-4000:]
    finally:
        stopped = stop_superlink(flwr_home)
    assert stopped >= 1  # the run started its own SuperLink under our FLWR_HOME
    assert superlink_pids(flwr_home) == []
    # the ClientApps ran as actors of the cluster started beforehand, not of a private Ray
    worker_logs = list((ray_temp / "session_latest" / "logs").glob("worker-*"))
    assert any("ClientAppActor" in p.read_text(errors="replace") for p in worker_logs), \
        [p.name for p in worker_logs]

    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert [s["name"] for s in summary["sites"]] == ["cleveland", "hungarian", "switzerland",
                                                     "va"]
    assert all(0 < s["epsilon"] <= 3.0 for s in summary["sites"])
    # from each site's noisy report release (test-set ε = 1): a figure, not a precise one
    assert 0.0 <= summary["mean_site_accuracy"] <= 1.0
    assert all(s["test_epsilon"] == pytest.approx(1.0, rel=1e-3) for s in summary["sites"])
    assert len((run / "rounds.jsonl").read_text().splitlines()) == 2
    assert (run / "model" / "manifest.json").is_file()
    # the fairness report, its site views and the model card came out of the real runtime
    report = json.loads((run / "report.json").read_text())
    assert [p["name"] for p in report["populations"]] == ["pooled", "cleveland", "hungarian",
                                                          "switzerland", "va"]
    assert report["populations"][0]["metrics"]["auroc"]["ci"] is not None
    for name in ("report.html", "MODEL_CARD.md", *(f"sites/{s['name']}/report.html"
                                                    for s in summary["sites"])):
        assert (run / name).is_file(), name
    assert (out / "latest").resolve() == run.resolve()
    # nothing was written into the folder the command was started from
    assert list(workdir.iterdir()) == []
    # Flower's state stayed in our FLWR_HOME
    assert (flwr_home / "local-superlink").is_dir()
    # every site recorded both rounds in its own ledger, and `medfl budget` reads it
    from medfl.privacy.ledger import Ledger

    for site in summary["sites"]:
        ledger = Ledger.open(state / site["name"], site["name"])
        assert [r["rounds_trained"] for r in ledger.runs()] == [2]
        # the ledger's run ε is DP-SGD's after round 2; the summary's also composes the
        # audit's members' histogram (σ = 10, the last accounted release)
        assert site["accountant_history"][-1] == [10.0, 1.0, 1]
        acc = create_accountant(site["accountant"])
        acc.history = [tuple(h) for h in site["accountant_history"][:-1]]
        assert ledger.runs()[0]["epsilon"] == pytest.approx(acc.get_epsilon(delta=site["delta"]))
        assert ledger.runs()[0]["epsilon"] < site["epsilon"] <= 3.0
    budget = subprocess.run([str(Path(sys.executable).parent / "medfl"), "budget",
                             str(state / "va"), "--json"], capture_output=True, text=True)
    assert budget.returncode == 0 and '"site": "va"' in budget.stdout


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    return json.dumps(v) if isinstance(v, str) else repr(v)


@pytest.mark.parametrize(("scenario", "metric"), [("imaging-classification", "auroc"),
                                                  ("segmentation", "dice")])
def test_flwr_run_imaging_scenario_end_to_end(tmp_path, scenario, metric):
    """The shipped scenario through the real `flwr run`, shortened to 2 rounds of 1 epoch:
    synthetic hospitals generated as files, read back through the manifest loader."""
    import tomllib

    flwr_home = tmp_path / "flwr-home"
    flwr_home.mkdir()
    shutil.copy(ROOT / "simulations" / "flwr-config.toml", flwr_home / "config.toml")
    cfg = tomllib.loads((ROOT / "simulations" / f"{scenario}.toml").read_text())
    cfg.update({"num-server-rounds": 2, "output-dir": str(tmp_path / "out"), "run-name": "e2e",
                "state-dir": str(tmp_path / "state")})
    cfg["train"]["local-epochs"] = 1
    lines = [f"{k} = {_toml_value(v)}" for k, v in cfg.items() if not isinstance(v, dict)]
    for table, values in ((k, v) for k, v in cfg.items() if isinstance(v, dict)):
        lines += [f"[{table}]", *(f"{k} = {_toml_value(v)}" for k, v in values.items())]
    run_toml = tmp_path / "run.toml"
    run_toml.write_text("\n".join(lines) + "\n")
    env = {**os.environ, **flower_env(ROOT, port=free_port_pair())}
    env["FLWR_HOME"] = str(flwr_home)
    env.pop("MEDFL_HOME", None)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "flwr"), "run", str(ROOT), "--stream",
           "--run-config", str(run_toml)]
    try:
        proc = _flwr_run(cmd, cwd=tmp_path, env=env, run_dir=tmp_path / "out" / "e2e",
                         timeout=600)
        log = proc.stdout + proc.stderr
        assert proc.returncode == 0, log[-4000:]
        assert (tmp_path / "out" / "e2e" / "summary.json").is_file(), log[-4000:]
    finally:
        stop_superlink(flwr_home)
    summary = json.loads((tmp_path / "out" / "e2e" / "summary.json").read_text())
    rounds = (tmp_path / "out" / "e2e" / "rounds.jsonl").read_text()
    assert summary["task"] == cfg["task"] and summary["rounds"] == 2
    assert [s["name"] for s in summary["sites"]] == ["hillcrest", "lakeside", "riverside",
                                                     "summit"], rounds[-3000:] + log[-3000:]
    assert all(0 < s["epsilon"] <= 8.0 for s in summary["sites"])
    assert all(s["metrics"][metric] is not None for s in summary["sites"])
    manifest = json.loads((tmp_path / "out" / "e2e" / "model" / "manifest.json").read_text())
    assert manifest["preprocessing"]["image"]["size"] == 64
    report = json.loads((tmp_path / "out" / "e2e" / "report.json").read_text())
    assert report["kind"] == ("segmentation" if cfg["task"] == "segmentation"
                              else "classification")
    assert (tmp_path / "out" / "e2e" / "MODEL_CARD.md").is_file()
    # the synthetic hospitals were written as files with a manifest, one format per site
    written = list((tmp_path / "state" / "_synthetic").glob("*/manifest.csv"))
    assert len(written) == 1
    suffixes = {p.suffix for p in written[0].parent.rglob("*") if p.is_file()}
    assert {".png", ".gz", ".dcm"} <= suffixes
