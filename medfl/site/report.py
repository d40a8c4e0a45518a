"""What a hospital computes for the run's report, on its own data, after training.

Shared with the server: one Gaussian release (:mod:`medfl.evaluation.report_cells`) over
every declared cell's statistics (score histograms, or segmentation sums) and the sum over
test cases of each case's explanation vector: |SHAP| per feature clipped to L2 norm
``SHAP_CLIP`` (tabular), or the share of Grad-CAM saliency in each cell of an 8 x 8 grid
(image classification). The site's accountant reserves the release's σ before this runs.

Kept at the site: a site-local report (``<site state dir>/reports/<run>/report.html``)
with the site's exact metrics and Grad-CAM overlays of a few of its own test images.
Images are PHI, so this file never leaves the hospital.
"""

from __future__ import annotations

import base64
import html
import logging
import math
import re
from pathlib import Path

import numpy as np
import torch

import medfl
from medfl import tasks
from medfl.config import RunConfig
from medfl.data.scaling import Standardizer
from medfl.data.types import SiteData
from medfl.errors import DataError
from medfl.evaluation.release import SHAP_CLIP, ReportStats
from medfl.evaluation.report_cells import (
    cell_masks,
    cells_per_patient,
    classification_cells,
    clipped_shap_sum,
    release_report,
    segmentation_cells,
)
from medfl.evaluation.segmentation import per_image_segmentation
from medfl.io import atomic_write_text
from medfl.training import predict_proba, resolve_device

logger = logging.getLogger(__name__)

SALIENCY_GRID = 8
LOCAL_OVERLAYS = 8  # test images shown with their Grad-CAM in the site-local report


def local_dir(state_dir: Path, run_name: str, *, run_id: int) -> Path:
    """``<state dir>/reports/<run>``: the server names the run, and a name that is not one
    plain path segment is not used as a folder name at the site."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,99}", run_name):
        run_name = f"run-{run_id}"
    return state_dir / "reports" / run_name


def image_diagonal(cfg: RunConfig) -> float:
    """The public image diagonal in pixels (``data.image-size`` x sqrt(2)): HD95 is
    divided by it so that each image adds at most 1."""
    return cfg.data.image_size * math.sqrt(2.0)


def report(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
           scaler: Standardizer, local_dir: Path | None, sigma: float,
           rng: np.random.Generator, test_epsilon: float) -> ReportStats:
    """This site's report release for the final global model (see the module docstring).

    ``sigma``: the noise multiplier the accountant reserved (0: exact); ``rng``: the
    noise's generator; ``test_epsilon``: the site's test-set ε after this release;
    ``local_dir``: where the site-local report goes (``None``: not written).
    """
    threshold = cfg.evaluation.threshold
    device = resolve_device(cfg.device)
    task = tasks.task_for(cfg)
    model = task.build_model()
    model.load_state_dict(weights, strict=True)
    model = model.to(device).eval()
    x_test = scaler.transform(data.x_test)
    probs = predict_proba(model, x_test, device=device) if len(x_test) else np.zeros(0)
    if not np.all(np.isfinite(probs)):
        raise DataError("the global model's predictions are not finite (NaN or infinity): "
                        "training diverged; lower train.lr")
    cell_list = task.cells()
    masks = cell_masks(data.sensitive_test, cell_list)
    explain: np.ndarray | None = None
    overlays: list[bytes] = []
    if task.segmentation:
        dice, iou, hd = per_image_segmentation(data.y_test, probs, threshold=threshold)
        cells = segmentation_cells(dice, iou, hd, masks, diagonal=image_diagonal(cfg))
        local = {"Dice": float(dice.mean()), "IoU": float(iou.mean())} if len(dice) else {}
    else:
        probs = probs.reshape(-1)
        cells = classification_cells(data.y_test, probs, masks, threshold=threshold)
        local = _local_figures(np.asarray(data.y_test).reshape(-1), probs,
                               threshold=threshold)
        explain, overlays = _explain(cfg, model, x_test, probs)
    if local_dir is not None:
        _write_local(local_dir, cfg, data, local, overlays)
    return release_report(
        cells, explain, segmentation=task.segmentation,
        explain_unit=SHAP_CLIP if cfg.is_tabular else 1.0,
        cells_each=cells_per_patient(cell_list), sigma=sigma, rng=rng,
        test_epsilon=test_epsilon)


def _local_figures(y: np.ndarray, p: np.ndarray, *, threshold: float) -> dict[str, float]:
    """The site-local report's exact figures (scikit-learn); those undefined left out."""
    from sklearn.metrics import brier_score_loss, roc_auc_score

    pred = p >= threshold
    out: dict[str, float] = {}
    if len(set(y.tolist())) == 2:
        out["auroc"] = float(roc_auc_score(y, p))
    ratios = {"accuracy": (pred == y, None), "sensitivity": (pred, y == 1),
              "specificity": (~pred, y == 0), "ppv": (y == 1, pred), "npv": (y == 0, ~pred)}
    for name, (hit, among) in ratios.items():
        chosen = hit if among is None else hit[among]
        if len(chosen):
            out[name] = float(np.mean(chosen))
    if len(y):
        out["brier"] = float(brier_score_loss(y, p))
    return out


