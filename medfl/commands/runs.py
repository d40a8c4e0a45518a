"""``medfl report`` and ``medfl show``: a finished run's reports and headline table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import medfl
from medfl.commands.display import format_epsilon as _eps
from medfl.commands.display import format_value as _fmt
from medfl.reporting.summary_schema import Summary

__all__ = ["report", "show"]


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


def _site_table(s: Summary, keys: tuple[str, str], seg: bool) -> Table:
    """The per-site rows and the all-sites row of ``medfl show``."""
    personal = s.personal
    table = Table(title=f"MedFL run {s.run_name} — {s.task}, {s.strategy}, {s.rounds} rounds")
    columns = ["site", "n_train", "n_test", "ε spent", "δ"]
    columns += ["Dice", "IoU"] if seg else ["accuracy", "AUROC"]
    if personal is not None:
        columns.append(f"personalised {'Dice' if seg else 'accuracy'}")
    for col in columns:
        table.add_column(col, justify="left" if col == "site" else "right")
    for site in s.sites:
        row = [site.name, str(site.n_train), str(site.n_test), _eps(site.epsilon),
               _fmt(site.delta, 4) if site.delta else "-",
               *(_fmt(site.metrics.value(k)) for k in keys)]
        if personal is not None:
            tuned = site.personal_metrics
            row.append(_fmt(tuned.value(keys[0]) if tuned is not None else None))
        table.add_row(*row)
    table.add_section()
    total = ["all sites", str(sum(x.n_train or 0 for x in s.sites)), str(s.pooled.n_test),
             "", "", *(_fmt(s.pooled.metrics.value(k)) for k in keys)]
    if personal is not None:
        total.append(_fmt(personal.metrics.value(keys[0])))
    table.add_row(*total)
    return table


def _headlines(console: Console, s: Summary, keys: tuple[str, str], seg: bool) -> None:
    """The mean per-site figures under the table, and what 'suppressed' means."""
    held = [x.name for x in s.sites if x.metrics.value(keys[0]) is None]
    over = f"over {len(s.sites) - len(held)} of {len(s.sites)} sites"
    if seg:
        console.print(f"mean per-site Dice ({over}): [bold]{_fmt(s.mean_site_dice)}[/bold]")
    else:
        console.print(f"mean per-site accuracy (FLamby's headline, {over}): "
                      f"[bold]{_fmt(s.mean_site_accuracy)}[/bold]")
    if held:
        console.print(f"suppressed, left out of the mean: {', '.join(held)}")
    if s.personal is not None:  # personalised evaluation (evaluation.personal-epochs)
        name = "Dice" if seg else "accuracy"
        value = s.personal.mean_site_dice if seg else s.personal.mean_site_accuracy
        console.print(f"mean per-site {name}, personalised ({s.personal.epochs} local "
                      "epoch(s) of fine-tuning at each site; the copies stay there): "
                      f"[bold]{_fmt(value)}[/bold]")
    if any(x.metrics.value(keys[1]) is None for x in s.sites):
        what = "images" if seg else "patients in a class"
        console.print(f"'suppressed': fewer than k={s.privacy.k_threshold} {what} "
                      "at that site; the value never left the site.")


def _refuse_failed(run_dir: Path) -> None:
    """Exit with the reason when ``run_dir`` holds a run that stopped before it finished."""
    from medfl.reporting.run_dir import FAILED_FILE

    failed = run_dir / FAILED_FILE
    if failed.is_file():
        try:
            reason = json.loads(failed.read_text()).get("reason", "no reason recorded")
        except (OSError, ValueError):
            reason = f"{FAILED_FILE} is unreadable"
        typer.echo(f"error: run {run_dir.name} failed before it finished: {reason}", err=True)
        raise typer.Exit(1)


def show(
    run_dir: Annotated[Path, typer.Argument(help="a run folder, e.g. outputs/latest")],
) -> None:
    """Print a run's per-site table and global figures from its summary.json."""
    from medfl.errors import MedflError

    path = run_dir / "summary.json"
    _refuse_failed(run_dir)
    if not path.is_file():
        typer.echo(f"error: {path} not found: is {run_dir} a finished MedFL run? "
                   "(runs are in outputs/<run-name>/, the newest is outputs/latest)", err=True)
        raise typer.Exit(2)
    try:
        s = Summary.load(path)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    seg = s.segmentation
    keys = ("dice", "iou") if seg else ("accuracy", "auroc")
    console = Console()
    console.print(_site_table(s, keys, seg))
    _headlines(console, s, keys, seg)
    if (run_dir / "report.html").is_file():
        console.print(f"fairness report: {(run_dir / 'report.html').resolve()} "
                      "(per site: sites/<site>/report.html; MODEL_CARD.md)")
    console.print(f"run directory: {run_dir.resolve()}")
    console.print(medfl.DISCLAIMER, style="dim")
