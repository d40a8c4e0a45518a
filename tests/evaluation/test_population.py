"""Server-side metrics from shared groups: against sklearn on the real scores."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import (
    accuracy_score,
    brier_score_loss,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from medfl.evaluation import population as pop
from medfl.evaluation.cellstats import CellStats, Group, class_groups

K = 10


def _site(rng: np.random.Generator, n: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    y = (rng.random(n) < 0.45).astype(int)
    logits = rng.normal(0, 1.2, n) + shift * (2 * y - 1)
    return y, 1 / (1 + np.exp(-logits))


def _groups(y: np.ndarray, p: np.ndarray, *, cut: float = 0.0) -> list[Group]:
    logit = np.log(p) - np.log1p(-p)
    return (class_groups(logit[y == 0], cls=0, cut=cut, k=K)
            + class_groups(logit[y == 1], cls=1, cut=cut, k=K))


def test_score_table_matches_sklearn_row_by_row():
    rng = np.random.default_rng(3)
    y, p = _site(rng, 200, 1.0)
    t = pop.score_table(y, np.stack([p, p ** 2]), threshold=0.5)
    for row, q in enumerate([p, p ** 2]):
        pred = q >= 0.5
        assert t["auroc"][row] == pytest.approx(roc_auc_score(y, q))
        assert t["accuracy"][row] == pytest.approx(accuracy_score(y, pred))
        assert t["sensitivity"][row] == pytest.approx(recall_score(y, pred))
        assert t["specificity"][row] == pytest.approx(recall_score(1 - y, ~pred))
        assert t["ppv"][row] == pytest.approx(precision_score(y, pred))
        assert t["npv"][row] == pytest.approx(precision_score(1 - y, ~pred))
        assert t["f1"][row] == pytest.approx(f1_score(y, pred))
        assert t["brier"][row] == pytest.approx(brier_score_loss(y, q))


def test_ece_by_hand():
    # bins of width 0.1: {0.05, 0.05} -> |0.1 - 1| ; {0.95, 0.95} -> |1.9 - 1| ; n = 4
    y = np.array([0, 1, 1, 0])
    p = np.array([0.05, 0.05, 0.95, 0.95])
    t = pop.score_table(y, p[None], threshold=0.5)
    assert t["ece"][0] == pytest.approx((abs(0.1 - 1) + abs(1.9 - 1)) / 4)
    assert t["calibration"][0] == pytest.approx(p.mean() - y.mean())


def test_pseudo_patients_keep_each_groups_size_mean_and_variance():
    g = Group(cls=1, n=12, mean=0.7, var=0.25, side=-1)
    ps = pop.expand([(0, g)], cut=0.0)
    assert ps.n == 12 and ps.logits.mean() == pytest.approx(0.7)
    assert ps.logits.var() == pytest.approx(0.25)
    # a group above the threshold whose normal quantiles would cross it: the mean is kept,
    # the spread shrunk just enough (never clamped, which would shift the mean)
    above = pop.expand([(0, Group(1, 10, 0.3, 1.0, 1))], cut=0.0)
    assert (above.logits > 0).all() and above.logits.mean() == pytest.approx(0.3)
    assert above.logits.min() == pytest.approx(0.0, abs=1e-6)
    below = pop.expand([(0, Group(0, 12, -0.5, 4.0, 0))], cut=0.0)
    assert (below.logits < 0).all() and below.logits.mean() == pytest.approx(-0.5)


def test_pure_groups_give_exact_confusion_metrics_and_a_close_auroc():
    rng = np.random.default_rng(7)
    ys, ps, groups = [], [], []
    for s, (n, shift) in enumerate([(200, 0.8), (160, 0.6), (140, 0.9)]):
        y, p = _site(rng, n, shift)
        ys.append(y), ps.append(p)
        groups += [(s, g) for g in _groups(y, p)]
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert all(g.side != -1 for _, g in groups), "every side holds >= k here"
    a = pop.analyse(pop.expand(groups, cut=0.0), threshold=0.5,
                    rng=np.random.default_rng(0))
    pred = p >= 0.5
    assert a.point["sensitivity"] == pytest.approx(recall_score(y, pred))
    assert a.point["specificity"] == pytest.approx(recall_score(1 - y, ~pred))
    assert a.point["ppv"] == pytest.approx(precision_score(y, pred))
    assert a.point["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert not any(a.estimated[m] for m in ("sensitivity", "specificity", "ppv", "accuracy"))
    assert a.estimated["auroc"] and a.estimated["ece"]  # pooled from pseudo-patients
    assert a.point["auroc"] == pytest.approx(roc_auc_score(y, p), abs=0.01)
    assert a.point["brier"] == pytest.approx(brier_score_loss(y, p), abs=0.01)


def test_bootstrap_ci_is_close_to_a_patient_level_bootstrap():
    rng = np.random.default_rng(11)
    y, p = _site(rng, 300, 0.9)
    a = pop.analyse(pop.expand([(0, g) for g in _groups(y, p)], cut=0.0), threshold=0.5,
                    rng=np.random.default_rng(1), exact={"auroc": roc_auc_score(y, p)})
    lo, hi = pop.classification_metrics(a)["auroc"]["ci"]
    # reference: the usual bootstrap on the real scores, stratified by class
    idx0, idx1 = np.flatnonzero(y == 0), np.flatnonzero(y == 1)
    reps = []
    for _ in range(1000):
        i = np.r_[rng.choice(idx0, len(idx0)), rng.choice(idx1, len(idx1))]
        reps.append(roc_auc_score(y[i], p[i]))
    ref_lo, ref_hi = np.percentile(reps, [2.5, 97.5])
    assert lo < roc_auc_score(y, p) < hi
    assert (hi - lo) == pytest.approx(ref_hi - ref_lo, rel=0.25)
    assert lo == pytest.approx(ref_lo, abs=0.02) and hi == pytest.approx(ref_hi, abs=0.02)


def test_a_real_gap_is_flagged_and_no_gap_is_not():
    rng = np.random.default_rng(5)
    good, bad, same = _site(rng, 300, 1.5), _site(rng, 300, 0.1), _site(rng, 300, 1.5)

    def analysis(site):
        return pop.analyse(pop.expand([(0, g) for g in _groups(*site)], cut=0.0),
                           threshold=0.5, rng=np.random.default_rng(2))

    ref = analysis(good)
    assert pop.gap(ref, analysis(bad), "auroc")["flagged"]
    assert pop.gap(ref, analysis(bad), "auroc")["value"] < 0
    assert not pop.gap(ref, analysis(same), "auroc")["flagged"]


def test_segmentation_means_and_t_intervals_from_sums():
    a = np.linspace(0.6, 0.9, 20)
    b = np.linspace(0.4, 0.8, 15)
    cells = [CellStats(n=len(v), dice_sum=v.sum(), dice_sqsum=(v ** 2).sum(),
                       iou_sum=(v / 2).sum(), iou_sqsum=((v / 2) ** 2).sum())
             for v in (a, b)]
    m = pop.segmentation_metrics(cells)
    both = np.r_[a, b]
    ref = sps.t.interval(0.95, len(both) - 1, loc=both.mean(), scale=sps.sem(both))
    assert m["dice"]["value"] == pytest.approx(both.mean())
    assert m["dice"]["ci"] == pytest.approx(list(ref))
    assert m["hd95"]["suppressed"] and m["hd95"]["value"] is None
    g = pop.dice_gap([cells[0]], [cells[1]])
    welch = sps.ttest_ind(b, a, equal_var=False).confidence_interval(0.95)  # the reference
    assert g["value"] == pytest.approx(b.mean() - a.mean())
    assert g["ci"] == pytest.approx([welch.low, welch.high])
    assert g["flagged"] is True
