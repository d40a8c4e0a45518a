"""A real federation on loopback: a TLS SuperLink with SuperNode authentication and one
SuperNode per hospital, each a separate process reading only its own data folder.

This is the deployment path of DESIGN.md (Flower's ``flower-superlink`` /
``flower-supernode`` / ``flwr run``), started on one machine: the demo of what each
hospital runs, and the harness of the fault tests. Every process is stopped by PID, with
everything it started, on exit, on error and on Ctrl-C.

Layout of ``workdir``::

    certs/                  CA, SuperLink certificate, site keys, app-signing key pair
    app/medfl-app.fab(.sig) the app bundle `flwr run` submits, signed (medfl app build)
    superlink/              the SuperLink's database and log
    flwr-home/config.toml   the CLI's connection: address + the CA to verify it
    sites/<site>/data/      what that hospital holds (a copy of its own file only)
    sites/<site>/state/     its privacy ledger, DP state and approved apps (site-dir)
    sites/<site>/supernode.log
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

from medfl.deployment import certs
from medfl.deployment.processes import free_port, process_tree, stop_tree, stop_trees
from medfl.errors import MedflError

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
CONNECTION = "medfl"
#: Flower's code (logged; the process exits 1) for a SuperNode the SuperLink refused
EXIT_REFUSED = 305


def flower_bin(name: str) -> str:
    """A Flower executable of the running interpreter's environment."""
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else name


