"""The real deployment on loopback: `flower-superlink` with TLS and SuperNode
authentication, one authenticated `flower-supernode` per hospital, `flwr run`; and the
faults a hospital network has (marked slow: real processes, one to three minutes each)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import time
from pathlib import Path

import pytest

from medfl.deployment import certs
from medfl.deployment.local import EXIT_REFUSED, ROOT, LocalFederation, flower_bin
from medfl.deployment.processes import alive, process_tree

pytestmark = pytest.mark.slow


def _rounds(run: Path) -> list[dict]:
    path = run / "rounds.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _submit(fed: LocalFederation, config: str):
    """``flwr run`` in the background (a Popen), so a test can act during the run."""
    log = open(fed.workdir / "flwr-run.log", "w")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(fed.run_args(config), env=fed.env(), cwd=fed.workdir,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, log


def _ours(workdir: Path) -> list[int]:
    """Live processes started for the federation in ``workdir``: every one of them (the
    SuperLink, SuperNodes, SuperExecs, ServerApp and ClientApps) inherits its FLWR_HOME."""
    mark = f"FLWR_HOME={workdir.resolve() / 'flwr-home'}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if mark in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue
    return alive(pids)


def test_four_hospitals_over_tls_with_authenticated_sites_and_secure_aggregation(tmp_path):
    """The shipped script: the default scenario on the deployment engine, with Flower's
    SecAgg+ for the update and the report, and no process left behind.

    Each protocol stage starts a ClientApp process per site (seconds of imports each), so
    the run is one round without the audit, a stage this test does not check (the resume
    test below runs it on this deployment); the round's monitoring evaluation gives the
    mean site accuracy."""
    work = tmp_path / "fed"
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "local-federation.sh"), "--workdir",
                           str(work), "--run-config",
                           "num-server-rounds=1 secure-aggregation.enabled=true "
                           "strategy.min-round-nodes=3 privacy.audit=false"],
                          capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert _ours(work) == []
    (run,) = [p for p in (work / "outputs").iterdir() if p.name != "latest"]
    assert f"run folder: {run}" in proc.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert [s["name"] for s in summary["sites"]] == ["cleveland", "hungarian", "switzerland",
                                                     "va"]
    assert summary["privacy"]["secure_aggregation"] is True
    # every site's masked update is in the round's sum: none failed, none was left out
    (round_1,) = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()
                  if '"train"' in line]
    assert sorted(round_1["train"]) == ["cleveland", "hungarian", "switzerland", "va"]
    assert round_1["train_problems"] == []
    assert all(s["rounds_trained"] == 1 for s in summary["sites"])
    assert all(0 < s["epsilon"] <= 3.0 for s in summary["sites"])
    # the report's statistics reached the server only as their sum over the four sites
    evaluation = json.loads((run / "evaluation.json").read_text())
    assert list(evaluation) == ["*secure-sum*"]
    assert sorted(evaluation["*secure-sum*"]["sites"]) == ["cleveland", "hungarian",
                                                           "switzerland", "va"]
    assert 0.0 <= summary["mean_site_accuracy"] <= 1.0
    assert (run / "report.html").is_file() and (run / "model" / "manifest.json").is_file()
    for site in ("cleveland", "hungarian", "switzerland", "va"):
        # each hospital held only its own file, and kept its ledger and report at home
        assert [f.name for f in (work / "sites" / site / "data").iterdir()] == [
            f"processed.{site}.data"]
        state = work / "sites" / site / "state"
        assert (state / "privacy-ledger.json").is_file()
        assert list((state / "reports").glob("*/report.html"))
    assert stat.S_IMODE((work / "certs" / "server.key").stat().st_mode) == 0o600


def test_a_failed_run_still_stops_every_process(tmp_path):
    work = tmp_path / "fed"
    proc = subprocess.run(["bash", str(ROOT / "deploy" / "local-federation.sh"), "--workdir",
                           str(work), "--site", "cleveland", "--site", "va", "--run-config",
                           "strategy.name='fedbest'"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode != 0
    assert "the run failed" in proc.stderr
    assert _ours(work) == []


def test_unregistered_revoked_and_unverified_nodes_and_a_plaintext_cli_are_refused(tmp_path):
    with LocalFederation(tmp_path / "fed", sites=("cleveland", "va")) as fed:
        fed.prepare()
        certs.add_site(fed.certs, "intruder")
        fed.start_superlink()
        fed.register_all(["cleveland", "va"])
        fed.unregister("va")  # revoked
        # the CLI without TLS (its own Flower home) cannot talk to the SuperLink
        plain_home = tmp_path / "plain-home"
        plain_home.mkdir()
        (plain_home / "config.toml").write_text(
            '[superlink]\ndefault = "plain"\n\n[superlink.plain]\n'
            f'address = "{fed.control_address}"\ninsecure = true\n')
        plain = subprocess.Popen([flower_bin("flwr"), "run", str(ROOT), "plain"],
                                 env={**fed.env(), "FLWR_HOME": str(plain_home)},
                                 cwd=fed.workdir, stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, text=True)
        nodes = {
            "unregistered": fed.start_supernode(
                "cleveland", key=certs.site_keys(fed.certs, "intruder").private_key,
                name="unregistered"),
            "revoked": fed.start_supernode("va", name="revoked"),
            "no-ca": fed.start_supernode("cleveland", ca=False, name="no-ca"),
        }
        # a registered site, started beside them, connects and stays up
        ok = fed.start_supernode("cleveland")
        for name, proc in nodes.items():  # Flower logs its code 305 and exits with 1
            assert proc.wait(timeout=120) != 0, name
            log = (fed.site_dir("va" if name == "revoked" else "cleveland") / f"{name}.log")
            assert f"Exit Code: {EXIT_REFUSED}" in log.read_text(), name
        assert "CERTIFICATE_VERIFY_FAILED" in (fed.site_dir("cleveland") / "no-ca.log").read_text()

        def online() -> bool:
            listing = fed.flwr("supernode", "list", "medfl", "--format", "json")
            nodes = json.loads(listing.stdout)["nodes"]
            return {int(n["node-id"]): n["status"] for n in nodes}.get(
                fed.node_ids["cleveland"]) == "online"

        _wait_for(online, timeout=120, what="the registered site to be online")
        time.sleep(3)
        assert ok.poll() is None
        reply, _ = plain.communicate(timeout=120)
        assert plain.returncode != 0
        assert "unavailable" in reply.lower()


def _signal_all(pids: list[int], sig: int) -> None:
    """Signal each process; one that has exited meanwhile (an app process that had
    already finished, reaped by now) needs no signal."""
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_a_site_killed_mid_round_and_a_straggler_are_dropped_and_rejoin(tmp_path):
    """In round 2 VA's SuperNode is killed and Hungarian's is frozen (SIGSTOP) past the
    round timeout. The round completes with Cleveland (strategy.min-round-nodes=1),
    rounds.jsonl says who dropped and why; Hungarian, thawed, and VA, restarted, take part
    again by the last round.

    Flower's SuperLink refuses the restarted VA until its killed node's heartbeat expires
    (up to 2 x 30 s after the kill, past round 2's close), and samples only the nodes
    online when a round starts: five rounds, so that the rounds after VA is back outlast
    its start-up (with four, in CI, rounds 3 and 4 both started before VA was back)."""
    out = tmp_path / "out"
    run = out / "faults"
    with LocalFederation(tmp_path / "fed", sites=("cleveland", "hungarian", "va")) as fed:
        fed.start()
        # A SuperNode starts a ClientApp process per message (~9 s of imports each), so
        # three sites at once on 2 cores took 20-26 s for round 1 and a 25 s timeout
        # dropped them there too: 45 s leaves room. RDP accounting: PRV's noise
        # calibration added another ~10 s to round 1; the faults under test are round 2's.
        # No audit: a stage after the last round that this test does not check (the
        # resume test below runs it on this deployment). The monitoring evaluation stays:
        # it is the slack in which a thawed Hungarian catches up before round 3.
        # No norm check: with three sites whose data differ, under DP noise, an honest
        # update can land over 3x the median (VA's rejoined update, at 3.4x, was rejected in
        # CI), and this test is about dropping and rejoining, not about outliers.
        proc, log = _submit(fed, f"num-server-rounds=5 output-dir='{out}' run-name='faults' "
                                 "strategy.round-timeout=45.0 strategy.min-round-nodes=1 "
                                 "strategy.norm-ratio=0.0 "
                                 "privacy.accountant='rdp' privacy.audit=false")
        try:
            _wait_for(lambda: len(_rounds(run)) >= 1, timeout=300, what="round 1")
            fed.kill("va")  # round 2's training has just been sent
            frozen = process_tree(fed.procs["hungarian"].pid)  # SuperNode, SuperExec, app
            _signal_all(frozen, signal.SIGSTOP)
            try:
                # past round 2's training timeout, then thawed while the round closes: held
                # until round 2 was recorded, Hungarian missed round 3 too (seen in CI)
                time.sleep(50)
            finally:
                _signal_all(frozen, signal.SIGCONT)
            _wait_for(lambda: len(_rounds(run)) >= 2, timeout=300, what="round 2")
            fed.rejoin("va")  # same key, so the same node id; once its old one expired
            assert proc.wait(timeout=600) == 0, (fed.workdir / "flwr-run.log").read_text()[-3000:]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
            log.close()
    rounds = _rounds(run)
    assert [r["round"] for r in rounds] == [1, 2, 3, 4, 5]
    assert sorted(rounds[0]["train"]) == ["cleveland", "hungarian", "va"]
    assert sorted(rounds[1]["train"]) == ["cleveland"]
    assert "not_aggregated" not in rounds[1]
    dropped = {p["site"]: p for p in rounds[1]["train_problems"]}
    assert {s: p["status"] for s, p in dropped.items()} == {"hungarian": "dropped",
                                                             "va": "dropped"}
    # Frozen past the round timeout, Hungarian is dropped by whichever comes first: the
    # timeout, or the SuperLink's heartbeat check (2 x 30 s since its last heartbeat,
    # which may have been up to 30 s before the freeze)
    assert dropped["hungarian"]["reason"] in (
        "no reply within the round timeout (45 s)",
        "Error: Node Unavailable — The destination node failed to report a heartbeat within "
        "2 × its expected interval.")
    # Both take part again after the faults, each in some round from 3 on. Not necessarily
    # in the same round: Hungarian may miss round 3, thawed while round 2 closes, it takes
    # round 3's message, but until its next heartbeat lands the SuperLink still counts it
    # offline and answers the ServerApp "Node Unavailable" for it (seen in CI and here under
    # load); VA misses the rounds that start before it is back (see the docstring).
    later = {r["round"]: (sorted(r["train"]), r.get("train_problems")) for r in rounds[2:]}
    for site in ("hungarian", "va"):
        assert any(site in r["train"] for r in rounds[2:]), (site, later)  # rejoined
    assert all(p["status"] == "dropped" for r in rounds[2:] for p in r.get("train_problems", []))
    # the report says who dropped when
    report = json.loads((run / "report.json").read_text())
    assert {(p["site"], p["status"]) for p in report["rounds"][1]["problems"]} == {
        ("hungarian", "dropped"), ("va", "dropped")}
    summary = json.loads((run / "summary.json").read_text())
    trained = {s["name"]: s["rounds_trained"] for s in summary["sites"]}
    assert trained["cleveland"] == 5 and trained["hungarian"] >= 2 and trained["va"] >= 2
    # VA's restarted SuperNode continued its accountant from its state folder: its ε
    # covers every round it trained in, within the run's target
    assert all(s["epsilon"] <= 3.0 for s in summary["sites"])


def _modified_project(folder: Path, marker: Path) -> Path:
    """This project's apps with one line added to the ClientApp: it writes ``marker``
    wherever it is imported. Not the FAB the sites approved."""
    folder.mkdir()
    shutil.copy(ROOT / "pyproject.toml", folder / "pyproject.toml")
    for pkg in ("server", "client"):
        shutil.copytree(ROOT / pkg, folder / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    app = folder / "client" / "app.py"
    app.write_text(app.read_text() + f"\nimport pathlib\npathlib.Path({str(marker)!r})"
                                     ".write_text('FAB code ran')\n")
    return folder


def test_the_server_killed_mid_run_resumes_from_its_checkpoint(tmp_path):
    """The SuperLink (and its ServerApp) is killed after round 1; it is restarted on the
    same database, the SuperNodes reconnect on their own, and `resume-from` finishes the
    run with the uninterrupted run's round count and one accountant per site.

    Before that, code trust (issue 18) on the same SuperNodes: a modified app is refused
    at both sites and never imported there; the sites then train the approved one."""
    out = tmp_path / "out"
    run = out / "crash"
    marker = tmp_path / "imported-at-the-site"
    modified = _modified_project(tmp_path / "modified", marker)
    with LocalFederation(tmp_path / "fed", sites=("cleveland", "hungarian")) as fed:
        fed.start()  # builds, signs and approves this project's FAB at each site
        args = fed.run_args(f"num-server-rounds=1 output-dir='{out}' run-name='modified' "
                            "strategy.round-timeout=60.0")
        args[args.index(str(ROOT))] = str(modified)  # `flwr run <the modified project>`
        refused = subprocess.run(args, env=fed.env(), cwd=fed.workdir, capture_output=True,
                                 text=True, timeout=300)
        reply = refused.stdout + refused.stderr
        assert "not approved at this site" in reply, reply[-3000:]
        assert not marker.exists()
        assert not (out / "modified" / "summary.json").exists()
        proc, log = _submit(fed, f"num-server-rounds=2 output-dir='{out}' run-name='crash'")
        try:
            _wait_for(lambda: (run / "checkpoint" / "LATEST").exists(), timeout=300,
                      what="the first checkpoint")
            fed.kill("superlink")
            proc.wait(timeout=120)
        finally:
            log.close()
        assert not (run / "summary.json").exists()
        fed.start_superlink()
        resumed = fed.run(str(run / "resume.toml"), log=tmp_path / "resume.log", timeout=900)
        assert resumed.returncode == 0, (tmp_path / "resume.log").read_text()[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["rounds"] == 2
    assert [r["round"] for r in _rounds(run)] == [1, 2]
    assert _rounds(run)[1]["resumed_after_round"] == 1
    assert [s["rounds_trained"] for s in summary["sites"]] == [2, 2]
    from medfl.privacy.ledger import Ledger

    for site in ("cleveland", "hungarian"):
        ledger = Ledger.open(tmp_path / "fed" / "sites" / site / "state", site)
        runs = [r for r in ledger.runs() if r["rounds_trained"]]
        assert len(runs) == 1 and runs[0]["rounds_trained"] == 2
        entry = next(s for s in summary["sites"] if s["name"] == site)
        # the ledger's run ε is DP-SGD's after its last round; the summary's also composes
        # the audit's members' histogram, the last accounted release (σ = 10, after training)
        from opacus.accountants import create_accountant

        assert entry["accountant_history"][-1] == [10.0, 1.0, 1]
        acc = create_accountant(entry["accountant"])
        acc.history = [tuple(h) for h in entry["accountant_history"][:-1]]
        assert runs[0]["epsilon"] == pytest.approx(acc.get_epsilon(delta=entry["delta"]))
        assert runs[0]["epsilon"] < entry["epsilon"] <= 3.0
