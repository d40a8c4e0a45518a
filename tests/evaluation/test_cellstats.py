"""Site-side report statistics: groups, suppression at k, and the egress contract."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score

from medfl.evaluation.cellstats import (
    ABOVE,
    BELOW,
    MIXED,
    ReportStats,
    class_groups,
    classification_report,
    segmentation_report,
)
from medfl.evaluation.subgroups import ALL, Cell, cut_cells, sex_cells
from medfl.privacy.egress import check_reply

K = 10
CELLS = [Cell(ALL, ALL, lambda f: np.ones(len(f), dtype=bool)),
         *sex_cells(male=("M",), female=("F",)), *cut_cells("age", [65])]


def _frame(sex: list[str], age: list[float]) -> pd.DataFrame:
    return pd.DataFrame({"sex": sex, "age": age})


def test_class_groups_split_at_the_threshold_when_both_sides_hold_k():
    logits = np.r_[np.linspace(-3, -0.1, 25), np.linspace(0.2, 3, 12)]
    groups = class_groups(logits, cls=1, cut=0.0, k=K)
    assert [g.side for g in groups] == [BELOW, BELOW, ABOVE]
    assert [g.n for g in groups] == [13, 12, 12]
    below = np.sort(logits)[:13]
    assert groups[0].mean == pytest.approx(below.mean())
    assert groups[0].var == pytest.approx(below.var())


def test_a_side_under_k_is_merged_into_a_straddling_group():
    logits = np.r_[np.linspace(-3, -1, 3), np.linspace(1, 3, 27)]  # 3 below the cut
    groups = class_groups(logits, cls=0, cut=0.0, k=K)
    assert all(g.n >= K for g in groups) and sum(g.n for g in groups) == 30
    assert groups[0].side == MIXED and all(g.side == ABOVE for g in groups[1:])


def test_cell_sums_match_sklearn_and_cells_under_k_are_suppressed():
    rng = np.random.default_rng(0)
    n = 60
    y = rng.integers(0, 2, n)
    p = np.clip(rng.beta(2, 2, n) * 0.6 + 0.4 * y, 0.01, 0.99)
    sex = ["M"] * 54 + ["F"] * 6   # women under k: the whole sex attribute goes
    age = list(rng.uniform(30, 90, n))
    out = classification_report(y, p, _frame(sex, age), CELLS, threshold=0.5, k=K)
    whole = out[0]
    assert whole.n == n
    assert whole.brier_sum == pytest.approx(brier_score_loss(y, p) * n)
    assert whole.loss_sum == pytest.approx(log_loss(y, p) * n)
    assert whole.auroc == pytest.approx(roc_auc_score(y, p))
    assert sum(g.n for g in whole.groups) == n
    assert all(g.n >= K for g in whole.groups)
    # complementary suppression: men (54) would reveal women (6) as 60 - 54
    assert out[1].suppressed and out[2].suppressed


def test_a_class_under_k_in_one_level_withholds_every_levels_groups():
    n = 40
    y = np.array([1] * 20 + [0] * 20)
    p = np.where(y == 1, 0.8, 0.2) + np.linspace(-0.1, 0.1, n)
    age = [70.0] * 5 + [40.0] * 15 + [70.0] * 20  # old: 5 positives (under k), 20 negatives
    out = classification_report(y, p, _frame(["M"] * 20 + ["F"] * 20, age), CELLS,
                                threshold=0.5, k=K)
    young, old = out[3], out[4]
    assert young.n == 15 and old.n == 25  # sizes are shown: both levels hold k or more
    assert young.groups is None and old.groups is None  # class detail: not for either level
    assert young.auroc is None and old.auroc is None


def _reply(stats: list, explain=()) -> dict:
    return ReportStats(tuple(stats), tuple(explain), 60 if explain else None).to_metrics()


def _check(m: dict, n_explain: int = 0) -> list[str]:
    return check_reply("query.report", records={"metrics": "metrics", "site": "config"},
                       metrics=m, site_record={"name": "a"}, arrays=None, expected_arrays=None,
                       k=K, n_numeric=0, n_cells=len(CELLS), n_explain=n_explain,
                       attribute_cells=[[1, 2], [3, 4]])


def test_report_round_trips_and_passes_the_egress_contract():
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    p = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 60), 0.01, 0.99)
    sex = ["M", "F"] * 30
    age = list(rng.uniform(30, 90, 60))
    stats = classification_report(y, p, _frame(sex, age), CELLS, threshold=0.5, k=K)
    m = _reply(stats, explain=[0.1] * 13)
    assert _check(m, n_explain=13) == []
    back = ReportStats.from_metrics(m)
    assert back.cells == tuple(stats) and back.explain_n == 60


def _drop_groups(m: dict, cell: int) -> None:
    keep = [i for i, c in enumerate(m["g-cell"]) if c != cell]
    for part in ("cell", "class", "n", "mean", "var", "side"):
        m[f"g-{part}"] = [m[f"g-{part}"][i] for i in keep]


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m["g-n"].__setitem__(0, 3.0), "below k"),
    (lambda m: m["cell-n"].append(20.0), "entries"),
    (lambda m: m["g-mean"].pop(), "differ in length"),
    (lambda m: m["cell-n"].__setitem__(0, m["cell-n"][0] + 10), "add up"),
    (lambda m: m.update({"explain-n": -1.0}), "explain"),
    (lambda m: m.update({"patient-scores": [0.3]}), "not declared"),
    (lambda m: m["g-class"].__setitem__(0, 2.0), "'g-class'"),
    (lambda m: m["g-side"].__setitem__(0, 5.0), "'g-side'"),
    # a suppressed level that still carries its loss sum
    (lambda m: (m["cell-n"].__setitem__(2, -1.0),
                [m[k_].__setitem__(2, -1.0) for k_ in ("cell-brier-sum", "cell-auroc")],
                _drop_groups(m, 2)), "'cell-loss-sum'"),
    # one level shown and the other suppressed: the whole minus the shown one reveals it
    (lambda m: (m["cell-n"].__setitem__(2, -1.0),
                [m[k_].__setitem__(2, -1.0) for k_ in ("cell-loss-sum", "cell-brier-sum",
                                                       "cell-auroc")],
                _drop_groups(m, 2)), "not all"),
    # the levels cover all but 3 rows of the whole set
    (lambda m: m["cell-n"].__setitem__(0, m["cell-n"][0] + 3), "no level"),
])
def test_egress_blocks_tampered_reports(tamper, message):
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    p = np.linspace(0.05, 0.95, 60)
    stats = classification_report(y, p, _frame(["M", "F"] * 30, [40.0, 70.0] * 30), CELLS,
                                  threshold=0.5, k=K)
    m = _reply(stats, explain=[0.1] * 4)
    tamper(m)
    assert any(message in v for v in _check(m, n_explain=4))


def test_segmentation_cells_sum_per_image_values_and_suppress_small_levels():
    dice = np.linspace(0.5, 0.9, 30)
    iou = dice / (2 - dice)
    hd = np.r_[np.linspace(1, 5, 20), [np.nan] * 10]  # 10 images with an empty mask
    sex = ["M"] * 25 + ["F"] * 5
    age = [40.0] * 15 + [70.0] * 15
    out = segmentation_report(dice, iou, hd, _frame(sex, age), CELLS, k=K)
    assert out[0].n == 30 and out[0].dice_sum == pytest.approx(dice.sum())
    assert out[0].dice_sqsum == pytest.approx((dice ** 2).sum())
    assert out[0].hd_n == 20 and out[0].hd_sum == pytest.approx(hd[:20].sum())
    assert out[1].suppressed and out[2].suppressed  # 5 women: under k
    young, old = out[3], out[4]
    assert young.n == 15 and old.n == 15
    # old has 5 images with a defined HD95 (under k): HD95 goes for both age levels
    assert young.hd_n is None and old.hd_n is None
    out = segmentation_report(dice, iou, np.linspace(1, 5, 30), _frame(sex, age), CELLS, k=K)
    assert out[3].hd_n == 15 and out[4].hd_n == 15


def test_hd95_is_withheld_when_the_images_without_it_are_under_k():
    dice = np.linspace(0.5, 0.9, 30)
    hd = np.r_[np.linspace(1, 5, 27), [np.nan] * 3]  # n - hd_n = 3 would be revealed
    out = segmentation_report(dice, dice, hd, _frame(["M"] * 30, [40.0] * 30), CELLS, k=K)
    assert out[0].n == 30 and out[0].hd_n is None and out[0].hd_sum is None


# --- attacks a curious server could try on one report ---------------------------------

def _positives_fn_split(n_women_fn: int):
    """40 positives (20 men, 20 women) and 40 negatives; the men have 10 false negatives,
    the women ``n_women_fn``."""
    rng = np.random.default_rng(0)
    men_fn, women_fn = -rng.uniform(0.5, 2, 10), -rng.uniform(0.5, 2, n_women_fn)
    pos = np.r_[men_fn, rng.uniform(0.5, 3, 10), women_fn, rng.uniform(0.5, 3, 20 - n_women_fn)]
    neg = -rng.uniform(0.5, 3, 40)
    logits = np.r_[pos, neg]
    y = np.r_[np.ones(40, int), np.zeros(40, int)]
    sex = ["M"] * 20 + ["F"] * 20 + ["M", "F"] * 20
    return y, 1 / (1 + np.exp(-logits)), _frame(sex, [40.0] * 80), women_fn


def test_threshold_sides_cannot_be_subtracted_to_reveal_one_patient():
    # Whole set: 11 false negatives, men: 10. Cut at the threshold everywhere, the whole
    # set's and the men's below-threshold groups would differ by one woman's score.
    y, p, frame, women_fn = _positives_fn_split(1)
    out = classification_report(y, p, frame, CELLS, threshold=0.5, k=K)
    below = [[g for g in c.groups if g.cls == 1 and g.side == BELOW] for c in out[:2]]
    sums = [sum(g.n * g.mean for g in gs) for gs in below]
    sizes = [sum(g.n for g in gs) for gs in below]
    assert not (sizes[0] - sizes[1] == 1 and sums[0] - sums[1] == pytest.approx(women_fn[0]))
    logit = np.log(p) - np.log1p(-p)  # not cut at the threshold: plain windows of k or more
    assert [g for g in out[0].groups if g.cls == 1] == class_groups(
        logit[y == 1], cls=1, cut=0.0, k=K, split=False)
    # with 10 women false negatives every side holds k: the cut is exact and safe
    y, p, frame, _ = _positives_fn_split(10)
    out = classification_report(y, p, frame, CELLS, threshold=0.5, k=K)
    assert sum(g.n for g in out[0].groups if g.cls == 1 and g.side == BELOW) == 20


def test_rows_in_no_level_suppress_the_attribute():
    # One patient whose sex is recorded as "X": whole minus men minus women would be them.
    rng = np.random.default_rng(2)
    y = np.r_[np.ones(30, int), np.zeros(31, int)]
    p = np.clip(0.5 + 0.3 * (2 * y - 1) + rng.normal(0, 0.2, 61), 0.01, 0.99)
    sex = ["M", "F"] * 30 + ["X"]
    out = classification_report(y, p, _frame(sex, [40.0, 70.0] * 30 + [50.0]), CELLS,
                                threshold=0.5, k=K)
    assert out[0].n == 61 and out[1].suppressed and out[2].suppressed
    assert out[3].n is not None  # the age bands cover everyone: still shown


def test_the_final_evaluation_and_the_report_share_one_cut_of_the_scores(tmp_path):
    from conftest import run_config

    from medfl import site as site_lib
    from medfl import tasks
    from medfl.config import parse_run_config
    from medfl.data.scaling import Standardizer
    from medfl.site import report as site_report

    cfg = parse_run_config(run_config(privacy__k_threshold=K))
    data = tasks.task_for(cfg).load_site("cleveland")
    torch_model = tasks.task_for(cfg).build_model()
    weights = {k_: v for k_, v in torch_model.state_dict().items()}
    scaler = Standardizer((), (), ())
    ev = site_lib.evaluate(cfg, data, weights=weights, scaler=scaler)
    rep = site_report.report(cfg, data, weights=weights, scaler=scaler, local_dir=None)
    whole = rep.cells[0]
    assert ev.groups_pos == [(g.n, g.mean, g.var) for g in whole.groups if g.cls == 1]
    assert ev.groups_neg == [(g.n, g.mean, g.var) for g in whole.groups if g.cls == 0]
