"""Serving commands: ``serve`` over HTTP, ``predict`` offline, ``keygen`` and ``sign``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["keygen", "predict", "serve", "sign"]


def serve(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (or its model/ bundle)")],
    host: Annotated[str, typer.Option(
        help="interface to listen on; other than loopback only with MEDFL_API_KEY set")]
    = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
    limit_concurrency: Annotated[int, typer.Option(
        help="open connections per worker before new ones get 503")] = 64,
) -> None:
    """Serve a run's model over HTTP (FastAPI: /predict, /explain, /model, /docs).

    Set MEDFL_API_KEY to require an X-API-Key header on every route but /health; without
    it the service listens on loopback only (a network --host is refused). With
    MEDFL_PUBLIC_KEY, only a bundle (and report and model card) it verifies is served.
    """
    import os

    import uvicorn

    from medfl.errors import MedflError
    from medfl.serving import load_bundle
    from medfl.serving.attachments import served_attachments
    from medfl.serving.exposure import is_loopback

    if not os.environ.get("MEDFL_API_KEY") and not is_loopback(host):
        typer.echo(f"error: refusing to serve on {host} without an API key: anyone who can "
                   "reach that interface could query the model. Set MEDFL_API_KEY (16+ "
                   "characters) or listen on 127.0.0.1 (the default)", err=True)
        raise typer.Exit(2)
    public_key = os.environ.get("MEDFL_PUBLIC_KEY")
    try:  # fail here, with a clear message, before uvicorn starts
        bundle = load_bundle(run_dir, public_key=Path(public_key) if public_key else None)
        served_attachments(bundle, signed_only=bool(public_key))
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    os.environ["MEDFL_BUNDLE"] = str(run_dir.resolve())
    # Our request log (id, route, status, latency) replaces uvicorn's access log, which
    # would print client addresses and query strings.
    log_config = {
        "version": 1, "disable_existing_loggers": False,
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {"out": {"class": "logging.StreamHandler", "formatter": "plain"}},
        "loggers": {"medfl": {"handlers": ["out"], "level": "INFO", "propagate": False},
                    "uvicorn.error": {"handlers": ["out"], "level": "INFO"}},
    }
    uvicorn.run("deploy.api.app:create_app", factory=True, host=host, port=port,
                workers=workers, access_log=False, log_config=log_config,
                limit_concurrency=limit_concurrency)


def predict(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (or its model/ bundle)")],
    input_path: Annotated[Path, typer.Argument(
        help="tabular: a CSV of records; imaging: an image file or a folder of images")],
    output: Annotated[Path, typer.Option("--output", "-o", help="CSV of predictions")],
    explain: Annotated[bool, typer.Option(
        "--explain", help="image classification: also write each image's Grad-CAM overlay")]
    = False,
) -> None:
    """Offline batch inference (no server): one prediction per record or image.

    Imaging bundles read PNG/JPEG/DICOM/NIfTI with the preprocessing recorded at training;
    segmentation also writes each mask as a PNG (0/255), ``<output stem>_masks/<file>.mask.png``;
    with ``--explain``, classification writes Grad-CAM overlays,
    ``<output stem>_gradcam/<file>.gradcam.png``. Nothing is written unless every input could
    be predicted.
    """
    from medfl.errors import MedflError
    from medfl.serving import load_bundle
    from medfl.serving.batch import predict_batch

    try:
        batch = predict_batch(load_bundle(run_dir), input_path, output=output, explain=explain)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    batch.write(output)
    typer.echo(f"{len(batch.table)} predictions written to {output}")


def keygen(
    directory: Annotated[Path, typer.Argument(help="folder for the key pair")],
    force: Annotated[bool, typer.Option(help="replace an existing key pair")] = False,
) -> None:
    """Create an Ed25519 key pair for signing model bundles (private key 0600)."""
    from medfl.errors import MedflError
    from medfl.serving.signing import generate_keypair

    try:
        priv, pub = generate_keypair(directory, force=force)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"private key: {priv} (keep it on the server; MEDFL_SIGNING_KEY)\n"
               f"public key:  {pub} (give it to the service; MEDFL_PUBLIC_KEY)")


def sign(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (or its model/ bundle)")],
    key: Annotated[Path, typer.Argument(help="the Ed25519 private key (PEM)")],
) -> None:
    """Sign a bundle's manifest (runs sign automatically when MEDFL_SIGNING_KEY is set)."""
    from medfl.errors import MedflError
    from medfl.serving import load_bundle
    from medfl.serving.signing import sign_bundle

    try:
        bundle = load_bundle(run_dir)
        path = sign_bundle(bundle.path, key)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"signed: {path}")
