"""``medfl certs ...`` and ``medfl local-federation``: deployment from the command line."""

from __future__ import annotations

import signal
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from medfl.errors import MedflError

certs_app = typer.Typer(no_args_is_help=True, help="Keys and certificates for a deployed "
                        "federation (CA, SuperLink certificate, site keys).")


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@certs_app.command("init")
def certs_init(
    directory: Annotated[Path, typer.Argument(help="the operator's folder for CA and keys")],
    san: Annotated[list[str] | None, typer.Option(
        help="a host name or IP address sites use to reach the SuperLink (repeat); "
             "default: localhost, 127.0.0.1, ::1")] = None,
    days: Annotated[int, typer.Option(min=1, help="validity in days")] = 825,
    force: Annotated[bool, typer.Option(help="replace an existing CA and certificate")] = False,
) -> None:
    """Create the federation's CA and the SuperLink's TLS certificate (keys 0600)."""
    from medfl.deployment import certs

    try:
        ca, server = certs.init_ca(directory, sans=san or list(certs.DEFAULT_SANS), days=days,
                                   force=force)
    except MedflError as exc:
        raise _fail(exc) from None
    typer.echo(f"CA certificate:       {ca} (give it to every site and to the flwr CLI)\n"
               f"SuperLink certificate: {server} and {server.with_suffix('.key')} (the "
               f"SuperLink only)\nCA key:               {ca.with_suffix('.key')} (keep "
               "offline; needed only to issue a new SuperLink certificate)")


@certs_app.command("add-site")
def certs_add_site(
    directory: Annotated[Path, typer.Argument(help="the folder of `medfl certs init`")],
    name: Annotated[str, typer.Argument(help="the site's name, e.g. cleveland")],
    force: Annotated[bool, typer.Option(help="replace the site's existing key pair")] = False,
) -> None:
    """Create a site's SuperNode authentication key pair (EC P-384, OpenSSH format)."""
    from medfl.deployment import certs

    try:
        keys = certs.add_site(directory, name, force=force)
    except MedflError as exc:
        raise _fail(exc) from None
    typer.echo(f"private key: {keys.private_key} (to the site only; "
               "--auth-supernode-private-key)\n"
               f"public key:  {keys.public_key} (register it: flwr supernode register "
               f"{keys.public_key} <connection>)")


@certs_app.command("app-key")
def certs_app_key(
    directory: Annotated[Path, typer.Argument(help="the operator's folder for CA and keys")],
    force: Annotated[bool, typer.Option(help="replace the existing app-signing key")] = False,
) -> None:
    """Create the consortium's Ed25519 app-signing key: sites approve only apps it signed."""
    from medfl.site.approval import generate_app_key

    try:
        priv, pub = generate_app_key(directory, force=force)
    except MedflError as exc:
        raise _fail(exc) from None
    typer.echo(f"app-signing key: {priv} (the operator only: medfl app build --sign-key)\n"
               f"public key:      {pub} (to every site: medfl site approve --publisher-key)")


def local_federation(
    workdir: Annotated[Path | None, typer.Option(
        help="folder for certificates, logs, site folders and outputs (default: a new "
             "temporary folder)")] = None,
    site: Annotated[list[str] | None, typer.Option(
        help="a heart-disease hospital to start (repeat; default: all four)")] = None,
    run_config: Annotated[str, typer.Option(
        help="extra run config, as for `flwr run --run-config`, e.g. "
             "\"num-server-rounds=3\"")] = "",
) -> None:
    """Run the default scenario on a real loopback deployment: a TLS SuperLink with
    SuperNode authentication, one authenticated SuperNode per hospital (each reading only
    its own data folder), `flwr run`, then stop every process, also on failure."""
    from medfl.deployment.local import LocalFederation

    workdir = workdir or Path(tempfile.mkdtemp(prefix="medfl-federation-"))
    sites = tuple(site or ("cleveland", "hungarian", "switzerland", "va"))
    run_name = time.strftime("deployed-%Y%m%d-%H%M%S", time.gmtime())
    out = workdir / "outputs"
    config = (f"output-dir='{out}' run-name='{run_name}' strategy.min-nodes={len(sites)} "
              + run_config).strip()

    def _terminate(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _terminate)
    fed = LocalFederation(workdir, sites=sites)
    try:
        typer.echo(f"working folder: {workdir}")
        fed.start()
        typer.echo(f"SuperLink (TLS, SuperNode authentication) on {fed.address}; sites: "
                   + ", ".join(f"{s} (node {fed.node_ids[s]})" for s in sites))
        proc = fed.run(config, log=workdir / "flwr-run.log")
    except (MedflError, KeyboardInterrupt) as exc:
        raise _fail(exc) from None
    finally:
        # a second Ctrl-C or SIGTERM must not interrupt the clean-up half-way
        ignored = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            fed.stop()
        finally:
            signal.signal(signal.SIGINT, ignored[signal.SIGINT])
            signal.signal(signal.SIGTERM, previous)
    run = out / run_name
    if proc.returncode != 0 or not (run / "summary.json").is_file():
        typer.echo(f"error: the run failed (flwr exit {proc.returncode}); logs: "
                   f"{workdir / 'flwr-run.log'}, {workdir / 'superlink'}, "
                   f"{workdir / 'sites'}", err=True)
        raise typer.Exit(1)
    typer.echo(f"run folder: {run}")
    from medfl.commands.runs import show

    show(run)
