"""Coverage of the report's 95% CIs under test-set DP, against a known truth.

A synthetic consortium shaped like the heart-disease test sets (four sites of 104, 89, 16
and 45 patients, with their prevalences and shares of women) whose logits are binormal:
negatives ~ N(a_site, 1), positives ~ N(a_site + d_sex, 1), with a weaker separation for
women than for men, so that the sex gaps in AUROC, TPR, FPR and calibration are known and
not zero. Each replicate draws every site's test set, builds the site's report release
exactly as a site does (a histogram per cell on the public grid: the whole set, each sex,
each age band, so three cells per patient; then the real ``gaussian_release`` at the
report σ that ``plan_test_releases`` gives for test-set ε = 1), runs the server's
estimator (:mod:`medfl.evaluation.population`) and records whether each 95% CI covers
the truth. The same data released exactly (σ = 0) gives the non-private interval.

The truth is the *population* value of each figure on the public grid (the figure of the
expected pooled histogram: the mixture of the four sites at their test-set sizes), which
is stricter than the replicate's own exact value: the CI must cover it through both the
sampling and the noise. Written to BENCHMARKS.md between markers.

    .venv/bin/python -m bench.report_coverage                  # 500 replicates
    .venv/bin/python -m bench.report_coverage --replicates 50  # quicker
"""

from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.stats import norm

from bench.report import write_section
from medfl.evaluation import population as pop
from medfl.evaluation.histograms import N_BINS, figures, histogram, score_edges
from medfl.evaluation.release import CellRelease
from medfl.evaluation.report_cells import report_sensitivity
from medfl.privacy.audit import AUDIT_SIGMA
from medfl.privacy.mechanisms import gaussian_release, monitor_rounds, plan_test_releases

ROOT = Path(__file__).resolve().parents[1]
THRESHOLD = 0.5
K = 10
#: name, test-set size, prevalence, share of women, intercept of the negatives' logits
SITES = (("cleveland", 104, 0.46, 0.32, -1.0), ("hungarian", 89, 0.36, 0.28, -1.2),
         ("switzerland", 16, 0.94, 0.08, 0.0), ("va", 45, 0.75, 0.03, -0.5))
SEPARATION = {"male": 2.0, "female": 1.2}  # binormal d' of each sex
OLD = 0.5  # share of patients 55 and over (independent of everything else)
CELLS_PER_PATIENT = 3  # the whole set, its sex, its age band
#: the heart report's L2 sensitivity: 3 cells plus the explanation vector (as a site has)
SENSITIVITY = report_sensitivity(cells=CELLS_PER_PATIENT, segmentation=False, explained=True)
#: what is checked: name -> (cell or gap, the figure)
TARGETS = {"AUROC": ("whole", "auroc"), "sensitivity": ("whole", "sensitivity"),
           "specificity": ("whole", "specificity"), "ECE": ("whole", "ece"),
           "AUROC gap (F − M)": ("gap", "auroc"),
           "TPR gap": ("gap", "sensitivity"), "FPR gap": ("gap", "fpr"),
           "calibration gap": ("gap", "calibration")}


def report_sigma(epsilon: float = 1.0) -> float:
    """The report's noise multiplier at test-set ``epsilon`` (report share 0.8, a
    monitoring release every 5 of 10 rounds, the audit's non-member histogram at
    σ = AUDIT_SIGMA, δ = 1e-4, PRV accountant: the default run's plan)."""
    plan = plan_test_releases(epsilon=epsilon, delta=1e-4, accountant="prv",
                              report_share=0.8, rounds=monitor_rounds(10, 5),
                              audit_sigma=AUDIT_SIGMA)
    return plan.report_sigma


def _bin_shares(mean: float) -> np.ndarray:
    """P(logit in each grid bin) for logits ~ N(mean, 1)."""
    edges = np.r_[-np.inf, score_edges(THRESHOLD), np.inf]
    return np.diff(norm.cdf(edges - mean))


def expected_histograms() -> dict[str, np.ndarray]:
    """The expected pooled (2, B) histogram of each sex and of everyone."""
    out = {sex: np.zeros((2, N_BINS)) for sex in SEPARATION}
    for _, n, prevalence, women, a in SITES:
        for sex, d in SEPARATION.items():
            share = n * (women if sex == "female" else 1 - women)
            out[sex][0] += share * (1 - prevalence) * _bin_shares(a)
            out[sex][1] += share * prevalence * _bin_shares(a + d)
    out["whole"] = out["male"] + out["female"]
    return out


def truth() -> dict[str, float]:
    """Each target's population value on the grid."""
    figs = {c: figures(h, threshold=THRESHOLD) for c, h in expected_histograms().items()}
    return {name: float(figs[c][m]) if c == "whole"
            else float(figs["female"][m] - figs["male"][m])
            for name, (c, m) in TARGETS.items()}


def draw_site(rng: np.random.Generator, n: int, prevalence: float, women: float,
              a: float) -> np.ndarray:
    """One site's exact (5, 2, B) histograms: whole, male, female, under 55, 55+."""
    female = rng.random(n) < women
    old = rng.random(n) < OLD
    y = (rng.random(n) < prevalence).astype(int)
    d = np.where(female, SEPARATION["female"], SEPARATION["male"])
    p = 1.0 / (1.0 + np.exp(-(a + d * y + rng.standard_normal(n))))
    masks = (np.ones(n, bool), ~female, female, ~old, old)
    return np.stack([histogram(y[m], p[m], threshold=THRESHOLD) for m in masks])


