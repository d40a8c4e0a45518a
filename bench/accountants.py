"""Noise needed for the same (ε, δ) under Opacus' RDP and PRV accountants, per site.

    .venv/bin/python -m bench.accountants

For the default plan of each heart-disease site (10 rounds, 1 local epoch, batch 32,
ε = 3, δ = 1e-3) it prints the noise multiplier each accountant calibrates and writes a
table to BENCHMARKS.md between markers. Less noise at the same guarantee means a more
useful model; both are sound upper bounds (PRV's is its upper error bound).
"""

from __future__ import annotations

import warnings

from bench.inprocess import ROOT
from bench.report import write_section
from medfl.data.heart import HEART_SITES, load_heart_site
from medfl.privacy.dp import DPPlan


def main() -> None:
    warnings.filterwarnings("ignore")
    rows = []
    for site in HEART_SITES:
        n = load_heart_site(site).n_train
        plans = {acc: DPPlan.make(n_train=n, batch_size=32, local_epochs=1, rounds=10,
                                  target_epsilon=3.0, delta=1e-3, max_grad_norm=1.0,
                                  accountant=acc) for acc in ("rdp", "prv")}
        rdp, prv = plans["rdp"].noise_multiplier, plans["prv"].noise_multiplier
        rows.append((site, str(n), f"{plans['rdp'].sample_rate:.3f}",
                     str(plans["rdp"].steps_per_round * 10), f"{rdp:.3f}", f"{prv:.3f}",
                     f"{100 * (1 - prv / rdp):.1f}%"))
        print(rows[-1])
    write_section(
        ROOT / "BENCHMARKS.md", "accountants", heading="Accountants: noise at the same (ε, δ)",
        intro=("Command: `.venv/bin/python -m bench.accountants` (default plan: 10 rounds, "
               "1 local epoch, batch 32, ε = 3, δ = 1e-3; deterministic)."),
        columns=["site", "n_train", "sample rate", "steps", "σ (RDP)", "σ (PRV, default)",
                 "less noise"],
        rows=rows,
    )


if __name__ == "__main__":
    main()
