"""Personalised evaluation (each site fine-tunes the global model before a second
evaluation) and FedBN (normalisation layers stay at the site), at the site and through the
real apps in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_config
from flwr.app import RecordDict
from torch import nn
from typer.testing import CliRunner

from medfl import site as site_lib
from medfl import tasks
from medfl.cli import app as cli_app
from medfl.config import parse_run_config
from medfl.data.scaling import local_standardizer
from medfl.errors import ConfigError
from medfl.federation import fedbn
from medfl.privacy.egress import check_reply
from medfl.wire import ReplyBounds


def _switzerland(**overrides):
    cfg = parse_run_config(run_config(privacy__enabled=False, **overrides))
    data = tasks.task_for(cfg).load_site("switzerland")
    scaler = local_standardizer(data.x_train,
                                columns=tasks.task_for(cfg).feature_spec().numeric_idx)
    torch.manual_seed(3)
    weights = {k: v.clone() for k, v in tasks.task_for(cfg).build_model().state_dict().items()}
    return cfg, data, scaler, weights


def test_personalise_takes_the_sgd_steps_computed_by_hand():
    # One epoch, one batch holding all 30 training rows: exactly one full-batch SGD step on
    # the mean binary cross-entropy, at evaluation.personal-lr (not train.lr).
    cfg, data, scaler, weights = _switzerland(evaluation__personal_epochs=1,
                                              evaluation__personal_lr=0.2, train__lr=5.0,
                                              train__batch_size=64)
    x = scaler.transform(data.x_train).astype(np.float64)
    y = data.y_train.astype(np.float64)
    w = weights["0.weight"].numpy().astype(np.float64).reshape(-1)
    b = float(weights["0.bias"])
    p = 1 / (1 + np.exp(-(x @ w + b)))
    w_expected = w - 0.2 * x.T @ (p - y) / len(y)
    b_expected = b - 0.2 * float(np.mean(p - y))
    tuned = site_lib.personalise(cfg, data, weights=weights, scaler=scaler, seed=0)
    np.testing.assert_allclose(tuned["0.weight"].numpy().reshape(-1), w_expected, rtol=1e-5)
    np.testing.assert_allclose(float(tuned["0.bias"]), b_expected, rtol=1e-5)


def _exact(cfg, data, *, weights, scaler, seed):
    """The evaluate reply's metrics without noise (σ = 0)."""
    return site_lib.evaluation_metrics(cfg, data, weights=weights, scaler=scaler, seed=seed,
                                       sigma=0.0, rng=np.random.default_rng(0),
                                       test_epsilon=0.0)


def test_evaluation_metrics_add_the_personal_copy_and_leave_the_global_model_alone():
    cfg, data, scaler, weights = _switzerland(evaluation__personal_epochs=3)
    before = {k: v.clone() for k, v in weights.items()}
    metrics = _exact(cfg, data, weights=weights, scaler=scaler, seed=1)
    for k, v in before.items():  # the global weights were not trained in place
        assert torch.equal(weights[k], v)
    global_only = site_lib.evaluate(cfg, data, weights=weights, scaler=scaler).to_metrics()
    tuned = site_lib.personalise(cfg, data, weights=weights, scaler=scaler, seed=1)
    personal = site_lib.evaluate(cfg, data, weights=tuned, scaler=scaler).to_metrics()
    assert {k: v for k, v in metrics.items() if not k.startswith("personal-")} == global_only
    assert {k.removeprefix("personal-"): v for k, v in metrics.items()
            if k.startswith("personal-")} == personal
    # Switzerland's training rows are all "disease": fine-tuning raises the intercept
    assert float(tuned["0.bias"]) > float(weights["0.bias"])
    off, *_ = _switzerland(evaluation__personal_epochs=0)
    assert not any(k.startswith("personal-") for k in _exact(
        off, data, weights=weights, scaler=scaler, seed=1))