@dataclass
class LocalFederation:
    """Start, fault and stop a loopback deployment (use as a context manager)."""

    workdir: Path
    sites: Sequence[str] = ("cleveland", "hungarian", "switzerland", "va")
    port: int = 0
    control_port: int = 0
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    node_ids: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).resolve()
        self.port = self.port or free_port()
        self.control_port = self.control_port or free_port()
        self.certs = self.workdir / "certs"
        self.flwr_home = self.workdir / "flwr-home"
        self.fab = self.workdir / "app" / "medfl-app.fab"  # what every site approves

    # --- environment ----------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The SuperLink's address for the SuperNodes (Fleet API only)."""
        return f"127.0.0.1:{self.port}"

    @property
    def control_address(self) -> str:
        """The operator's address (Control API, loopback only): the flwr CLI's."""
        return f"127.0.0.1:{self.control_port}"

    def env(self) -> dict[str, str]:
        """The Flower processes' environment: this federation's Flower home, no telemetry,
        this interpreter's executables first; nothing of the checkout's local SuperLink."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLWR_LOCAL_")}
        env.update({
            "FLWR_HOME": str(self.flwr_home),
            "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        })
        env.pop("MEDFL_HOME", None)
        return env

    def prepare(self, *, force: bool = False) -> None:
        """Certificates, keys, the CLI's connection and each site's own data folder."""
        self.prepare_keys(force=force)
        self.prepare_sites()

    def prepare_keys(self, *, force: bool = False) -> None:
        """Certificates, site keys and the CLI's connection: all the SuperLink needs."""
        if force or not (self.certs / certs.CA_CERT).exists():
            certs.init_ca(self.certs, force=True)
        for site in self.sites:
            if force or not certs.site_keys(self.certs, site).private_key.exists():
                certs.add_site(self.certs, site, force=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(
            f'[superlink]\ndefault = "{CONNECTION}"\n\n[superlink.{CONNECTION}]\n'
            f'address = "{self.control_address}"\n'
            f'root-certificates = "{self.certs / certs.CA_CERT}"\n')

    def prepare_sites(self) -> None:
        """Each site's state folder, its own data file, and its approval of the app."""
        for site in self.sites:
            self.site_dir(site).joinpath("state").mkdir(parents=True, exist_ok=True)
            self._copy_site_data(site)
        self._approve_app()

    def _approve_app(self) -> None:
        """The operator signs this project's app bundle; every site approves it."""
        from medfl.federation.fab import write_fab
        from medfl.site import approval

        if not (self.certs / approval.APP_KEY).exists():
            approval.generate_app_key(self.certs, force=True)
        write_fab(ROOT, self.fab)
        signature = approval.sign_fab(self.fab, self.certs / approval.APP_KEY)
        for site in self.sites:
            approval.approve(self.site_dir(site) / "state", self.fab, signature=signature,
                             public_key=self.certs / approval.APP_PUB)

    def site_dir(self, site: str) -> Path:
        """One hospital's folder (its data and its state)."""
        return self.workdir / "sites" / certs.check_site_name(site)

    def _copy_site_data(self, site: str) -> None:
        from medfl.data.heart import HEART_SITES, data_dir, site_file_name

        if site not in HEART_SITES:
            raise MedflError(f"site {site!r}: the loopback federation ships the heart-disease "
                             f"hospitals only; valid: {list(HEART_SITES)}")
        target = self.site_dir(site) / "data"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy2(data_dir() / site_file_name(site), target / site_file_name(site))

    # --- processes ------------------------------------------------------------------------

    def _spawn(self, name: str, cmd: list[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env(),
                                    cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_superlink(self, *, timeout: float = 60.0) -> None:
        """Start the TLS SuperLink (site authentication on) as deploy/start-superlink.sh
        does: the Fleet API on ``port``, the Control API on loopback ``control_port``; wait
        until both listen."""
        self.spawn_superlink()
        self.wait_for_superlink(timeout=timeout)

    def spawn_superlink(self) -> subprocess.Popen:
        """Start the SuperLink (see :meth:`start_superlink`) without waiting for it."""
        c = self.certs
        return self._spawn("superlink", [
            sys.executable, "-m", "medfl.cli", "superlink", "--fleet-address", self.address,
            "--ssl-ca-certfile", str(c / certs.CA_CERT),
            "--ssl-certfile", str(c / certs.SERVER_CERT),
            "--ssl-keyfile", str(c / certs.SERVER_KEY), "--enable-supernode-auth",
            "--host", "127.0.0.1", "--port", str(self.control_port),
            "--database", str(self.workdir / "superlink" / "state.db"),
            "--disable-runtime-dependency-installation",
        ], self.workdir / "superlink" / "superlink.log")

    def wait_for_superlink(self, *, timeout: float = 60.0) -> None:
        """Wait until the started SuperLink listens on both its ports."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.procs["superlink"].poll() is not None:
                raise MedflError("the SuperLink exited at start; see "
                                 f"{self.workdir / 'superlink' / 'superlink.log'}")
            try:
                for port in (self.control_port, self.port):
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise MedflError(f"the SuperLink did not listen on port {self.port} within {timeout} s")

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run the ``flwr`` CLI against this federation; its output is captured."""
        return subprocess.run([flower_bin("flwr"), *args], env=self.env(), cwd=self.workdir,
                              capture_output=True, text=True, timeout=timeout)

    def register(self, site: str, *, public_key: Path | None = None) -> int:
        """Register a site's public key with the SuperLink; returns its node id."""
        key = public_key or certs.site_keys(self.certs, site).public_key
        proc = self.flwr("supernode", "register", str(key), CONNECTION, "--format", "json")
        return self._registered(site, proc.stdout + proc.stderr, proc.stdout)

    def register_all(self, sites: Sequence[str]) -> dict[str, int]:
        """Register several sites' keys at once (one ``flwr`` process each, side by side:
        each spends seconds importing Flower); returns their node ids."""
        procs = {site: subprocess.Popen(
            [flower_bin("flwr"), "supernode", "register",
             str(certs.site_keys(self.certs, site).public_key), CONNECTION, "--format", "json"],
            env=self.env(), cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) for site in sites}
        try:
            replies = {site: proc.communicate(timeout=120) for site, proc in procs.items()}
        except subprocess.TimeoutExpired:
            for proc in procs.values():
                proc.kill()
            raise MedflError(f"registering {list(sites)} did not finish within 120 s; is "
                             f"the SuperLink answering on {self.control_address}?") from None
        return {site: self._registered(site, out + err, out)
                for site, (out, err) in replies.items()}

    def _registered(self, site: str, reply: str, stdout: str) -> int:
        try:
            node_id = int(json.loads(stdout)["node-id"])
        except (ValueError, KeyError):
            raise MedflError(f"registering site {site!r} failed: "
                             f"{reply.strip()[-500:]}") from None
        self.node_ids[site] = node_id
        return node_id

    def unregister(self, site: str) -> None:
        """Revoke a site: its key no longer opens a connection."""
        proc = self.flwr("supernode", "unregister", str(self.node_ids[site]), CONNECTION)
        if proc.returncode != 0:
            raise MedflError(f"unregistering site {site!r} failed: "
                             f"{(proc.stdout + proc.stderr).strip()[-500:]}")

    def node_config(self, site: str) -> str:
        """A hospital's ``--node-config``: name, folders, privacy policy (start-site.sh's;
        these loopback hospitals also allow the default scenario's non-DP releases)."""
        d = self.site_dir(site)
        return (f"site='{site}' data-path='{d / 'data'}' site-dir='{d / 'state'}' "
                "max-epsilon=3.0 min-k=10 lifetime-epsilon=10.0 allow-personal-eval=true "
                "allow-audit=true allow-exact-moments=true")

    def start_supernode(self, site: str, *, key: Path | None = None, ca: bool = True,
                        name: str | None = None) -> subprocess.Popen:
        """One hospital's SuperNode (own key, own data folder, own state folder), started
        as deploy/start-site.sh does: through the site launcher, which runs only the apps
        the site approved."""
        name = name or site
        verify = ["--root-certificates", str(self.certs / certs.CA_CERT)] if ca else []
        cmd = [sys.executable, "-m", "medfl.cli", "site", "supernode", "--state-dir",
               str(self.site_dir(site) / "state"), "--superlink", self.address, *verify,
               "--auth-supernode-private-key",
               str(key or certs.site_keys(self.certs, site).private_key),
               "--port", str(free_port()), "--node-config", self.node_config(site)]
        return self._spawn(name, cmd, self.site_dir(site) / f"{name}.log")

    def online_until(self, site: str) -> float:
        """Until when (``time.time()``) the SuperLink counts ``site``'s node online (last
        heartbeat + 2 x 30 s), from its own database; 0.0 where it has no such record."""
        node = self.node_ids[site]
        db = f"file:{self.workdir / 'superlink' / 'state.db'}?mode=ro"
        try:
            with closing(sqlite3.connect(db, uri=True, timeout=10)) as conn:
                row = conn.execute("SELECT online_until FROM node WHERE node_id = ?",  # int64
                                   (node - 2**64 if node >= 2**63 else node,)).fetchone()
        except sqlite3.Error:  # another Flower's schema: rejoin() retries instead
            return 0.0
        return float(row[0]) if row and row[0] else 0.0

    def rejoin(self, site: str, *, timeout: float = 180.0) -> subprocess.Popen:
        """Restart a site's SuperNode until the SuperLink takes it back: it refuses (code
        305) a node it still counts as online, until that node's heartbeat expires. A
        supervisor (systemd, Docker's restart policy) does the same at a hospital. The
        first try waits for that expiry (within ``timeout``): each refused try costs a
        SuperNode's start-up."""
        deadline = time.monotonic() + timeout
        time.sleep(min(timeout, max(0.0, self.online_until(site) + 0.5 - time.time())))
        while True:
            proc = self.start_supernode(site)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                return proc  # connected and running
            if time.monotonic() > deadline:
                raise MedflError(f"site {site!r} could not rejoin within {timeout:g} s")
            time.sleep(3)

    def kill(self, name: str) -> None:
        """Kill a process and everything it started, at once (a machine losing power)."""
        proc = self.procs.pop(name)
        for pid in process_tree(proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait(timeout=30)

    def run_args(self, run_config: str) -> list[str]:
        """``flwr run`` of this project against the federation; the server waits for every
        started site unless the config says otherwise. A TOML file (e.g. a run's
        ``resume.toml``) is passed as it is: Flower takes a file or ``key=value`` pairs."""
        if "min-nodes" not in run_config and not run_config.endswith(".toml"):
            run_config = f"strategy.min-nodes={len(self.sites)} {run_config}"
        return [flower_bin("flwr"), "run", str(ROOT), CONNECTION, "--stream",
                "--run-config", run_config]

    def run(self, run_config: str, *, timeout: float = 1800.0,
            log: Path | None = None) -> subprocess.CompletedProcess:
        """``flwr run`` (see :meth:`run_args`), streamed to completion."""
        proc = self.flwr(*self.run_args(run_config)[1:], timeout=timeout)
        if log is not None:
            log.write_text(proc.stdout + proc.stderr)
        return proc

    def start(self) -> LocalFederation:
        """Prepare, start the SuperLink, register every site and start its SuperNode.

        The SuperLink starts as soon as its certificate exists: its start-up (seconds of
        imports) overlaps the sites' preparation, and the sites register side by side."""
        self.prepare_keys()
        self.spawn_superlink()
        self.prepare_sites()
        self.wait_for_superlink()
        self.register_all(self.sites)
        for site in self.sites:
            self.start_supernode(site)
        return self

    def stop(self) -> None:
        """Stop every process this federation started: the SuperNodes (together), then
        the SuperLink."""
        link = self.procs.pop("superlink", None)
        nodes = [self.procs.pop(n) for n in list(self.procs)]
        stop_trees(nodes)
        if link is not None:
            stop_tree(link)

    def __enter__(self) -> LocalFederation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
