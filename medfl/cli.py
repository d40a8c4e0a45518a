"""The ``medfl`` command line (typer + rich).

This module assembles the app: the run commands (``medfl.commands.runs``), the serving
commands (``medfl.commands.serving``), the app-approval and launcher commands
(``medfl.commands.apps``), the privacy officer's ``budget`` (``medfl.commands.budget``)
and ``audit`` (here), and the deployment commands (``medfl.deployment.cli``). No command
module imports this one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

import medfl
from medfl.commands import apps, runs, serving
from medfl.commands.budget import budget
from medfl.commands.display import format_value as _fmt
from medfl.deployment import cli as deployment

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help=f"MedFL: federated learning for hospitals. {medfl.DISCLAIMER}")


@app.callback()
def _root() -> None:
    """MedFL command line."""


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
    from medfl.config import parse_recorded_config
    from medfl.data.scaling import Standardizer
    from medfl.errors import MedflError
    from medfl.serving import load_bundle

    try:
        config = json.loads((run_dir / "config.json").read_text())
        cfg = parse_recorded_config(config)
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


def main() -> None:
    """Run the ``medfl`` command line (the console script's entry point)."""
    app()


# In the order ``medfl --help`` lists them.
for _command in (runs.report, runs.show, budget, audit, serving.serve, serving.predict,
                 serving.keygen, serving.sign):
    app.command()(_command)
app.add_typer(deployment.certs_app, name="certs")
app.command("local-federation")(deployment.local_federation)
app.add_typer(apps.app_app, name="app")
app.add_typer(apps.site_app, name="site")
app.command("superlink", context_settings=apps.PASS_THROUGH)(apps.superlink)


if __name__ == "__main__":
    main()
