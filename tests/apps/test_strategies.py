"""Strategies by config (Flower's own, wrapped), FedProx at the site, simulated attacks and
the server's update validation, through the real apps in-process."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_config

from medfl.config import STRATEGIES, parse_run_config
from medfl.errors import ConfigError
from medfl.site import site_config
from medfl.training import train_epochs


def _rounds(path) -> list[dict]:
    return [json.loads(x) for x in (path / "rounds.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("name", STRATEGIES)
def test_every_strategy_runs_and_records_its_rounds(run_inprocess, name):
    path, _ = run_inprocess(num_server_rounds=2, strategy__name=name, privacy__enabled=False,
                            privacy__audit=False, run_name=f"s-{name}")
    summary = json.loads((path / "summary.json").read_text())
    assert summary["strategy"] == name and summary["rounds"] == 2
    assert all(s["rounds_trained"] == 2 for s in summary["sites"])
    assert summary["global"]["metrics"]["auroc"] is not None


def test_fedprox_pull_matches_the_proximal_gradient_step_by_hand():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    w0 = [p.detach().clone() for p in model.parameters()]
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,)).float()
    loader = [(x, y)]
    lr, mu = 0.5, 2.0
    # by hand: one SGD step on the BCE loss, then w <- w - lr * mu * (w - w0)
    ref = torch.nn.Linear(3, 1)
    ref.load_state_dict(model.state_dict())
    loss = torch.nn.functional.binary_cross_entropy_with_logits(ref(x).squeeze(-1), y)
    grads = torch.autograd.grad(loss, list(ref.parameters()))
    expected = []
    for p, g, a in zip(ref.parameters(), grads, w0, strict=True):
        w1 = p.detach() - lr * g
        expected.append(w1 - lr * mu * (w1 - a))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    train_epochs(model, loader, opt, epochs=1, device=torch.device("cpu"), proximal_mu=mu)
    for p, e in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.detach(), e)


@pytest.mark.parametrize("kind, reason", [("scale", "norm"), ("nan", "non-finite")])
def test_a_corrupting_site_is_rejected_and_recorded_every_round(run_inprocess, kind, reason):
    path, _ = run_inprocess(num_server_rounds=2, privacy__enabled=False, privacy__audit=False,
                            attack__sites="va", attack__kind=kind, attack__scale=50.0,
                            run_name=f"a-{kind}")
    for r in _rounds(path):
        rejected = [p for p in r["train_problems"] if p["status"] == "rejected"]
        assert [p["site"] for p in rejected] == ["va"], r["train_problems"]
        assert reason in rejected[0]["reason"]
        assert sorted(r["train"]) == ["cleveland", "hungarian", "switzerland"]
    summary = json.loads((path / "summary.json").read_text())
    assert next(s for s in summary["sites"] if s["name"] == "va")["rounds_trained"] == 0


def test_label_flip_trains_on_flipped_labels_and_is_not_caught_by_the_norm_check(
        run_inprocess):
    path, _ = run_inprocess(num_server_rounds=2, privacy__enabled=False, privacy__audit=False,
                            attack__sites="cleveland", attack__kind="label-flip",
                            run_name="a-flip")
    assert all(r["train_problems"] == [] for r in _rounds(path))
    from medfl import attack, tasks

    cfg = parse_run_config(run_config(attack__sites="cleveland", attack__kind="label-flip"))
    data = tasks.task_for(cfg).load_site("cleveland")
    assert np.array_equal(attack.poison_data(cfg, data).y_train, 1 - data.y_train)


def test_a_deployed_site_refuses_an_attack_config():
    cfg = parse_run_config(run_config(attack__sites="va", attack__kind="scale"))
    with pytest.raises(ConfigError, match="simulation option"):
        site_config(cfg, {"site": "va"})


def test_a_rejected_update_still_counts_in_the_sites_reported_privacy_spend(run_inprocess):
    # VA's updates are rejected every round, but each one left VA: the summary must show
    # the ε VA reported with its last update, not nothing (or an earlier, smaller figure).
    path, grid = run_inprocess(num_server_rounds=2, privacy__audit=False,
                               privacy__secure_noise=False, attack__sites="va",
                               attack__kind="scale", attack__scale=50.0, run_name="a-dp")
    summary = json.loads((path / "summary.json").read_text())
    va = next(s for s in summary["sites"] if s["name"] == "va")
    last = [r for r in grid.replies if r.metadata.message_type == "train"
            and r.content["site"]["name"] == "va"][-1]
    assert va["rounds_trained"] == 0
    assert va["epsilon"] == pytest.approx(last.content["metrics"]["epsilon"]) and va["epsilon"] > 0
    assert va["steps"] == last.content["metrics"]["steps"]
    rounds = _rounds(path)
    assert [p["epsilon"] for r in rounds for p in r["train_problems"]] == pytest.approx(
        [m.content["metrics"]["epsilon"] for m in grid.replies
         if m.metadata.message_type == "train" and m.content["site"]["name"] == "va"])
