"""The report release at a site: exact cell statistics, the explanation sum, and the one
Gaussian release over them (its noise, and the sensitivity it is calibrated to)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import run_config
from scipy.stats import chi2

from medfl.evaluation.histograms import N_BINS
from medfl.evaluation.release import SEG_SUMS, SHAP_CLIP
from medfl.evaluation.report_cells import (
    cell_masks,
    cells_per_patient,
    classification_cells,
    clipped_shap_sum,
    image_sums,
    release_report,
    report_sensitivity,
    segmentation_cells,
)
from medfl.evaluation.subgroups import ALL, Cell, cut_cells, sex_cells
from medfl.site import DictMemory, ModelRequest, Site

CELLS = [Cell(ALL, ALL, lambda f: np.ones(len(f), dtype=bool)),
         *sex_cells(male=("M",), female=("F",)), *cut_cells("age", [65])]
EDGES = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0])  # threshold 0.5's grid, by hand


def _hand_histogram(y: np.ndarray, z: np.ndarray) -> np.ndarray:
    bins = np.r_[-np.inf, EDGES, np.inf]
    return np.stack([np.histogram(z[y == c], bins=bins)[0] for c in (0, 1)]).astype(float)


def _heart_site(**overrides) -> Site:
    raw = run_config(preprocessing__scaling="none", evaluation__personal_epochs=0, **overrides)
    return Site.open(raw, {"partition-id": 0, "num-partitions": 4}, run_id=1, run_key=1,
                     memory=DictMemory())


def _logreg(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"0.weight": 0.3 * torch.randn(1, 13, generator=g),
            "0.bias": 0.2 * torch.randn(1, generator=g)}


def test_report_noise_std_is_sigma_times_sensitivity_times_unit():
    from opacus.accountants.utils import get_noise_multiplier

    site = _heart_site(privacy__test_epsilon=1.0, privacy__report_share=1.0,
                       evaluation__monitor_every=0, privacy__audit=False)
    p = site.config.privacy
    # one Gaussian release = one Opacus step at sample rate 1
    sigma = get_noise_multiplier(target_epsilon=1.0, target_delta=p.target_delta,
                                 sample_rate=1.0, steps=1, accountant=p.accountant,
                                 epsilon_tolerance=0.0005)
    # heart disease: cells all, male, female, under 55, 55 and over. A patient is in 3 of
    # them (all, one sex, one age band), 1 count each, and adds one clipped SHAP vector.
    sensitivity = math.sqrt(3 * 1 + 1)
    rep = site.report(ModelRequest(weights=_logreg(0), run_name="t"))
    assert len(rep.cells) == 5 and all(c.hist.shape == (2, N_BINS) for c in rep.cells)
    assert rep.hist_std == pytest.approx(sigma * sensitivity * 1.0, rel=0.005)
    assert rep.explain_std == pytest.approx(sigma * sensitivity * SHAP_CLIP, rel=0.005)
    assert len(rep.explain) == 13 and rep.sums_std == ()
    assert rep.test_epsilon == pytest.approx(1.0, rel=1e-3)


def test_an_exact_report_is_numpys_histogram_per_cell_and_the_hand_shap_sum():
    site = _heart_site(privacy__test_epsilon=0.0)
    weights = _logreg(1)
    rep = site.report(ModelRequest(weights=weights, run_name="t"))
    data = site.data
    x, y = data.x_test.astype(np.float64), np.asarray(data.y_test).astype(int)
    w, b = weights["0.weight"].numpy().astype(np.float64)[0], float(weights["0.bias"][0])
    z = x @ w + b
    sex = data.sensitive_test["sex"].astype(float).to_numpy()
    age = data.sensitive_test["age"].astype(float).to_numpy()
    masks = [np.ones(len(y), bool), sex == 1, sex == 0, age < 55, age >= 55]
    for mask, cell in zip(masks, rep.cells, strict=True):
        np.testing.assert_array_equal(cell.hist, _hand_histogram(y[mask], z[mask]))
    # SHAP of a linear logit against the zero reference row: w_i * x_i
    shap = np.abs(w * x)
    norms = np.linalg.norm(shap, axis=1, keepdims=True)
    expected = (shap * np.minimum(1.0, SHAP_CLIP / norms)).sum(axis=0)
    np.testing.assert_allclose(rep.explain, expected, rtol=1e-5)
    # exact figures: no finite ε (the ledger records the release as infinite)
    assert rep.hist_std == 0.0 and rep.explain_std == 0.0 and rep.test_epsilon == math.inf


def test_segmentation_sums_are_monais_per_image_values_summed():
    from monai.metrics import DiceMetric, MeanIoU

    from medfl.evaluation.segmentation import per_image_segmentation

    rng = np.random.default_rng(0)
    truth = (rng.random((10, 1, 16, 16)) < 0.3).astype(np.float32)
    probs = np.clip(truth * 0.6 + rng.random(truth.shape) * 0.5, 0, 1)
    truth[0], probs[0] = 0.0, 0.0  # empty and predicted empty: Dice 1, no HD95
    pred, ref = torch.as_tensor(probs >= 0.5).float(), torch.as_tensor(truth)
    monai = {}
    for name, metric in (("dice", DiceMetric), ("iou", MeanIoU)):
        m = metric(include_background=True, reduction="sum", ignore_empty=False)
        m(y_pred=pred, y=ref)
        monai[name] = float(m.aggregate())
    dice, iou, hd = per_image_segmentation(truth, probs, threshold=0.5)
    masks = [np.ones(10, bool), np.arange(10) < 4, np.arange(10) >= 4]
    cells = segmentation_cells(dice, iou, hd, masks, diagonal=16 * math.sqrt(2))
    assert cells.shape == (3, len(SEG_SUMS))
    assert cells[0, SEG_SUMS.index("dice")] == pytest.approx(monai["dice"])
    assert cells[0, SEG_SUMS.index("iou")] == pytest.approx(monai["iou"])
    assert cells[0, 0] == 10 and cells[0, SEG_SUMS.index("hd_n")] == 9
    np.testing.assert_allclose(cells[1] + cells[2], cells[0])
    rep = release_report(cells, None, segmentation=True, explain_unit=1.0, cells_each=2,
                         sigma=0.0, rng=np.random.default_rng(0), test_epsilon=0.0)
    np.testing.assert_array_equal(np.stack([c.sums for c in rep.cells]), cells)
    assert rep.explain == () and rep.hist_std == 0.0


def test_hd95_is_divided_by_the_diagonal_and_clipped_to_one():
    d = 16 * math.sqrt(2)  # 22.63 pixels
    sums = image_sums(np.array([0.5, 1.0, 0.2]), np.array([0.4, 1.0, 0.1]),
                      np.array([3.0, np.nan, 40.0]), diagonal=d)
    by_hand = [3, 1.7, 0.25 + 1 + 0.04, 1.5, 0.16 + 1 + 0.01, 2, 3 / d + 1,
               (3 / d) ** 2 + 1]
    np.testing.assert_allclose(sums, by_hand)


def test_the_sensitivity_by_hand():
    assert cells_per_patient(CELLS) == 3  # all, one sex, one age band
    assert report_sensitivity(cells=3, segmentation=False, explained=True) == 2.0
    assert report_sensitivity(cells=3, segmentation=True, explained=False) == math.sqrt(24)


def _frame(n: int, rng: np.random.Generator) -> pd.DataFrame:
    # "X": a patient in no sex level (fewer cells, never more)
    return pd.DataFrame({"sex": rng.choice(["M", "F", "X"], n),
                         "age": rng.uniform(30, 90, n)})


def test_one_patient_moves_a_classification_release_by_at_most_its_sensitivity():
    rng = np.random.default_rng(4)
    n = 40
    y, p = rng.integers(0, 2, n), rng.uniform(0.01, 0.99, n)
    shap = rng.normal(0, 3, (n, 6))  # many rows over the clip
    frame = _frame(n, rng)

    def vector(keep: np.ndarray) -> np.ndarray:
        masks = cell_masks(frame[keep].reset_index(drop=True), CELLS)
        hist = classification_cells(y[keep], p[keep], masks, threshold=0.5)
        return np.r_[hist.reshape(-1), clipped_shap_sum(shap[keep]) / SHAP_CLIP]

    full = vector(np.ones(n, bool))
    moves = [np.linalg.norm(full - vector(np.arange(n) != i)) for i in range(n)]
    bound = report_sensitivity(cells=3, segmentation=False, explained=True)
    assert max(moves) <= bound + 1e-9
    # reached by a patient in three cells whose SHAP vector was clipped
    assert max(moves) == pytest.approx(bound)


def test_one_image_moves_a_segmentation_release_by_at_most_its_sensitivity():
    rng = np.random.default_rng(5)
    n = 30
    dice, iou = rng.uniform(0, 1, n), rng.uniform(0, 1, n)
    dice[:3], iou[:3] = 1.0, 1.0
    hd = np.where(rng.random(n) < 0.2, np.nan, rng.uniform(0, 60, n))
    hd[:3] = 60.0  # over the diagonal: clipped to 1
    frame = _frame(n, rng)
    frame.loc[:2, "sex"] = "F"

    def vector(keep: np.ndarray) -> np.ndarray:
        masks = cell_masks(frame[keep].reset_index(drop=True), CELLS)
        return segmentation_cells(dice[keep], iou[keep], hd[keep], masks,
                                  diagonal=32.0).reshape(-1)

    full = vector(np.ones(n, bool))
    moves = [np.linalg.norm(full - vector(np.arange(n) != i)) for i in range(n)]
    bound = report_sensitivity(cells=3, segmentation=True, explained=False)
    assert max(moves) <= bound + 1e-9 and max(moves) == pytest.approx(bound)


def test_the_release_noise_has_the_stated_standard_deviation():
    rng = np.random.default_rng(6)
    exact = np.abs(rng.normal(10, 5, (5, 2, N_BINS)))
    explain = np.abs(rng.normal(0, 1, 13))
    noise_hist, noise_explain, rep = [], [], None
    for _ in range(100):
        rep = release_report(exact, explain, segmentation=False, explain_unit=SHAP_CLIP,
                             cells_each=3, sigma=0.8, rng=rng, test_epsilon=1.0)
        noise_hist.append(np.stack([c.hist for c in rep.cells]) - exact)
        noise_explain.append(np.array(rep.explain) - explain)
    assert rep.hist_std == pytest.approx(0.8 * 2.0) and rep.explain_std == pytest.approx(6.4)
    for noise, std in ((np.ravel(noise_hist), rep.hist_std),
                       (np.ravel(noise_explain), rep.explain_std)):
        dof = noise.size  # the noise has mean 0: every draw is a degree of freedom
        stat = float(np.sum(noise ** 2)) / std ** 2
        assert chi2.ppf(0.0005, dof) < stat < chi2.ppf(0.9995, dof)
