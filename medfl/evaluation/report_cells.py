"""The report release at a site: each cell's exact statistics, the explanation sum, and
the one Gaussian release over all of them (:class:`medfl.evaluation.release.ReportStats`).

Nothing is suppressed: every component is a sum over patients, bounded per patient, and
the whole vector leaves through one Gaussian mechanism
(:func:`medfl.privacy.mechanisms.gaussian_release`) whose σ the site's accountant
reserved before any test row was read.

Sensitivity (add or remove one test patient; components divided by their units)
------------------------------------------------------------------------------------
Cells are cell 0 (the whole test set) and one cell per level of each declared attribute;
an attribute's levels are disjoint, so a patient lies in at most ``c = 1 + number of
attributes`` cells.

- classification: in each of its cells the patient adds 1 to exactly one histogram bin
  (unit 1): squared L2 norm ``c``;
- segmentation: in each of its cells the patient's image adds to the ``SEG_SUMS`` 1 (the
  image count), its Dice and IoU and their squares (each in [0, 1]), 1 or 0 (a defined
  HD95), and ``h`` and ``h^2`` with ``h`` = HD95 / D clipped to [0, 1] (D: the public
  image diagonal, ``data.image-size`` x sqrt(2) pixels): eight components each at most 1
  (unit 1): squared L2 norm at most ``8 c``;
- the explanation (classification only), added once: |SHAP| per feature clipped to L2
  norm ``SHAP_CLIP`` (unit ``SHAP_CLIP``), or a Grad-CAM grid of non-negative shares
  summing to 1 (unit 1, so L2 norm at most 1): squared L2 norm at most 1.

So the sensitivity is ``sqrt(c * (1 | 8) + (1 if explained else 0))``, and component
``j`` gets noise of standard deviation ``σ * sensitivity * unit_j``.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medfl.evaluation.histograms import histogram
from medfl.evaluation.release import SEG_SUMS, SHAP_CLIP, CellRelease, ReportStats
from medfl.evaluation.subgroups import Cell, attributes
from medfl.privacy.mechanisms import gaussian_release


def cells_per_patient(cell_list: list[Cell]) -> int:
    """The most cells one patient lies in: the whole test set and one level per
    attribute."""
    return 1 + len(attributes(cell_list))


def report_sensitivity(*, cells: int, segmentation: bool, explained: bool) -> float:
    """The L2 sensitivity of the report release (see the module docstring)."""
    per_cell = len(SEG_SUMS) if segmentation else 1
    return math.sqrt(cells * per_cell + (1 if explained else 0))


def cell_masks(sensitive: pd.DataFrame, cell_list: list[Cell]) -> list[np.ndarray]:
    """Each cell's boolean row mask over the test set."""
    return [np.asarray(c.select(sensitive), dtype=bool) for c in cell_list]


def classification_cells(y: np.ndarray, p: np.ndarray, masks: list[np.ndarray], *,
                         threshold: float) -> np.ndarray:
    """(n_cells, 2, B): each cell's exact class-wise score histogram of labels ``y`` and
    probabilities ``p`` (both (n,))."""
    y, p = np.asarray(y).reshape(-1), np.asarray(p).reshape(-1)
    return np.stack([histogram(y[m], p[m], threshold=threshold) for m in masks])


def image_sums(dice: np.ndarray, iou: np.ndarray, hd: np.ndarray, *,
               diagonal: float) -> np.ndarray:
    """The ``SEG_SUMS`` of a set of images: per-image Dice, IoU (in [0, 1]) and HD95 in
    pixels (NaN: undefined), HD95 divided by ``diagonal`` and clipped to [0, 1]."""
    defined = np.isfinite(hd)
    h = np.clip(hd[defined] / diagonal, 0.0, 1.0)
    return np.array([float(len(dice)), dice.sum(), np.square(dice).sum(), iou.sum(),
                     np.square(iou).sum(), float(defined.sum()), h.sum(),
                     np.square(h).sum()], dtype=np.float64)


def segmentation_cells(dice: np.ndarray, iou: np.ndarray, hd: np.ndarray,
                       masks: list[np.ndarray], *, diagonal: float) -> np.ndarray:
    """(n_cells, len(SEG_SUMS)): each cell's exact :func:`image_sums`."""
    return np.stack([image_sums(dice[m], iou[m], hd[m], diagonal=diagonal) for m in masks])


def clipped_shap_sum(values: np.ndarray) -> np.ndarray:
    """The sum over cases of |SHAP| (rows of ``values``, (n, f)), each row scaled down to
    L2 norm at most ``SHAP_CLIP``; (f,)."""
    a = np.abs(np.asarray(values, dtype=np.float64))
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    scale = np.minimum(1.0, SHAP_CLIP / np.maximum(norms, 1e-300))
    summed: np.ndarray = (a * scale).sum(axis=0)
    return summed


def release_report(cells: np.ndarray, explain: np.ndarray | None, *, segmentation: bool,
                   explain_unit: float, cells_each: int, sigma: float,
                   rng: np.random.Generator, test_epsilon: float) -> ReportStats:
    """One Gaussian release over every cell's statistics and the explanation sum.

    ``cells``: (n_cells, 2, B) histograms or (n_cells, len(SEG_SUMS)) sums; ``explain``:
    the summed per-case explanation vectors (``None``: none), each case's vector bounded
    by ``explain_unit`` in L2 norm; ``cells_each``: :func:`cells_per_patient`; ``sigma``:
    the reserved noise multiplier (0: exact); ``test_epsilon``: the site's test-set ε
    after this release.
    """
    flat = np.asarray(cells, dtype=np.float64).reshape(-1)
    extra = np.zeros(0) if explain is None else np.asarray(explain, dtype=np.float64)
    units = np.r_[np.ones(flat.size), np.full(extra.size, float(explain_unit))]
    sensitivity = report_sensitivity(cells=cells_each, segmentation=segmentation,
                                     explained=explain is not None)
    out = gaussian_release(np.r_[flat, extra], units, sensitivity=sensitivity,
                           sigma=sigma, rng=rng)
    noisy = out.values[:flat.size].reshape(np.shape(cells))
    base = float(sigma * sensitivity)  # the std of every unit-1 component
    released = tuple(CellRelease(sums=c) if segmentation else CellRelease(hist=c)
                     for c in noisy)
    return ReportStats(
        released,
        hist_std=0.0 if segmentation else base,
        sums_std=(base,) * len(SEG_SUMS) if segmentation else (),
        explain=tuple(float(v) for v in out.values[flat.size:]),
        explain_std=float(out.std[flat.size]) if extra.size else 0.0,
        test_epsilon=float(test_epsilon))