def _explain(cfg: RunConfig, model: torch.nn.Module, x_test: np.ndarray,
             probs: np.ndarray) -> tuple[np.ndarray, list[bytes]]:
    """The summed per-case explanation vectors, and the site-local overlays.

    SHAP's reference is a public row, all zeros in model-input space (under federated
    scaling: the consortium-mean patient with every binary and one-hot feature 0), as in
    serving. A reference drawn from the site's training rows would put a statistic of
    those rows, outside DP-SGD, into the shared vector; with it, each case's SHAP vector
    depends on that case alone, so the sum's sensitivity is one case's clipped vector.
    """
    model = model.cpu()
    n = len(x_test)
    if cfg.is_tabular:
        from medfl.explain import shap_values

        width = x_test.shape[1]
        if n == 0:
            return np.zeros(width), []
        values = shap_values(model, x_test.astype(np.float32),
                             background=np.zeros((1, width), np.float32), seed=cfg.seed)
        return clipped_shap_sum(values), []
    from medfl.explain import feature_layer, gradcam, overlay_png, saliency_grid

    if n == 0:
        return np.zeros(SALIENCY_GRID ** 2), []
    maps = gradcam(model, x_test.astype(np.float32), target_layer=feature_layer(model))
    # saliency_grid is the mean over images of each image's grid (non-negative shares
    # summing to 1): times n, the sum of the per-image grids
    grid = n * saliency_grid(maps, grid=SALIENCY_GRID)
    # Overlays for the site's own eyes: its most confident positive predictions first.
    order = np.argsort(-probs)[:LOCAL_OVERLAYS]
    overlays = [overlay_png(x_test[i, 0], maps[i]) for i in order]
    return grid.reshape(-1), overlays


def _write_local(folder: Path, cfg: RunConfig, data: SiteData, local: dict[str, float],
                 overlays: list[bytes]) -> None:
    """The site-local report: exact metrics and overlays; never sent anywhere."""
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{v:.3f}</td></tr>"
                   for k, v in local.items())
    imgs = "".join(
        f'<figure><img alt="Grad-CAM overlay" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}"><figcaption>test image, predicted risk rank '
        f"{i + 1}</figcaption></figure>" for i, png in enumerate(overlays))
    page = (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>Site-local report: {html.escape(data.name)}</title><style>"
        "body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;"
        "padding:0 1rem}table{border-collapse:collapse}td,th{padding:.3rem .8rem;"
        "border-bottom:1px solid #ddd;text-align:left}figure{display:inline-block;"
        "margin:.5rem}img{width:160px;height:160px;image-rendering:pixelated}"
        ".warn{background:#fff3cd;padding:.6rem 1rem;border-left:4px solid #c90}</style>"
        f"</head><body><h1>Site-local report: {html.escape(data.name)}</h1>"
        "<p class='warn'><strong>Stays at this hospital.</strong> This page holds exact "
        "figures and images of this site's patients; it is never sent to the "
        f"server. {html.escape(medfl.DISCLAIMER)}</p>"
        f"<h2>Global model on this site's {data.n_test} test cases</h2><table>{rows}</table>"
        + (f"<h2>Grad-CAM (where the model looked)</h2>{imgs}" if imgs else "")
        + "</body></html>")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.html", page)
