"""What a hospital computes for the run's report, on its own data, after training.

Shared with the server (the egress contract allows only these): per-cell evaluation
statistics suppressed at ``k`` (:mod:`medfl.evaluation.cellstats`) and one explanation
vector over at least ``k`` test cases: mean |SHAP| per feature (tabular) or the mean share
of Grad-CAM saliency in each cell of an 8 x 8 grid (image classification).

Kept at the site: a site-local report (``<site state dir>/reports/<run>/report.html``)
with the site's exact, unsuppressed metrics and Grad-CAM overlays of a few of its own test
images. Images are PHI, so this file never leaves the hospital.
"""

from __future__ import annotations

import base64
import html
import logging
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
from medfl.evaluation.cellstats import (
    ReportStats,
    classification_report,
    per_image_segmentation,
    segmentation_report,
)
from medfl.evaluation.population import score_table
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


def report(cfg: RunConfig, data: SiteData, *, weights: dict[str, torch.Tensor],
           scaler: Standardizer, local_dir: Path | None) -> ReportStats:
    """This site's report statistics for the final global model (already suppressed).

    ``local_dir``: where the site-local report goes (``None``: not written).
    """
    k, threshold = cfg.privacy.k_threshold, cfg.evaluation.threshold
    device = resolve_device(cfg.device)
    model = tasks.task_for(cfg).build_model()
    model.load_state_dict(weights, strict=True)
    model = model.to(device).eval()
    x_test = scaler.transform(data.x_test)
    probs = predict_proba(model, x_test, device=device)
    if not np.all(np.isfinite(probs)):
        raise DataError("the global model's predictions are not finite (NaN or infinity): "
                        "training diverged; lower train.lr")
    task = tasks.task_for(cfg)
    cell_list = task.cells()
    explain: list[float] = []
    explain_n: int | None = None
    overlays: list[bytes] = []
    if task.segmentation:
        dice, iou, hd = per_image_segmentation(data.y_test, probs, threshold=threshold)
        stats = segmentation_report(dice, iou, hd, data.sensitive_test, cell_list, k=k)
        local = {"Dice": float(dice.mean()), "IoU": float(iou.mean())}
    else:
        probs = probs.reshape(-1)
        stats = classification_report(data.y_test, probs, data.sensitive_test, cell_list,
                                      threshold=threshold, k=k)
        table = score_table(np.asarray(data.y_test), probs[None, :], threshold=threshold)
        local = {name: float(table[name][0]) for name in
                 ("auroc", "accuracy", "sensitivity", "specificity", "ppv", "npv", "brier")}
        explain, explain_n, overlays = _explain(cfg, model, data, x_test, probs, k=k)
    if local_dir is not None:
        _write_local(local_dir, cfg, data, local, overlays)
    return ReportStats(tuple(stats), tuple(explain), explain_n)


def _explain(cfg: RunConfig, model: torch.nn.Module, data: SiteData, x_test: np.ndarray,
             probs: np.ndarray, *, k: int) -> tuple[list[float], int | None, list[bytes]]:
    """The shared explanation vector, its count, and the site-local overlays.

    SHAP's reference is a public row, all zeros in model-input space (under federated
    scaling: the consortium-mean patient with every binary and one-hot feature 0), as in
    serving. A reference drawn from the site's training rows would put a statistic of
    those rows, outside DP-SGD, into the shared vector.
    """
    if data.n_test < k:
        return [], None, []
    model = model.cpu()
    if cfg.is_tabular:
        from medfl.explain import mean_abs_shap

        values = mean_abs_shap(model, x_test.astype(np.float32),
                               background=np.zeros((1, x_test.shape[1]), np.float32),
                               seed=cfg.seed)
        return [float(v) for v in values], data.n_test, []
    from medfl.explain import feature_layer, gradcam, overlay_png, saliency_grid

    maps = gradcam(model, x_test.astype(np.float32), target_layer=feature_layer(model))
    grid = saliency_grid(maps, grid=SALIENCY_GRID)
    # Overlays for the site's own eyes: its most confident positive predictions first.
    order = np.argsort(-probs)[:LOCAL_OVERLAYS]
    overlays = [overlay_png(x_test[i, 0], maps[i]) for i in order]
    return [float(v) for v in grid.reshape(-1)], data.n_test, overlays


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
        "<p class='warn'><strong>Stays at this hospital.</strong> This page holds exact, "
        "unsuppressed figures and images of this site's patients; it is never sent to the "
        f"server. {html.escape(medfl.DISCLAIMER)}</p>"
        f"<h2>Global model on this site's {data.n_test} test cases</h2><table>{rows}</table>"
        + (f"<h2>Grad-CAM (where the model looked)</h2>{imgs}" if imgs else "")
        + "</body></html>")
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "report.html", page)
