"""The ``medfl`` command line (typer + rich)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import medfl

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help=f"MedFL: federated learning for hospitals. {medfl.DISCLAIMER}")


@app.callback()
def _root() -> None:
    """MedFL command line."""


def _eps(value: float | str | None) -> str:
    """ε truncated (not rounded) to 3 decimals, so the display never exceeds the value."""
    if isinstance(value, (int, float)) and math.isfinite(value):
        return f"{math.floor(value * 1000) / 1000:.3f}"
    return _fmt(value)


def _fmt(value: float | str | None, digits: int = 3) -> str:
    if value is None:
        return "suppressed"
    if isinstance(value, str):
        return value
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


@app.command()
def report(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. outputs/latest")],
) -> None:
    """Rebuild a run's report.json, report.html, sites/<site>/report.html and MODEL_CARD.md
    from its run directory (what the sites shared is kept in evaluation.json)."""
    from medfl.errors import MedflError
    from medfl.reporting.files import write_reports

    if not (run_dir / "summary.json").is_file():
        typer.echo(f"error: {run_dir / 'summary.json'} not found: is {run_dir} a finished "
                   "MedFL run? (runs are in outputs/<run-name>/)", err=True)
        raise typer.Exit(2)
    try:
        rep = write_reports(run_dir)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    pooled = rep["populations"][0]["metrics"]
    head = ("dice", "iou", "hd95") if rep["kind"] == "segmentation" else (
        "auroc", "sensitivity", "specificity", "brier", "ece")
    console = Console()
    for name in head:
        m = pooled[name]
        ci = f" (95% CI {m['ci'][0]:.3f}–{m['ci'][1]:.3f})" if m["ci"] else ""
        console.print(f"pooled {name}: {_fmt(m['value'])}{ci}")
    flagged = sum(g["flagged"] for p in rep["populations"] for f in p["fairness"]
                  for g in f["gaps"].values())
    console.print(f"fairness gaps with a 95% CI excluding 0: {flagged}")
    for name in ("report.html", "MODEL_CARD.md", "report.json"):
        console.print(f"wrote {(run_dir / name).resolve()}")
    console.print(f"site views: {(run_dir / 'sites').resolve()}/<site>/report.html")


@app.command()
def show(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. outputs/latest")],
) -> None:
    """Print a run's per-site table and global figures from its summary.json."""
    path = run_dir / "summary.json"
    if not path.is_file():
        typer.echo(f"error: {path} not found: is {run_dir} a finished MedFL run? "
                   "(runs are in outputs/<run-name>/, the newest is outputs/latest)", err=True)
        raise typer.Exit(2)
    s = json.loads(path.read_text())
    console = Console()
    table = Table(title=f"MedFL run {s['run_name']} — {s['task']}, {s['strategy']}, "
                        f"{s['rounds']} rounds")
    seg = "mean_site_dice" in s or s["task"] == "segmentation"
    keys = ("dice", "iou") if seg else ("accuracy", "auroc")
    personal = "personal" in s
    for col in ("site", "n_train", "n_test", "ε spent", "δ",
                *(("Dice", "IoU") if seg else ("accuracy", "AUROC")),
                *((f"personalised {'Dice' if seg else 'accuracy'}",) if personal else ())):
        table.add_column(col, justify="left" if col == "site" else "right")
    for site in s["sites"]:
        m = site["metrics"]
        table.add_row(site["name"], str(site["n_train"]), str(site["n_test"]),
                      _eps(site["epsilon"]), _fmt(site["delta"] or "-", 4) if site["delta"]
                      else "-", *(_fmt(m.get(k)) for k in keys),
                      *((_fmt(site["personal_metrics"].get(keys[0])),) if personal else ()))
    g = s["global"]["metrics"]
    table.add_section()
    table.add_row("all sites", str(sum(x["n_train"] or 0 for x in s["sites"])),
                  str(s["global"]["n_test"]), "", "", *(_fmt(g.get(k)) for k in keys),
                  *((_fmt(s["personal"]["metrics"].get(keys[0])),) if personal else ()))
    console.print(table)
    if seg:
        console.print(f"mean per-site Dice: [bold]{_fmt(s.get('mean_site_dice'))}[/bold]")
    else:
        console.print(f"mean per-site accuracy (FLamby's headline): "
                      f"[bold]{_fmt(s['mean_site_accuracy'])}[/bold]")
    if personal:  # personalised evaluation (evaluation.personal-epochs)
        name, value = (("Dice", "mean_site_dice") if seg else ("accuracy", "mean_site_accuracy"))
        console.print(f"mean per-site {name}, personalised ({s['personal']['epochs']} local "
                      "epoch(s) of fine-tuning at each site; the copies stay there): "
                      f"[bold]{_fmt(s['personal'].get(value))}[/bold]")
    if any(x["metrics"].get(keys[1]) is None for x in s["sites"]):
        what = "images" if seg else "patients in a class"
        console.print(f"'suppressed': fewer than k={s['privacy']['k_threshold']} {what} "
                      "at that site; the value never left the site.")
    if (run_dir / "report.html").is_file():
        console.print(f"fairness report: {(run_dir / 'report.html').resolve()} "
                      "(per site: sites/<site>/report.html; MODEL_CARD.md)")
    console.print(f"run directory: {run_dir.resolve()}")
    console.print(medfl.DISCLAIMER, style="dim")