def estimate(releases: list[tuple[np.ndarray, float]], *, rng: np.random.Generator,
             reps: int) -> dict[str, tuple[float, float, bool]]:
    """Each target's 95% CI from the sites' released (5, 2, B) histograms, and whether
    the report shows it (every class count of its cells at least k)."""
    def cell(i: int) -> pop.Analysis:
        rows = [pop.SiteCell(f"s{j}", CellRelease(hist=h[i]), std)
                for j, (h, std) in enumerate(releases)]
        return pop.analyse(pop.PooledHistogram.pool(rows), threshold=THRESHOLD, k=K, rng=rng,
                           reps=reps)

    whole, male, female = cell(0), cell(1), cell(2)
    out = {}
    for name, (c, m) in TARGETS.items():
        if c == "whole":
            lo, hi = pop.interval(whole.reps[m], bounds=pop.SIGNED.get(m, pop.UNIT))
            shown = not whole.suppressed
        else:
            g = pop.SIGNED.get(m, pop.UNIT)
            lo, hi = pop.interval(female.reps[m] - male.reps[m],
                                  bounds=(g[0] - g[1], g[1] - g[0]))
            shown = not (male.suppressed or female.suppressed)
        out[name] = (lo, hi, shown)
    return out


def run(replicates: int, reps: int, seed: int, *, epsilon: float = 1.0,
        progress: Callable[[int], None] | None = None) -> dict[str, dict[str, list]]:
    """Coverage records per target and mode ("dp", "exact")."""
    rng = np.random.default_rng(seed)
    sigma, sensitivity = report_sigma(epsilon), SENSITIVITY
    true = truth()
    out: dict[str, dict[str, list]] = {mode: {t: [] for t in TARGETS} for mode in ("dp", "exact")}
    for r in range(replicates):
        exact = [draw_site(rng, *site[1:]) for site in SITES]
        noisy = [gaussian_release(h, 1.0, sensitivity=sensitivity, sigma=sigma, rng=rng)
                 for h in exact]
        modes = {"dp": [(rel.values, float(rel.std.flat[0])) for rel in noisy],
                 "exact": [(h, 0.0) for h in exact]}
        for mode, releases in modes.items():
            for name, (lo, hi, shown) in estimate(releases, rng=rng, reps=reps).items():
                out[mode][name].append((lo <= true[name] <= hi, hi - lo, shown))
        if progress is not None:
            progress(r)
    return out


def _summary(records: list) -> tuple[str, str, str, str]:
    """Coverage over all replicates, coverage when shown, mean width, share shown."""
    cover = np.array([c for c, _, _ in records], dtype=float)
    width = np.array([w for _, w, _ in records])
    shown = np.array([s for _, _, s in records], dtype=bool)
    when_shown = f"{cover[shown].mean():.3f}" if shown.any() else "n/a"
    return f"{cover.mean():.3f}", when_shown, f"{width.mean():.3f}", f"{shown.mean():.0%}"


def main() -> None:
    """Measure the CIs' coverage; write the BENCHMARKS.md section."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--replicates", type=int, default=500)
    parser.add_argument("--bootstrap", type=int, default=pop.B)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epsilon", type=float, default=1.0, help="test-set ε")
    parser.add_argument("--out", type=Path, default=ROOT / "BENCHMARKS.md")
    args = parser.parse_args()
    start = time.perf_counter()
    results = run(args.replicates, args.bootstrap, args.seed, epsilon=args.epsilon)
    seconds = time.perf_counter() - start
    true = truth()
    rows: list[tuple[str, ...]] = []
    for name in TARGETS:
        dp, exact = _summary(results["dp"][name]), _summary(results["exact"][name])
        rows.append((name, f"{true[name]:+.3f}" if "gap" in name else f"{true[name]:.3f}",
                     dp[0], dp[1], dp[3], dp[2], exact[0], exact[2]))
    options = [f"--{name} {value}" for name, value, default in (
        ("replicates", args.replicates, 500), ("bootstrap", args.bootstrap, pop.B),
        ("seed", args.seed, 0), ("epsilon", args.epsilon, 1.0)) if value != default]
    sigma = report_sigma(args.epsilon)
    eps = f"{args.epsilon:g}"
    write_section(
        args.out, "report-coverage",
        heading="Report figures under test-set DP: CI coverage",
        intro=(f"Command: `.venv/bin/python -m bench.report_coverage{' ' if options else ''}"
               f"{' '.join(options)}` ({args.replicates} replicates, {args.bootstrap} "
               f"bootstrap replicates each; {platform.machine()}, 2 cores, {seconds:.0f} s). "
               "Synthetic consortium with the heart-disease test-set sizes (104/89/16/45), "
               f"binormal logits, women's separation d' = {SEPARATION['female']} against "
               f"men's {SEPARATION['male']}; each site releases 5 cells (3 per patient) at "
               f"report σ = {sigma:.2f} (test-set ε = {eps}, report share 0.8, monitoring "
               "every 5 of 10 rounds, δ = 1e-4, PRV), noise sd "
               f"{sigma * SENSITIVITY:.2f} per count per site. Truth: the "
               "population value of each figure on the public grid (the stricter target; "
               "not the replicate's own exact value). Coverage of the pooled 95% CI over all "
               "replicates, and over those where the report shows the figure (no class "
               f"count of its cells under k = {K} even at the top of its 95% noise "
               "interval: the noise-aware floor); 'exact' is the same estimator on the "
               "same data released without noise."),
        columns=["figure", "truth", f"coverage (ε = {eps})", "coverage when shown", "shown",
                 f"mean CI width (ε = {eps})", "coverage (exact)", "mean CI width (exact)"],
        rows=rows)


if __name__ == "__main__":
    main()
