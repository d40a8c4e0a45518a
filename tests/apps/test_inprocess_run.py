"""The real ServerApp over the real ClientApp, in-process (no Ray): the run directory."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
from opacus.accountants import create_accountant

from medfl.serving import load_bundle

SITES = ["cleveland", "hungarian", "switzerland", "va"]


@pytest.fixture(scope="module")
def dp_run(tmp_path_factory, request):
    # A module-scoped run shared by the assertions below (one federated run is ~5 s).
    from conftest import InProcessGrid, run_config
    from flwr.app import Context, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from client.app import app as client_app
    from server.app import main

    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
    out = tmp_path_factory.mktemp("outputs")
    # exact test-set figures (privacy.test-epsilon = 0, as a simulation may ask), so that
    # they can be checked against an independent recomputation; rounds 2 and 3 monitored
    cfg = run_config(num_server_rounds=3, output_dir=str(out), run_name="dp",
                     privacy__test_epsilon=0.0, evaluation__monitor_every=2)
    grid = InProcessGrid(client_app, cfg)
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    return out / "dp", grid


def test_run_directory_has_every_file(dp_run):
    path, _ = dp_run
    for name in ("config.json", "rounds.jsonl", "summary.json", "model/weights.safetensors",
                 "model/manifest.json"):
        assert (path / name).is_file(), name
    latest = path.parent / "latest"
    assert latest.is_symlink() and latest.resolve() == path.resolve()


def test_summary_has_the_required_keys_and_site_sizes(dp_run):
    s = json.loads((dp_run[0] / "summary.json").read_text())
    for key in ("task", "dataset", "strategy", "rounds", "sites", "global", "mean_site_accuracy"):
        assert key in s
    assert s["rounds"] == 3 and s["strategy"] == "fedavg"
    assert [x["name"] for x in s["sites"]] == SITES
    assert [(x["n_train"], x["n_test"]) for x in s["sites"]] == [
        (199, 104), (172, 89), (30, 16), (85, 45)]
    for x in s["sites"]:
        for key in ("epsilon", "delta", "noise_multiplier", "sample_rate", "steps",
                    "max_grad_norm", "accountant"):
            assert x[key] is not None, (x["name"], key)
        assert set(x["metrics"]) >= {"accuracy", "auroc"}


def test_mean_site_accuracy_is_the_unweighted_mean(dp_run):
    s = json.loads((dp_run[0] / "summary.json").read_text())
    # every site releases its figures (noised, or here exact); the server's utility floor
    # (a class under k in a site's cell: Switzerland has one patient without disease)
    # leaves a site's classification figures out, and the mean is over the others
    accs = {x["name"]: x["metrics"]["accuracy"] for x in s["sites"]}
    assert accs["switzerland"] is None and None not in [accs[x] for x in SITES[:2] + SITES[3:]]
    shown = [a for a in accs.values() if a is not None]
    assert s["mean_site_accuracy"] == pytest.approx(sum(shown) / len(shown))


def test_every_epsilon_is_finite_positive_within_target_and_recomputable(dp_run):
    s = json.loads((dp_run[0] / "summary.json").read_text())
    target = s["privacy"]["target_epsilon"]
    for x in s["sites"]:
        assert x["accountant"] == "prv"
        assert 0 < x["epsilon"] <= target
        # every accounted release of the training rows: the noised feature moments (the
        # default σ = 5, one Gaussian step at sample rate 1), DP-SGD's steps, and the
        # audit's members' histogram (σ = 10, after training)
        assert x["accountant_history"] == [
            [5.0, 1.0, 1], [x["noise_multiplier"], x["sample_rate"], x["steps"]],
            [10.0, 1.0, 1]]
        acc = create_accountant(x["accountant"])  # Opacus' own, from the reported fields
        acc.history = [tuple(h) for h in x["accountant_history"]]
        assert acc.get_epsilon(delta=x["delta"]) == pytest.approx(x["epsilon"], rel=1e-9)


def test_rounds_log_one_line_per_round_with_all_sites(dp_run):
    lines = (dp_run[0] / "rounds.jsonl").read_text().splitlines()
    assert len(lines) == 3
    rounds = [json.loads(line) for line in lines]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    # every site trains every round (an update may still be rejected by the norm check:
    # secure DP noise on Switzerland's 30 rows can pass 3x the round's median)
    for r in rounds:
        rejected = {p["site"] for p in r["train_problems"] if p["status"] == "rejected"}
        assert sorted(set(r["train"]) | rejected) == SITES
    eps = [[r["train"][site]["epsilon"] for r in rounds if site in r["train"]]
           for site in SITES]
    for series in eps:
        assert series == sorted(series)  # cumulative across rounds
    # evaluated only at the monitoring rounds: 2 (monitor-every) and 3 (the last)
    assert "evaluate" not in rounds[0] and "global" not in rounds[0]
    assert all(sorted(r["evaluate"]) == SITES for r in rounds[1:])
    assert all(r["evaluate_problems"] == [] for r in rounds[1:])
    assert all(p["status"] == "rejected" for r in rounds for p in r["train_problems"])


def _independent_scores(run_path):
    """Each site's test labels and scores recomputed outside MedFL's evaluation code:
    the bundle's weights and the manifest's standardiser, applied with numpy."""
    from medfl.data.heart import load_heart_site

    bundle = load_bundle(run_path)
    std = bundle.manifest["preprocessing"]["standardizer"]
    w = bundle.weights["0.weight"].numpy().ravel().astype(np.float64)
    b = float(bundle.weights["0.bias"].numpy()[0])
    out = {}
    for site in SITES:
        data = load_heart_site(site)
        x = data.x_test.astype(np.float64)
        x[:, std["columns"]] = (x[:, std["columns"]] - std["mean"]) / np.array(std["std"])
        out[site] = (data.y_test, 1 / (1 + np.exp(-(x @ w + b))))
    return out


def _binned_auroc(y, p):
    """The Mann-Whitney AUROC of scores binned on the public grid (threshold 0.5: logit
    edges -3 to 3), ties in a bin counting one half; by hand with numpy."""
    z = np.log(p) - np.log1p(-p)
    bins = np.r_[-np.inf, np.arange(-3.0, 4.0), np.inf]
    neg, pos = (np.histogram(z[y == c], bins=bins)[0].astype(float) for c in (0, 1))
    below = np.r_[0.0, np.cumsum(neg)[:-1]]
    return float((pos * (below + 0.5 * neg)).sum() / (neg.sum() * pos.sum()))


def test_exact_figures_match_an_independent_recomputation(dp_run):
    from sklearn.metrics import accuracy_score

    s = json.loads((dp_run[0] / "summary.json").read_text())
    scores = _independent_scores(dp_run[0])
    for site in s["sites"]:
        y, p = scores[site["name"]]
        if site["name"] == "switzerland":  # under the utility floor (one negative < k)
            continue
        # the threshold is a bin edge: accuracy from the histogram is exact
        assert site["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, p >= 0.5))
        assert site["metrics"]["auroc"] == pytest.approx(_binned_auroc(y, p))
    y_all = np.concatenate([scores[x][0] for x in SITES])
    p_all = np.concatenate([scores[x][1] for x in SITES])
    assert s["global"]["metrics"]["accuracy"] == pytest.approx(accuracy_score(y_all, p_all >= 0.5))
    assert s["global"]["n_test"] == 254


def test_the_global_auroc_is_from_every_sites_summed_histogram(dp_run):
    # Switzerland (one patient without disease) is no longer left out: its noisy (here
    # exact) histogram is summed with the others'
    s = json.loads((dp_run[0] / "summary.json").read_text())
    scores = _independent_scores(dp_run[0])
    y = np.concatenate([scores[x][0] for x in SITES])
    p = np.concatenate([scores[x][1] for x in SITES])
    assert s["global"]["auroc_sites_excluded"] == 0
    assert s["global"]["metrics"]["auroc"] == pytest.approx(_binned_auroc(y, p))


def test_bundle_verifies_and_reproduces_the_global_model(dp_run):
    path, grid = dp_run
    bundle = load_bundle(path)
    m = bundle.manifest
    assert m["weights_sha256"] == hashlib.sha256(
        (path / "model/weights.safetensors").read_bytes()).hexdigest()
    assert m["architecture"]["name"] == "logreg"
    assert [c["name"] for c in m["input_schema"]["columns"]][:3] == ["age", "sex", "cp"]
    assert m["label_names"] == ["no disease", "disease"]
    std = m["preprocessing"]["standardizer"]
    assert len(std["mean"]) == 5 and all(v > 0 for v in std["std"])
    # the bundle's weights are the arrays the server sent in the final evaluation round
    last_sent = [g for g in grid.sent if g.metadata.message_type == "evaluate"][-1]
    sent = last_sent.content["arrays"].to_torch_state_dict()
    for name, tensor in bundle.weights.items():
        np.testing.assert_array_equal(tensor.numpy(), sent[name].numpy())


def test_config_json_records_seed_versions_and_hardware(dp_run):
    c = json.loads((dp_run[0] / "config.json").read_text())
    assert c["seed"] == 42
    assert c["config"]["privacy"]["target_epsilon"] == 3.0
    assert c["environment"]["libraries"]["flwr"] and c["environment"]["libraries"]["opacus"]
    assert c["environment"]["cpu"]
    assert "gpu" in c["environment"]


def _check_declared(grid, shapes, *, rounds: int, monitored: int, exact: bool) -> None:
    k = 10
    declared = {
        # the default class weight ("auto") adds the label count to the moments' release
        "query.moments": {"count", "sums", "sumsq", "positives"},
        "query.audit": {"member-hist", "non-member-hist", "member-std", "non-member-std"},
        "train": {"num-examples", "steps", "epsilon", "delta", "noise-multiplier",
                  "sample-rate", "max-grad-norm", "prior-noise-multipliers",
                  "epsilon-lifetime", "site-weight"},
        # the global model's monitoring release, and the personalised copy's (on by default)
        "evaluate": {f"{p}{x}" for p in ("", "personal-") for x in (
            "hist", "sums", "hist-std", "sums-std", "test-epsilon")},
        "query.report": {"hist", "sums", "sums-std", "hist-std", "explain", "explain-std",
                         "test-epsilon"},
    }
    assert len(grid.replies) == 4 * (1 + rounds + monitored + 1 + 1)
    for r in grid.replies:
        assert not r.has_error()
        kind = r.metadata.message_type
        assert set(r.content.keys()) <= {"metrics", "site", "arrays"}
        m = r.content["metrics"]
        assert set(m.keys()) == declared[kind]
        assert set(r.content["site"].keys()) == {"name"}
        assert r.content["site"]["name"] in SITES
        if "arrays" in r.content:
            assert {k_: tuple(v.shape) for k_, v in r.content["arrays"].items()} == shapes
        for key in ("num-examples", "count"):  # exact counts
            if key in m:
                assert m[key] == -1 or m[key] >= k, (kind, key)
        if kind in ("evaluate", "query.report"):
            assert len(m["hist"]) == (16 if kind == "evaluate" else 5 * 16)
            stds = [m[x] for x in m if x.endswith("hist-std") or x == "explain-std"]
            assert all(v == 0 for v in stds) if exact else all(v > 0 for v in stds)


def test_only_declared_values_leave_a_site(dp_run):
    # Every reply carries arrays with the global model's names and shapes, metrics from a
    # declared set, and the site's public name; every exact count on the wire is >= k or
    # suppressed; the test-set releases are histograms of the declared sizes.
    _, grid = dp_run
    shapes = {k_: tuple(v.shape) for k_, v in load_bundle(dp_run[0]).weights.items()}
    _check_declared(grid, shapes, rounds=3, monitored=2, exact=True)


def test_a_noisy_run_releases_every_test_statistic_with_its_noise(run_inprocess):
    path, grid = run_inprocess(num_server_rounds=1, run_name="noisy")
    shapes = {k_: tuple(v.shape) for k_, v in load_bundle(path).weights.items()}
    _check_declared(grid, shapes, rounds=1, monitored=1, exact=False)
    s = json.loads((path / "summary.json").read_text())
    assert all(isinstance(x["n_test"], int) for x in s["sites"])


def test_dp_off_run_reports_infinite_epsilon(run_inprocess):
    path, _ = run_inprocess(num_server_rounds=1, privacy__enabled=False,
                            privacy__test_epsilon=0.0)  # exact figures: the accuracy check
    s = json.loads((path / "summary.json").read_text())
    assert all(x["epsilon"] == "inf" for x in s["sites"])
    assert s["privacy"]["dp_sgd"] is False
    assert "model updates (DP-SGD is off)" in s["privacy"]["non_dp_releases"]
    assert 0.5 < s["mean_site_accuracy"] <= 1.0


def test_same_seed_same_model_when_noise_is_seeded(run_inprocess):
    a, _ = run_inprocess(num_server_rounds=1, run_name="a", privacy__secure_noise=False)
    b, _ = run_inprocess(num_server_rounds=1, run_name="b", privacy__secure_noise=False)
    wa, wb = load_bundle(a).weights, load_bundle(b).weights
    for k in wa:  # equal up to float32 summation order
        np.testing.assert_allclose(wa[k].numpy(), wb[k].numpy(), rtol=1e-5, atol=1e-6)
    c, _ = run_inprocess(num_server_rounds=1, run_name="c", seed=7, privacy__secure_noise=False)
    assert not np.allclose(load_bundle(c).weights["0.weight"].numpy(), wa["0.weight"].numpy())


def test_secure_noise_is_not_reproducible_from_the_seed(run_inprocess):
    # The server knows the seed; with secure noise (the default) it cannot regenerate the
    # DP noise, so two runs with the same seed and config give different models.
    a, _ = run_inprocess(num_server_rounds=1, run_name="sa")
    b, _ = run_inprocess(num_server_rounds=1, run_name="sb")
    assert not np.allclose(load_bundle(a).weights["0.weight"].numpy(),
                           load_bundle(b).weights["0.weight"].numpy())


def test_existing_run_name_is_refused_and_left_intact(run_inprocess):
    from medfl.errors import ConfigError

    path, _ = run_inprocess(num_server_rounds=1, privacy__enabled=False, run_name="keep")
    before = (path / "summary.json").read_bytes()
    with pytest.raises(ConfigError, match="'keep' already exists"):
        run_inprocess(num_server_rounds=1, privacy__enabled=False, run_name="keep")
    assert (path / "summary.json").read_bytes() == before


def _deployment_nodes(tmp_path):
    from medfl.data.heart import data_dir

    nodes = []
    for site in SITES:
        folder = tmp_path / f"hospital-{site}"
        folder.mkdir()
        name = f"processed.{site}.data"
        (folder / name).write_bytes((data_dir() / name).read_bytes())
        # a deployed site's explicit policy, allowing the default run's non-DP releases
        nodes.append({"site": site, "data-path": str(folder),
                      "site-dir": str(tmp_path / f"state-{site}"), "max-epsilon": 3.0,
                      "lifetime-epsilon": 10.0, "allow-personal-eval": True,
                      "allow-audit": True, "allow-exact-moments": True})
    return nodes


def test_deployment_node_config_reads_each_sites_own_folder(tmp_path):
    from conftest import run_config
    from flwr.app import Context, RecordDict

    from bench.inprocess import InProcessGrid
    from client.app import app as client_app
    from server.app import main

    # a deployed site requires DP-SGD and a lifetime limit, so this run keeps DP on
    cfg = run_config(num_server_rounds=1, output_dir=str(tmp_path / "out"), run_name="dep")
    grid = InProcessGrid(client_app, cfg, node_configs=_deployment_nodes(tmp_path))
    main(grid, Context(1, 0, {}, RecordDict(), cfg))
    s = json.loads((tmp_path / "out" / "dep" / "summary.json").read_text())
    assert [x["n_train"] for x in s["sites"]] == [199, 172, 30, 85]


def test_tampered_site_file_stops_the_run_before_training(tmp_path):
    from conftest import run_config
    from flwr.app import Context, RecordDict

    from bench.inprocess import InProcessGrid
    from client.app import app as client_app
    from server.app import main

    nodes = _deployment_nodes(tmp_path)
    bad = tmp_path / "hospital-va" / "processed.va.data"
    bad.write_bytes(bad.read_bytes() + b"63,1,4,140,260,0,1,112,1,3,2,?,?,2\n")
    cfg = run_config(num_server_rounds=1, output_dir=str(tmp_path / "out"), run_name="bad")
    grid = InProcessGrid(client_app, cfg, node_configs=nodes)
    main(grid, Context(1, 0, {}, RecordDict(), cfg))  # stops with one line, no exception
    failed = json.loads((tmp_path / "out" / "bad" / "failed.json").read_text())
    assert "only 3 of 4 sites shared feature statistics" in failed["reason"]
    assert "DataError: checksum mismatch for processed.va.data" in failed["reason"]
    errors = [r.error for r in grid.replies if r.has_error()]
    assert len(errors) == 1 and errors[0].code == 1002
    assert errors[0].reason.startswith("DataError: checksum mismatch for processed.va.data")
    # neither the tampered file's digest nor the site's path reaches the server
    assert hashlib.sha256(bad.read_bytes()).hexdigest() not in errors[0].reason
    assert str(tmp_path) not in errors[0].reason
    assert not any(m.metadata.message_type == "train" for m in grid.sent)
    assert not (tmp_path / "out" / "bad" / "summary.json").exists()
