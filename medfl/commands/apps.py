"""``medfl app ...`` (the operator signs the app), ``medfl site ...`` (the hospital approves
it and starts its SuperNode) and ``medfl superlink`` (the coordinator, control plane on
loopback). See deploy/README.md for who runs which, and ``medfl.site.approval`` for why."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from medfl.errors import MedflError

app_app = typer.Typer(no_args_is_help=True, help="Build and sign the app (FAB) the sites run "
                      "(the consortium operator).")
site_app = typer.Typer(no_args_is_help=True, help="A hospital's site: approve the app code it "
                       "runs, and start its SuperNode.")

#: what ``medfl site supernode`` puts first on the SuperNode's PATH
SHIM_DIR = ".medfl-bin"
PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


@app_app.command("build")
def build(
    project: Annotated[Path, typer.Argument(help="the MedFL project folder (as for flwr run)")]
    = Path("."),
    out: Annotated[Path, typer.Option(help="where to write the FAB")] = Path("medfl-app.fab"),
    sign_key: Annotated[Path | None, typer.Option(
        help="the consortium's app-signing key (`medfl certs app-key`): also write "
             "<out>.sig")] = None,
) -> None:
    """Build the app bundle `flwr run` submits from PROJECT (same bytes, same sha256)."""
    from medfl.federation.fab import write_fab
    from medfl.site.approval import sign_fab

    try:
        path, digest = write_fab(project, out)
        sig = sign_fab(path, sign_key) if sign_key is not None else None
    except MedflError as exc:
        raise _fail(exc) from None
    typer.echo(f"app bundle: {path}\nsha256:     {digest}")
    if sig is not None:
        typer.echo(f"signature:  {sig} (send both files to every site)")


@app_app.command("sign")
def sign(
    fab: Annotated[Path, typer.Argument(help="the app bundle (.fab)")],
    key: Annotated[Path, typer.Option(help="the consortium's app-signing key")],
) -> None:
    """Sign an app bundle with the consortium's app-signing key (writes <fab>.sig)."""
    from medfl.site.approval import sign_fab

    try:
        typer.echo(f"signature: {sign_fab(fab, key)}")
    except (MedflError, OSError) as exc:
        raise _fail(exc) from None


@site_app.command("approve")
def approve(
    fab: Annotated[Path, typer.Argument(help="the app bundle (.fab) the operator sent")],
    state_dir: Annotated[Path, typer.Option(help="this site's state folder (STATE_DIR)")],
    publisher_key: Annotated[Path, typer.Option(
        help="the consortium's app-signing public key (app-signing.pub)")],
    signature: Annotated[Path | None, typer.Option(
        help="the FAB's signature (default: <fab>.sig)")] = None,
    yes: Annotated[bool, typer.Option("--yes", help="approve without asking")] = False,
) -> None:
    """Show what an app bundle holds, verify its signature, and approve its sha256: this
    site's SuperNode then runs this exact code, and refuses any other."""
    from medfl.site import approval

    signature = signature or approval.signature_path(fab)
    try:
        content = fab.read_bytes()
        files = approval.read_fab(content)
        approval.verify_fab(content, signature, publisher_key)
    except (MedflError, OSError) as exc:
        raise _fail(exc) from None
    typer.echo(f"app bundle {fab.name}: signature verified; sha256 "
               f"{approval.fab_sha256(content)}")
    for f in files:
        typer.echo(f"  {f.size:>8}  {f.name}")
    typer.echo("Read client/app.py before approving: it is the code that handles your data "
               "(it calls the MedFL installed at this site).")
    if not yes and not typer.confirm("approve this app for this site?"):
        raise typer.Exit(1)
    try:
        digest = approval.approve(state_dir, fab, signature=signature, public_key=publisher_key)
    except (MedflError, OSError) as exc:
        raise _fail(exc) from None
    typer.echo(f"approved: {digest}")


@site_app.command("apps")
def apps(
    state_dir: Annotated[Path, typer.Option(help="this site's state folder (STATE_DIR)")],
) -> None:
    """List the app bundles this site has approved."""
    from medfl.site.approval import read_allow_list

    try:
        approved = read_allow_list(state_dir)
    except MedflError as exc:
        raise _fail(exc) from None
    for digest, entry in sorted(approved.items()):
        typer.echo(f"{digest}  {entry.get('approved_utc', '?')}  {entry.get('name', '')}")
    if not approved:
        typer.echo("no app approved: the SuperNode refuses every run")


@site_app.command("revoke")
def revoke(
    sha256: Annotated[str, typer.Argument(help="the approved app's full sha256")],
    state_dir: Annotated[Path, typer.Option(help="this site's state folder (STATE_DIR)")],
) -> None:
    """Withdraw an app's approval: the next task that asks for it is refused."""
    from medfl.site.approval import revoke as revoke_app

    try:
        revoke_app(state_dir, sha256)
    except MedflError as exc:
        raise _fail(exc) from None
    typer.echo(f"revoked: {sha256}")


def write_shim(state_dir: Path) -> Path:
    """Write ``<state_dir>/.medfl-bin/flwr-clientapp``, which runs the guarded ClientApp
    (``medfl.federation.clientapp_guard``) with this interpreter; returns its folder."""
    shim_dir = Path(state_dir).resolve() / SHIM_DIR
    shim_dir.mkdir(parents=True, exist_ok=True)
    shim = shim_dir / "flwr-clientapp"
    shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m "
                    'medfl.federation.clientapp_guard "$@"\n')
    os.chmod(shim, 0o755)
    return shim_dir


@site_app.command("supernode", context_settings=PASS_THROUGH)
def supernode(
    ctx: typer.Context,
    state_dir: Annotated[Path, typer.Option(help="this site's state folder (STATE_DIR), "
                                                 "holding its approved apps")],
) -> None:
    """Start flower-supernode (the remaining options are passed to it) so that each task's
    ClientApp runs only an app this site approved."""
    from medfl.federation.clientapp_guard import STATE_DIR_ENV

    shim_dir = write_shim(state_dir)
    env = dict(os.environ)
    env["PATH"] = f"{shim_dir}{os.pathsep}{env.get('PATH', '')}"
    env[STATE_DIR_ENV] = str(Path(state_dir).resolve())
    local = Path(sys.executable).parent / "flower-supernode"
    exe = str(local) if local.exists() else "flower-supernode"
    os.execvpe(exe, [exe, *ctx.args], env)


def superlink(ctx: typer.Context) -> None:
    """Start the SuperLink: Fleet API for the sites on --fleet-address, Control and
    Runtime APIs on --host/--port, which must be loopback (other options: flower-superlink's)."""
    from medfl.federation.superlink import main

    try:
        main(ctx.args)
    except MedflError as exc:
        raise _fail(exc) from None
