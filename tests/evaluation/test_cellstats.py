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
from medfl.evaluation.subgroups import ALL, Cell, _age_band, _sex
from medfl.privacy.egress import check_reply

K = 10
CELLS = [Cell(ALL, ALL, lambda f: np.ones(len(f), dtype=bool)),
         *_sex(male=("M",), female=("F",)), *_age_band(65)]


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
                       k=K, n_numeric=0, n_cells=len(CELLS), n_explain=n_explain)


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


@pytest.mark.parametrize("tamper, message", [
    (lambda m: m["g-n"].__setitem__(0, 3.0), "below k"),
    (lambda m: m["cell-n"].append(20.0), "entries"),
    (lambda m: m["g-mean"].pop(), "differ in length"),
    (lambda m: m["cell-n"].__setitem__(0, m["cell-n"][0] + 10), "add up"),
    (lambda m: m.update({"explain-n": -1.0}), "explain"),
    (lambda m: m.update({"patient-scores": [0.3]}), "not declared"),
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
    hd = np.r_[np.linspace(1, 5, 25), [np.nan] * 5]
    sex = ["M"] * 25 + ["F"] * 5
    out = segmentation_report(dice, iou, hd, _frame(sex, [40.0] * 15 + [70.0] * 15), CELLS,
                              k=K)
    assert out[0].n == 30 and out[0].dice_sum == pytest.approx(dice.sum())
    assert out[0].dice_sqsum == pytest.approx((dice ** 2).sum())
    assert out[0].hd_n == 25 and out[0].hd_sum == pytest.approx(hd[:25].sum())
    assert out[1].suppressed and out[2].suppressed  # 5 women: under k
    young, old = out[3], out[4]
    assert young.n == 15 and old.n == 15
    # old: 10 finite HD95 values (>= k); young: 15 -> both shown
    assert young.hd_n == 15 and old.hd_n == 10