def test_the_egress_contract_declares_personal_statistics_with_their_noise():
    base = {"hist": [3.2, -1.0] * 8, "sums": [], "hist-std": 2.0, "sums-std": 0.0,
            "test-epsilon": 0.4}
    bounds = ReplyBounds(k=10, n_numeric=5, n_monitor_hist=16)

    def check(metrics):
        return check_reply("evaluate", records={"metrics": "metrics", "site": "config"},
                           metrics=metrics, site_record={"name": "va"}, arrays=None,
                           expected_arrays=None, bounds=bounds)

    personal = {f"personal-{k}": v for k, v in base.items()}
    assert check({**base, **personal}) == []
    exact = {**personal, "personal-hist-std": 0.0}
    assert any("'personal-hist-std' must be positive" in v for v in check({**base, **exact}))
    assert any("personal-extra" in v for v in check({**base, "personal-extra": 1.0}))


def test_personalised_evaluation_is_reported_beside_the_global_one(run_inprocess):
    # exact test-set figures (test-epsilon 0), monitored at both rounds
    path, _ = run_inprocess(num_server_rounds=2, privacy__enabled=False, privacy__audit=False,
                            evaluation__personal_epochs=1, evaluation__monitor_every=1,
                            privacy__test_epsilon=0.0, run_name="personal")
    rounds = [json.loads(x) for x in (path / "rounds.jsonl").read_text().splitlines()]
    sites = ["cleveland", "hungarian", "switzerland", "va"]
    for r in rounds:
        assert sorted(r["evaluate_personal"]) == sites and sorted(r["evaluate"]) == sites
    last = rounds[-1]["evaluate_personal"]
    summary = json.loads((path / "summary.json").read_text())
    accs = [s["personal_metrics"]["accuracy"] for s in summary["sites"]]
    assert accs == [last[s]["accuracy"] for s in sites]
    # every site releases its figures (Switzerland's too: noise, not k, protects it)
    assert None not in accs
    assert summary["personal"]["mean_site_accuracy"] == pytest.approx(sum(accs) / 4)
    # pooled accuracy over every site's test patients, by hand from per-site figures
    n = [last[s]["n"] for s in sites]
    pooled = sum(a * m for a, m in zip(accs, n, strict=True)) / sum(n)
    assert summary["personal"]["metrics"]["accuracy"] == pytest.approx(pooled)
    assert any("personalised evaluation" in x for x in summary["privacy"]["non_dp_releases"])
    report = json.loads((path / "report.json").read_text())
    assert report["personalised"]["sites"]["va"]["accuracy"] == last["va"]["accuracy"]
    card = (path / "MODEL_CARD.md").read_text()
    assert f"Mean per-site accuracy: {summary['personal']['mean_site_accuracy']:.3f}" in card
    shown = CliRunner().invoke(cli_app, ["show", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "personalised" in shown.output
    assert f"{summary['personal']['mean_site_accuracy']:.3f}" in shown.output


# --- FedBN -------------------------------------------------------------------------------


def test_norm_keys_are_exactly_the_normalisation_layers_entries():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.GroupNorm(2, 4), nn.ReLU(),
                          nn.InstanceNorm2d(4, affine=True), nn.BatchNorm2d(4), nn.Flatten(),
                          nn.LazyLinear(3), nn.LayerNorm(3))
    assert fedbn.norm_keys(model) == {
        "1.weight", "1.bias", "3.weight", "3.bias", "4.weight", "4.bias", "4.running_mean",
        "4.running_var", "4.num_batches_tracked", "7.weight", "7.bias"}


def test_a_site_keeps_its_own_normalisation_entries_and_takes_the_rest():
    cfg = parse_run_config(run_config(task="image-classification", model__name="resnet",
                                      data__image_size=32, strategy__fedbn=True))
    keys = fedbn.norm_keys(tasks.task_for(cfg).build_model())
    torch.manual_seed(0)
    received = {k: v.clone() for k, v in tasks.task_for(cfg).build_model().state_dict().items()}
    state = RecordDict()
    assert fedbn.with_local_norm(cfg, received, state) is received  # first round: aggregate
    trained = {k: v + 1.0 if v.is_floating_point() else v for k, v in received.items()}
    fedbn.keep_local_norm(cfg, trained, state)
    nxt = {k: v - 2.0 if v.is_floating_point() else v for k, v in received.items()}
    used = fedbn.with_local_norm(cfg, nxt, state)
    for k in received:
        expected = trained[k] if k in keys else nxt[k]
        assert torch.equal(used[k], expected), k
    off = parse_run_config(run_config(task="image-classification", model__name="resnet",
                                      data__image_size=32))
    assert fedbn.with_local_norm(off, nxt, state) is nxt


def test_fedbn_on_a_model_without_normalisation_layers_is_refused_before_any_round(
        run_inprocess):
    with pytest.raises(ConfigError, match="strategy.fedbn.*logreg.*valid: resnet"):
        run_inprocess(num_server_rounds=1, strategy__fedbn=True, privacy__enabled=False)


def test_fedbn_imaging_run_keeps_each_sites_norm_layers_local(run_inprocess, image_run):
    _, cls_manifest = image_run
    path, grid = run_inprocess(
        num_nodes=2, task="image-classification", model__name="resnet",
        data__manifest=str(cls_manifest), data__image_size=32, num_server_rounds=2,
        strategy__min_nodes=2, strategy__fedbn=True, train__batch_size=16,
        train__optimizer="adam", train__lr=0.002, privacy__target_epsilon=8.0,
        privacy__secure_noise=False, privacy__k_threshold=5, privacy__audit=False,
        evaluation__personal_epochs=0)
    cfg = parse_run_config(run_config(task="image-classification", model__name="resnet",
                                      data__image_size=32))
    keys = fedbn.norm_keys(tasks.task_for(cfg).build_model())
    local = {}
    for node, ctx in grid.contexts.items():
        kept = dict(ctx.state.array_records[fedbn.STATE_KEY].to_torch_state_dict())
        assert set(kept) == keys
        # what the site kept is what it trained and sent in its last round
        last = [r for r in grid.replies if r.metadata.src_node_id == node
                and r.metadata.message_type == "train"][-1]
        sent = dict(last.content["arrays"].to_torch_state_dict())
        for k in keys:
            assert torch.equal(kept[k], sent[k])
        local[node] = kept
    a, b = local.values()
    assert any(not torch.equal(a[k], b[k]) for k in keys)  # two sites, two sets of norms
    summary = json.loads((path / "summary.json").read_text())
    assert all(s["rounds_trained"] == 2 for s in summary["sites"])


def test_segmentation_sites_report_personalised_dice_within_the_contract(seg_run):
    _, manifest = seg_run
    cfg = parse_run_config(run_config(task="segmentation", model__name="unet",
                                      data__manifest=str(manifest), data__image_size=32,
                                      privacy__k_threshold=5, evaluation__personal_epochs=1,
                                      train__optimizer="adam", train__lr=0.002))
    data = site_lib.load_site(cfg, "alpha")
    torch.manual_seed(0)
    weights = tasks.task_for(cfg).build_model().state_dict()
    scaler = site_lib.site_scaler(cfg, data, None)
    metrics = _exact(cfg, data, weights=weights, scaler=scaler, seed=0)
    n = data.y_test.shape[0]
    assert metrics["personal-sums"][0] == metrics["sums"][0] == n  # exact: σ = 0
    assert metrics["personal-sums"][1] != metrics["sums"][1]  # the copy was trained
    bounds = site_lib.reply_bounds(cfg, {})
    assert (bounds.n_monitor_sums, bounds.n_monitor_hist) == (3, 0)
    noisy = site_lib.evaluation_metrics(cfg, data, weights=weights, scaler=scaler, seed=0,
                                        sigma=0.5, rng=np.random.default_rng(1),
                                        test_epsilon=0.3)
    # per image: 1, a Dice and an IoU for each of the two models: sensitivity sqrt(6)
    assert noisy["sums-std"] == noisy["personal-sums-std"] == pytest.approx(0.5 * np.sqrt(6))
    for m in (metrics, noisy):
        assert check_reply("evaluate", records={"metrics": "metrics", "site": "config"},
                           metrics=m, site_record={"name": "alpha"}, arrays=None,
                           expected_arrays=None,
                           bounds=ReplyBounds(**{**vars(bounds), "exact": m is metrics})) == []