@app.command()
def budget(
    site_dir: Annotated[Path, typer.Argument(help="a site's state folder (its node-config "
                                                  "site-dir, or <state-dir>/<site>)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print a site's lifetime privacy ledger: ε per run, total spent, limit, remaining."""
    from medfl.errors import MedflError
    from medfl.privacy.ledger import Ledger

    try:
        ledger = Ledger.read(site_dir)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    last = ledger.entries[-1] if ledger.entries else None
    delta = last["delta"] if last else None
    total = (ledger.lifetime_epsilon(delta=delta, accountant=last["accountant"])
             if last else 0.0)
    limit = last["lifetime_limit"] if last else None
    remaining = None if limit is None else max(0.0, limit - total)
    runs = ledger.runs()
    if as_json:
        def clean(v):
            return "inf" if isinstance(v, float) and math.isinf(v) else v

        typer.echo(json.dumps({
            "site": ledger.site, "lifetime_epsilon": clean(total), "delta": delta,
            "limit": limit, "remaining": clean(remaining),
            "runs": [{k: clean(v) for k, v in r.items()} for r in runs],
        }, indent=2))
        return
    table = Table(title=f"privacy ledger of site {ledger.site}")
    for col in ("run", "first round (UTC)", "trained", "refused", "ε this run", "δ",
                "accountant"):
        table.add_column(col, justify="left" if col in ("run", "first round (UTC)") else "right")
    for r in runs:
        table.add_row(str(r["run_id"]), r["first_utc"], str(r["rounds_trained"]),
                      str(r["rounds_refused"]), _eps(r["epsilon"]), f"{r['delta']:g}",
                      r["accountant"])
    console = Console()
    console.print(table)
    console.print(f"lifetime ε spent: [bold]{_eps(total)}[/bold] (δ={delta}, all runs composed)"
                  f"; limit: {limit if limit is not None else 'none'}"
                  + (f"; remaining: {remaining:.3f}" if remaining is not None else ""))


@app.command()
def audit(
    run_dir: Annotated[Path, typer.Argument(help="a finished run folder, e.g. outputs/latest")],
    site: Annotated[list[str] | None, typer.Option(help="audit only these sites")] = None,
    data_path: Annotated[Path | None, typer.Option(
        help="a site's own data folder (with --site): run the audit as that hospital")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Membership-inference audit (loss threshold) of a run's global model, per site.

    Runs what each site runs at the end of a federated run: the attack on the site's own
    training rows (members) and test rows (non-members). In simulation it reads the
    run's data (embedded or synthetic); a hospital passes --site and --data-path (its data
    folder, or for imaging its manifest CSV) to audit on its own data.
    """
    from medfl import site as site_lib
    from medfl import tasks
    from medfl.config import parse_run_config
    from medfl.data.scaling import Standardizer
    from medfl.errors import MedflError
    from medfl.serving import load_bundle

    try:
        config = json.loads((run_dir / "config.json").read_text())
        cfg = parse_run_config(config["run_config"])
        bundle = load_bundle(run_dir)
        std = bundle.manifest["preprocessing"].get("standardizer")
        scaler = Standardizer.from_dict(std) if std else Standardizer((), (), ())
        names = site or list(tasks.task_for(cfg).sites())
        if data_path is not None and len(names) != 1:
            raise typer.BadParameter("--data-path needs exactly one --site")
        rows = {}
        for name in names:
            data = site_lib.load_site(cfg, name, data_path=str(data_path) if data_path else None)
            rows[name] = site_lib.audit(cfg, data, weights=bundle.weights, scaler=scaler)
    except (OSError, KeyError, json.JSONDecodeError, MedflError) as exc:
        typer.echo(f"error: cannot audit {run_dir}: {type(exc).__name__}: {exc}", err=True)
        raise typer.Exit(2) from None
    if as_json:
        typer.echo(json.dumps({n: {"attack_auc": r.attack_auc, "tpr_at_fpr_0.1": r.tpr_at_low_fpr,
                                   "members": r.members, "non_members": r.non_members}
                               for n, r in rows.items()}, indent=2))
        return
    table = Table(title=f"membership inference (loss threshold) on run {run_dir.name}")
    for col in ("site", "members", "non-members", "attack AUC", "TPR @ FPR 0.1"):
        table.add_column(col, justify="left" if col == "site" else "right")
    for n, r in rows.items():
        table.add_row(n, str(r.members), str(r.non_members), _fmt(r.attack_auc),
                      _fmt(r.tpr_at_low_fpr))
    console = Console()
    console.print(table)
    console.print("0.5 = the attack cannot tell members from non-members.", style="dim")


@app.command()
def serve(
    run_dir: Annotated[Path, typer.Argument(help="a run folder (or its model/ bundle)")],
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 8000,
    workers: Annotated[int, typer.Option(help="uvicorn worker processes")] = 1,
) -> None:
    """Serve a run's model over HTTP (FastAPI: /predict, /explain, /model, /docs).

    Set MEDFL_API_KEY to require an X-API-Key header on every route but /health.
    """
    import os

    import uvicorn

    from medfl.errors import MedflError
    from medfl.serving import load_bundle

    try:
        load_bundle(run_dir)  # fail here, with a clear message, before uvicorn starts
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
                workers=workers, access_log=False, log_config=log_config)


@app.command()
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
    import pandas as pd

    from medfl.errors import MedflError
    from medfl.io import atomic_write_bytes
    from medfl.serving import ImageModel, TabularModel, load_bundle

    masks: dict[str, object] = {}
    overlays: dict[str, bytes] = {}
    try:
        bundle = load_bundle(run_dir)
        if bundle.manifest.get("input_schema", {}).get("type") == "image":
            model = ImageModel.from_bundle(bundle)
            files = (sorted(f for f in input_path.iterdir() if f.is_file())
                     if input_path.is_dir() else [input_path])
            if not files:
                raise MedflError(f"{input_path.name} holds no files")
            out = []
            for f in files:
                try:
                    data = f.read_bytes()
                    [pred] = model.predict([data])
                    if explain and not model.segmentation:
                        overlays[f.name] = model.explain([data])[0]["overlay_png"]
                except (MedflError, OSError) as exc:
                    raise MedflError(f"{f.name}: {exc}") from None
                out.append(pred)
            names = [f.name for f in files]
            if model.segmentation:
                masks = {n: p.pop("mask") for n, p in zip(names, out, strict=True)}
                result = pd.DataFrame({"file": names,
                                       "lesion_fraction": [p["lesion_fraction"] for p in out],
                                       "mask": [f"{output.stem}_masks/{n}.mask.png"
                                                for n in names]})
            else:
                result = pd.DataFrame({"file": names, "label": [p["label"] for p in out],
                                       **{f"p_{k}": [p["probabilities"][k] for p in out]
                                          for k in model.labels}})
                if overlays:
                    result["gradcam"] = [f"{output.stem}_gradcam/{n}.gradcam.png"
                                         for n in names]
        else:
            model = TabularModel.from_bundle(bundle)
            try:
                frame = pd.read_csv(input_path)
            except (OSError, ValueError) as exc:
                raise MedflError(f"{input_path.name} is not a readable CSV "
                                 f"({type(exc).__name__})") from None
            out = model.predict(frame.to_dict("records"))
            result = pd.DataFrame({"label": [p["label"] for p in out],
                                   **{f"p_{k}": [p["probabilities"][k] for p in out]
                                      for k in model.labels}})
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if masks:
        from io import BytesIO

        from PIL import Image

        folder = output.parent / f"{output.stem}_masks"
        folder.mkdir(parents=True, exist_ok=True)
        for name, mask in masks.items():
            buf = BytesIO()
            Image.fromarray(mask * 255).save(buf, format="PNG")
            atomic_write_bytes(folder / f"{name}.mask.png", buf.getvalue())
    for name, png in overlays.items():
        atomic_write_bytes(output.parent / f"{output.stem}_gradcam" / f"{name}.gradcam.png", png)
    atomic_write_bytes(output, result.to_csv(index=False).encode())
    typer.echo(f"{len(result)} predictions written to {output}")


@app.command()
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


@app.command()
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


def main() -> None:
    app()


def _register_deployment() -> None:
    from medfl.deployment.cli import certs_app, local_federation

    app.add_typer(certs_app, name="certs")
    app.command("local-federation")(local_federation)


_register_deployment()


if __name__ == "__main__":
    main()
