"""The report's Methods section: how each kind of figure was computed, in words."""

from __future__ import annotations

from medfl.config import RunConfig
from medfl.evaluation import population as pop


def report_methods(cfg: RunConfig, kind: str) -> dict[str, str]:
    """Statistics, metrics, CIs, suppression and fairness methods for a ``kind`` of
    report ("classification" or "segmentation")."""
    k = cfg.privacy.k_threshold
    stats = ("Each site evaluated the final global model on its own test set and shared, "
             "per cell (the whole test set and each declared subgroup), only aggregates over "
             f"at least k={k} patients: for each class, its sorted scores (logit scale) cut "
             "into groups of at least k with their size, mean and variance, cut at the "
             "operating threshold when both sides hold k or more; the summed log-loss and "
             "Brier score; the site's exact AUROC.")
    if kind == "segmentation":
        stats = (f"Each site shared, per cell of at least k={k} images, the sums and sums of "
                 "squares of per-image Dice, IoU (MONAI, lesion class) and 95th-percentile "
                 "Hausdorff distance (pixels, over images where both masks are non-empty).")
    return {
        "statistics": stats,
        "metrics": (
            "Per-image Dice, IoU and HD95 averaged over images, pooled from the sites' sums."
            if kind == "segmentation" else
            "The server expands each shared group into pseudo-patients with the group's exact "
            "size, mean and variance, kept on the group's side of the threshold, and computes "
            "the metrics on them as on real patients. Confusion-based figures are exact when "
            "every group lies on one side of the threshold; otherwise they are marked "
            "estimated. A single site's AUROC and Brier score are its exact values."),
        "ci": ("95% CIs: t-intervals from the sums of squares; gaps: Welch t-intervals "
               "(Welch-Satterthwaite degrees of freedom). Images are treated as independent "
               "(clustering by site is ignored). HD95 averages only the images where both "
               "masks are non-empty (count given): a missed lesion drops out of it."
               if kind == "segmentation" else
               f"95% CIs: percentile bootstrap with {pop.B} replicates over pseudo-patients "
               "resampled within each site and class, clipped to the metric's range. The "
               "class sizes stay fixed, so intervals of prevalence-dependent figures (PPV, "
               "NPV, accuracy, F1, Brier score, ECE) leave out that source of variation and "
               "are somewhat narrow; an estimated split is resampled as if it were data."),
        "suppression": (f"Cells under k={k} patients are suppressed at the site, as is a "
                        "class's detail under k; an attribute's levels are shown only if "
                        "every level passes (complementary suppression). Suppressed cells "
                        "are shown as suppressed, never as 0."),
        "fairness": ("Gaps are a level's figure minus the reference level's (the first "
                     "listed); flagged when the 95% CI excludes 0, unadjusted for multiple "
                     "comparisons: with many gaps tested, about 1 in 20 true zero gaps is "
                     "flagged by chance. Calibration gap: "
                     "difference of calibration-in-the-large (mean predicted risk minus "
                     "observed rate)." if kind != "segmentation" else
                     "Dice gap: a level's mean Dice minus the reference level's; flagged "
                     "when the 95% CI excludes 0 (unadjusted for multiple comparisons)."),
    }
