"""``medfl budget``: a site's lifetime privacy ledger, as its privacy officer reads it.

Two budgets, one ledger: the training rows (DP-SGD rounds, noised feature moments) and
the test rows (monitoring evaluations, the final report). They are disjoint patients, so
each patient's ε is the larger of the two (parallel composition).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from medfl.commands.display import format_epsilon as _eps

if TYPE_CHECKING:
    from medfl.privacy.ledger import Ledger

__all__ = ["budget", "budget_figures"]

_NAMES = {"train": "training rows", "test": "test rows"}


def budget_figures(ledger: Ledger) -> dict[str, Any]:
    """Per budget (``train``, ``test``): lifetime ε at the site's δ (as the site composes
    it: the δ of the budget's latest entry), that δ, the limit in force and what remains;
    and the per-patient ε, the larger of the two."""
    out: dict[str, Any] = {}
    for budget in ("train", "test"):
        entries = ledger.of(budget)
        delta, total, limit = None, 0.0, None
        if entries:
            last = entries[-1]
            # the site's δ, which the ledger composes at (before it was kept: the run's)
            delta = float(last.get("site_delta", last["delta"]))
            total = ledger.lifetime_epsilon(delta=delta, accountant=last["accountant"],
                                            budget=budget)
            limit = last["lifetime_limit"]
        out[budget] = {"lifetime_epsilon": total, "delta": delta, "limit": limit,
                       "remaining": None if limit is None else max(0.0, limit - total)}
    out["per_patient_epsilon"] = max(out["train"]["lifetime_epsilon"],
                                     out["test"]["lifetime_epsilon"])
    return out


def _clean(value: Any) -> Any:
    """``value`` with every infinite ε written as "inf" (JSON has no infinity)."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return "inf" if isinstance(value, float) and math.isinf(value) else value


def _print_table(site: str, runs: list[dict[str, Any]], figures: dict[str, Any]) -> None:
    table = Table(title=f"privacy ledger of site {site}")
    for col in ("run", "first entry (UTC)", "rounds trained", "refused", "training ε",
                "test releases", "refused ", "test ε", "δ (run)", "accountant"):
        table.add_column(col, justify="left" if col in ("run", "first entry (UTC)")
                         else "right")
    for r in runs:
        table.add_row(str(r["run_id"]), r["first_utc"], str(r["rounds_trained"]),
                      str(r["rounds_refused"]), _eps(r["epsilon"]),
                      str(r.get("test_releases", 0)), str(r.get("test_refused", 0)),
                      _eps(r.get("test_epsilon", 0.0)), f"{r['delta']:g}", r["accountant"])
    console = Console()
    console.print(table)
    for budget in ("train", "test"):
        f = figures[budget]
        console.print(
            f"lifetime ε, {_NAMES[budget]}: [bold]{_eps(f['lifetime_epsilon'])}[/bold] "
            f"(δ={f['delta']}, all runs composed); limit: "
            f"{f['limit'] if f['limit'] is not None else 'none'}"
            + (f"; remaining: {f['remaining']:.3f}" if f["remaining"] is not None else ""))
    console.print(f"per-patient lifetime ε: [bold]{_eps(figures['per_patient_epsilon'])}"
                  "[/bold] (training and test rows are disjoint patients: the larger of the "
                  "two, at the larger of their δs)")


def budget(
    site_dir: Annotated[Path, typer.Argument(help="a site's state folder (its node-config "
                                                  "site-dir, or <state-dir>/<site>)")],
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of a table")] = False,
) -> None:
    """Print a site's lifetime privacy ledger: training and test ε per run and over all
    runs, the limits and what remains."""
    from medfl.errors import MedflError
    from medfl.privacy.ledger import Ledger

    try:
        ledger = Ledger.read(site_dir)
    except MedflError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    figures = budget_figures(ledger)
    runs = ledger.runs()
    if as_json:
        train = figures["train"]
        typer.echo(json.dumps(_clean({
            "site": ledger.site, "lifetime_epsilon": train["lifetime_epsilon"],
            "delta": train["delta"], "limit": train["limit"], "remaining": train["remaining"],
            "test": figures["test"], "per_patient_epsilon": figures["per_patient_epsilon"],
            "runs": runs,
        }), indent=2))
        return
    _print_table(ledger.site, runs, figures)
