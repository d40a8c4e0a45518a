"""Noise needed for the same (ε, δ) under Opacus' RDP and PRV accountants, per site.

    .venv/bin/python -m bench.accountants

For the default plan of each heart-disease site (pyproject.toml's rounds, local epochs,
batch size, ε and δ) it prints the noise multiplier each accountant calibrates and writes a
table to BENCHMARKS.md between markers. Less noise at the same guarantee means a more
useful model; both are sound upper bounds (PRV's is its upper error bound).
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

from bench.inprocess import ROOT, default_run_config
from bench.report import write_section
from medfl.config import parse_run_config
from medfl.data.heart import HEART_SITES, load_heart_site
from medfl.privacy.dp import DPPlan


def main() -> None:
    """Each site's noise under both accountants; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    cfg = parse_run_config(default_run_config())
    t, p = cfg.train, cfg.privacy
    rows = []
    for site in HEART_SITES:
        n = load_heart_site(site).n_train
        plans = {acc: DPPlan.make(n_train=n, batch_size=t.batch_size,
                                  local_epochs=t.local_epochs, rounds=cfg.num_server_rounds,
                                  target_epsilon=p.target_epsilon, delta=p.target_delta,
                                  max_grad_norm=p.max_grad_norm, accountant=acc)
                 for acc in ("rdp", "prv")}
        rdp, prv = plans["rdp"].noise_multiplier, plans["prv"].noise_multiplier
        rows.append((site, str(n), f"{plans['rdp'].sample_rate:.3f}",
                     str(plans["rdp"].steps_per_round * cfg.num_server_rounds), f"{rdp:.3f}",
                     f"{prv:.3f}", f"{100 * (1 - prv / rdp):.1f}%"))
        print(rows[-1])
    write_section(
        args.out, "accountants", heading="Accountants: noise at the same (ε, δ)",
        intro=("Command: `.venv/bin/python -m bench.accountants` (default plan: "
               f"{cfg.num_server_rounds} rounds, {t.local_epochs} local epoch, batch "
               f"{t.batch_size}, ε = {p.target_epsilon:g}, δ = {p.target_delta:g}; "
               "deterministic)."),
        columns=["site", "n_train", "sample rate", "steps", "σ (RDP)", "σ (PRV, default)",
                 "less noise"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
