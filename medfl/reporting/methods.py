"""The report's Methods section: how each kind of figure was computed, in words."""

from __future__ import annotations

from medfl.config import RunConfig
from medfl.evaluation import population as pop
from medfl.evaluation.histograms import EDGE_OFFSETS, N_BINS
from medfl.evaluation.release import ReportStats
from medfl.evaluation.release_sum import REPORT_SCALE, SECURE_SUM_KEY

_EDGES = ", ".join(f"{v:+g}" for v in EDGE_OFFSETS)


def _secure_noise(cfg: RunConfig, sd: float, what: str) -> str:
    """The noise and rounding of a secure sum's release, in words."""
    sa = cfg.secure_aggregation
    step = REPORT_SCALE * 2 * sa.clipping_range / sa.quantization_range
    noise = (f"its Gaussian noise (differential privacy on each site's test set; ε per site "
             f"under Privacy) has standard deviation {sd:.3g} per {what}, the root of the "
             "sum of the sites' variances" if sd > 0 else
             "the releases were exact (test-set ε = 0, allowed by every site's policy)")
    return ("The sites' releases were summed under secure aggregation (SecAgg+), so the "
            f"server saw only their sum: {noise}. Each value travelled divided by "
            f"{REPORT_SCALE:g} and was rounded stochastically by the protocol (unbiased; "
            f"less than {step:.3g} per value and site).")


def _noise(cfg: RunConfig, stats: dict[str, ReportStats], kind: str) -> str:
    """The noise each site's release carried, in words."""
    def sd(st: ReportStats) -> float:
        return st.hist_std if kind == "classification" else max(st.sums_std, default=0.0)

    what = "count" if kind == "classification" else "sum (the largest)"
    if SECURE_SUM_KEY in stats:
        return _secure_noise(cfg, sd(stats[SECURE_SUM_KEY]), what)
    if not stats or all(sd(st) == 0 for st in stats.values()):
        return ("The releases were exact (test-set ε = 0, allowed by every site's policy): "
                "the CIs cover sampling error only.")
    per_site = "; ".join(f"{s}: {sd(st):.3g} (test-set ε {st.test_epsilon:.2f})"
                         for s, st in stats.items())
    return (f"Each site's release carried Gaussian noise (differential privacy on its test "
            f"set), of standard deviation per {what}: {per_site}.")


def _statistics(cfg: RunConfig, kind: str, stats: dict[str, ReportStats]) -> str:
    if kind == "segmentation":
        return ("Each site evaluated the final global model on its own test images and "
                "released once, over every cell (the whole test set and each declared "
                "subgroup), the sums over images of per-image Dice and IoU (MONAI, lesion "
                "class) and their squares, the number of images with a defined 95th-"
                "percentile Hausdorff distance, and that distance and its square divided by "
                f"the image diagonal ({cfg.data.image_size}·√2 px). " + _noise(cfg, stats, kind))
    return ("Each site evaluated the final global model on its own test set and released "
            "once, over every cell (the whole test set and each declared subgroup), the "
            "cell's class-wise histogram of scores on a public grid: "
            f"{N_BINS} bins on the logit scale with edges at logit(t) + ({_EDGES}), t the "
            "operating threshold, so the threshold is a bin edge. " + _noise(cfg, stats, kind))


_CLASS_METRICS = (
    "Pooled figures: every reporting site's noisy histogram summed bin by bin, so the "
    "pooled figures and the pooled n come from the same sites; a site's figures come from "
    "its own release the same way. Noisy counts enter every sum as released (negative ones "
    "included, which keeps the sums unbiased); a figure is undefined where its denominator "
    "is not positive, and proportions are clipped to [0, 1]. Sensitivity, specificity, PPV, "
    "NPV, accuracy and F1 are sums of whole bins at the threshold. AUROC is the "
    "Mann-Whitney statistic of the binned scores: a positive and a negative in the same "
    "bin count one half, so it is somewhat below the AUROC of the raw scores. Brier score, "
    "calibration-in-the-large and ECE use each bin's representative probability (the "
    "sigmoid of its logit midpoint; the open end bins: the edge ± half a bin); ECE is "
    f"computed over the grid's {N_BINS} bins, each bin's absolute error e corrected for "
    "the noise as √max(e² − its noise variance, 0), since noise inflates absolute errors.")
_CLASS_CI = (
    f"95% CIs: parametric bootstrap with {pop.B} replicates simulating both sources of "
    "error: each replicate draws every bin's count from a Poisson distribution around the "
    "pooled count (clipped at 0; sampling), adds fresh Gaussian noise of the pooled noise "
    "variance (the sum of the sites' variances; the DP noise) and recomputes the figure. "
    "The CI is the 2.5th-97.5th percentile of the replicates; a replicate whose figure is "
    "undefined counts as lying beyond either end, so a cell too noisy to say anything gets "
    "an interval spanning the whole range. Coverage was checked by simulation against "
    "known truth (bench/report_coverage.py, BENCHMARKS.md).")
_SEG_CI = (
    "95% CIs: a mean is a ratio of two noisy sums; its variance (delta method) is the "
    "sampling variance of a mean of n images (from the sum of squares) plus the noise's, "
    "(var of the sum + mean² · var of n) / n²; t-interval with n - 1 degrees of freedom, "
    "clipped to the figure's range. Gaps: the two variances added, Welch-Satterthwaite "
    "degrees of freedom. Images are treated as independent (clustering by site is "
    "ignored). HD95 averages only the images where both masks are non-empty (count given): "
    "a missed lesion drops out of it.")


def report_methods(cfg: RunConfig, kind: str,
                   stats: dict[str, ReportStats] | None = None) -> dict[str, str]:
    """Statistics, metrics, CIs, utility floor and fairness methods for a ``kind`` of
    report ("classification" or "segmentation"), given the sites' report releases."""
    k = cfg.privacy.k_threshold
    unit = "images" if kind == "segmentation" else "patients of each class"
    count = "image count" if kind == "segmentation" else "count of each class"
    return {
        "statistics": _statistics(cfg, kind, stats or {}),
        "metrics": (
            "Dice, IoU and HD95: means over images of the per-image values, each the pooled "
            "noisy sum over the pooled noisy count of images (HD95: times the image "
            "diagonal); every reporting site is in every pooled figure."
            if kind == "segmentation" else _CLASS_METRICS),
        "ci": _SEG_CI if kind == "segmentation" else _CLASS_CI,
        "suppression": (f"A cell's figures are shown only when its noisy {count} is at least "
                        f"k={k}: a utility floor (figures from fewer {unit} are mostly "
                        "noise), not a privacy measure (the releases are already "
                        "differentially private). Nothing is suppressed at the sites. Every "
                        "count shown is a rounded noisy count (≈)."),
        "fairness": ("Gaps are a level's figure minus the reference level's (the first "
                     "listed), with CIs from paired bootstrap replicates of the two "
                     "subgroups (different patients, independent noise); flagged when the "
                     "95% CI excludes 0, unadjusted for multiple comparisons: with many "
                     "gaps tested, about 1 in 20 true zero gaps is flagged by chance. "
                     "Calibration gap: difference of calibration-in-the-large (mean "
                     "predicted risk minus observed rate)." if kind != "segmentation" else
                     "Dice gap: a level's mean Dice minus the reference level's; flagged "
                     "when the 95% CI excludes 0 (unadjusted for multiple comparisons)."),
    }
