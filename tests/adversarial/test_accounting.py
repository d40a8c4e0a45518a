"""A hostile coordinator against a site's accounting: every attempt that reads training
rows is spent before it runs, a failing row is no oracle, concurrent runs cannot share one
entry or race past the lifetime limit, and δ is the site's.

Each test drives the real ClientApp (egress guard on) of a deployed site
(``site='cleveland'`` on the embedded heart data, its own ``site-dir``, ``max-epsilon``
and ``lifetime-epsilon``), and checks the ledger against an independent Opacus RDP
accountant stepped over every release that left.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from conftest import run_config
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from opacus.accountants import RDPAccountant

from medfl import tasks
from medfl.config import parse_run_config
from medfl.data.heart import data_dir
from medfl.privacy import replay
from medfl.privacy.ledger import Ledger

SITE = "cleveland"
N_TRAIN = 199  # Cleveland's training rows (the embedded data's fixed split)
SITE_DELTA = 1 / (10 * N_TRAIN)  # the site's δ without max-delta: 1/(10·n)
FEATURES = ("age", "trestbps", "chol", "thalach", "oldpeak", "sex", "fbs", "exang",
            "cp_2", "cp_3", "cp_4", "restecg_1", "restecg_2")
NUMERIC = (0, 1, 2, 3, 4)
CHOL = FEATURES.index("chol")


def _node(site_dir: Path, **policy: Any) -> dict[str, Any]:
    return {"site": SITE, "data-path": str(data_dir()), "site-dir": str(site_dir),
            "max-epsilon": 3.0, "lifetime-epsilon": 100.0, "allow-exact-moments": True,
            **policy}


def _raw(**overrides: Any) -> dict[str, Any]:
    base = {"privacy__accountant": "rdp", "privacy__target_delta": 1e-4,
            "model__name": "mlp", "model__hidden": 1, "privacy__audit": False,
            "evaluation__personal_epochs": 0}
    return run_config(**{**base, **overrides})


def _weights(raw: dict[str, Any]) -> dict[str, torch.Tensor]:
    model = tasks.task_for(parse_run_config(raw)).build_model()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _oracle_weights(threshold: float) -> dict[str, torch.Tensor]:
    """The issue's one-unit MLP: on raw cholesterol (the server sends mean 0, std 1),
    h = relu(1e35·(chol - threshold)) and logit = 1e10·h, which overflows to an infinite
    logit (a non-finite loss) exactly for the rows above ``threshold``."""
    w0 = torch.zeros(1, len(FEATURES))
    w0[0, CHOL] = 1e35
    return {"0.weight": w0, "0.bias": torch.tensor([-1e35 * threshold]),
            "2.weight": torch.tensor([[1e10]]), "2.bias": torch.zeros(1)}


def _train_message(weights: dict[str, torch.Tensor], *, run_key: int,
                   server_round: int = 1) -> Message:
    arrays = ArrayRecord({k: Array(np.asarray(v.numpy())) for k, v in weights.items()})
    config = ConfigRecord({
        "server-round": server_round, "run-key": run_key,
        # the server's standardiser: identity, so the model sees raw values
        "scaler-columns": list(NUMERIC), "scaler-mean": [0.0] * len(NUMERIC),
        "scaler-std": [1.0] * len(NUMERIC)})
    return Message(RecordDict({"arrays": arrays, "config": config}), dst_node_id=1,
                   message_type="train")


_IDS = iter(range(10**6))
_IDS_LOCK = threading.Lock()


def _send(raw: dict[str, Any], node: dict[str, Any], msg: Message, *,
          run_id: int = 1, state: RecordDict | None = None) -> Message:
    """Deliver ``msg`` to the real ClientApp as Flower's runtime would."""
    from client.app import app

    with _IDS_LOCK:
        msg.metadata.__dict__["_message_id"] = f"m{next(_IDS)}"
    context = Context(run_id=run_id, node_id=1, node_config=node,
                      state=state if state is not None else RecordDict(), run_config=raw)
    return app(msg, context)


def _rdp(releases: list[tuple[float, float, int]], delta: float) -> float:
    """An independent Opacus RDP accountant stepped over every release."""
    acc = RDPAccountant()
    for sigma, rate, steps in releases:
        for _ in range(steps):
            acc.step(noise_multiplier=sigma, sample_rate=rate)
    return acc.get_epsilon(delta=delta)


def _release(reply: Message, batch_size: int, epochs: int = 1) -> tuple[float, float, int]:
    """The mechanism one train reply released: its σ and q, and one round's steps
    (``epochs`` epochs of ceil(n / batch) Poisson steps)."""
    m = reply.content.metric_records["metrics"]
    return (float(m["noise-multiplier"]), float(m["sample-rate"]),
            epochs * math.ceil(int(m["num-examples"]) / batch_size))


def _ledger_eps(site_dir: Path) -> float:
    return Ledger.read(site_dir).lifetime_epsilon(delta=SITE_DELTA, accountant="rdp")


def _spent_entries(site_dir: Path) -> list[dict[str, Any]]:
    if not (site_dir / "privacy-ledger.json").exists():
        return []
    return [e for e in Ledger.read(site_dir).entries if e["status"] != "refused"]


# --- the failure oracle -------------------------------------------------------------------

def test_a_row_dependent_non_finite_loss_is_no_oracle_and_every_probe_is_spent(tmp_path):
    """Probes whose loss overflows on the rows above a cholesterol threshold (and a probe
    above every row) all get a normal noised update, and each is spent in the ledger."""
    raw, node = _raw(), _node(tmp_path / "site")
    releases, shapes = [], []
    for i, threshold in enumerate([200.0, 405.0, 1000.0, 300.0]):
        sent = _oracle_weights(threshold)
        reply = _send(raw, node, _train_message(sent, run_key=5))
        assert not reply.has_error(), reply.error.reason
        m = reply.content.metric_records["metrics"]
        shapes.append(sorted(m))
        got = reply.content.array_records["arrays"].to_torch_state_dict()
        assert all(torch.isfinite(v).all() for v in got.values())
        assert any(not torch.equal(got[k], sent[k]) for k in sent)  # noised, not echoed
        releases.append(_release(reply, 128))
        assert len(_spent_entries(tmp_path / "site")) == i + 1  # this probe is spent
        assert float(m["epsilon-lifetime"]) == pytest.approx(
            _rdp(releases, SITE_DELTA), rel=1e-6)
    assert all(s == shapes[0] for s in shapes)  # the same reply whatever the rows did
    assert _ledger_eps(tmp_path / "site") == pytest.approx(_rdp(releases, SITE_DELTA))


# --- races --------------------------------------------------------------------------------

@pytest.mark.parametrize("shared_key", [True, False], ids=["one-run-key", "distinct-keys"])
def test_concurrent_runs_compose_every_release_and_stay_within_the_limit(tmp_path,
                                                                         shared_key):
    """Eight runs at once (distinct Flower runs; one run key the server chose, or one
    each): every release that left is composed in the ledger, and the lifetime limit
    holds although every run was checked while the others were training."""
    limit = 1.5
    # rounds long enough that every run is checked while the others are still training
    raw = _raw(num_server_rounds=10, train__local_epochs=3, train__batch_size=32)
    node = _node(tmp_path / "site", **{"lifetime-epsilon": limit})
    base = _weights(raw)

    def one(i: int) -> Message:
        sent = {k: v + 1e-3 * i for k, v in base.items()}  # eight distinct requests
        key = 77 if shared_key else 200 + i
        return _send(raw, node, _train_message(sent, run_key=key), run_id=100 + i)

    with ThreadPoolExecutor(8) as pool:
        replies = list(pool.map(one, range(8)))
    ok = [r for r in replies if not r.has_error()]
    refused = [r for r in replies if r.has_error()]
    left = _rdp([_release(r, 32, epochs=3) for r in ok], SITE_DELTA)
    recorded = _ledger_eps(tmp_path / "site")
    assert recorded >= left * (1 - 1e-9)
    assert left <= limit and recorded <= limit
    assert len(_spent_entries(tmp_path / "site")) == len(ok)  # one entry per release
    assert ok and refused, "the limit should let some runs through and refuse others"
    assert all("PrivacyBudgetExceeded" in r.error.reason for r in refused)


def test_a_failure_after_reserving_is_spent_and_says_nothing_of_the_data(tmp_path,
                                                                        monkeypatch):
    """Training fails mid-round with a message that would leak a value: the reply is one
    fixed refusal, and the round stays spent."""
    import medfl.site.training as site_training
    from medfl.errors import AttemptFailed

    def fail(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("row 17 has chol=409")

    monkeypatch.setattr(site_training, "train_epochs", fail)
    raw = _raw()
    reply = _send(raw, _node(tmp_path / "site"), _train_message(_weights(raw), run_key=9))
    assert reply.has_error()
    assert reply.error.reason == f"AttemptFailed: {AttemptFailed.MESSAGE}"
    assert [e["status"] for e in _spent_entries(tmp_path / "site")] == ["reserved"]


def test_concurrent_replay_writers_do_not_collide(tmp_path):
    """Writers keeping their updates at once: no crash, and a kept update is only ever
    found with its own request's digest."""
    base = tmp_path / "dp-state" / "run-1-x.json"
    errors: list[BaseException] = []

    def writer(i: int) -> None:
        try:
            for j in range(15):
                digest = f"{i}-{j}"
                replay.keep(base, digest, {"w": torch.full((64,), float(i))},
                            {"n": i}, plan=None, history=[])
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, [type(e).__name__ for e in errors]
    for i in range(6):
        found = replay.find(base, f"{i}-14")
        assert found is None or torch.equal(found[0]["w"], torch.full((64,), float(i)))


# --- δ ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("delta", "policy"), [(0.5, {}), (1e-4, {"max-delta": 1e-5})])
def test_a_run_asking_a_larger_delta_than_the_sites_is_refused_before_reading(
        tmp_path, delta, policy):
    raw = _raw(privacy__target_delta=delta)
    node = _node(tmp_path / "site", **policy)
    reply = _send(raw, node, _train_message(_weights(raw), run_key=3))
    assert reply.has_error()
    assert "target-delta" in reply.error.reason and "site's δ" in reply.error.reason
    assert _spent_entries(tmp_path / "site") == []


def test_the_lifetime_is_composed_at_the_sites_delta_not_the_runs(tmp_path):
    """Two runs at δ=1e-4 (below the site's 1/(10·n)): the reported lifetime ε is both
    releases composed at the site's δ."""
    node = _node(tmp_path / "site")
    releases = []
    for key in (1, 2):
        raw = _raw(num_server_rounds=2)
        reply = _send(raw, node, _train_message(_weights(raw), run_key=key), run_id=key)
        assert not reply.has_error(), reply.error.reason
        releases.append(_release(reply, 128))
    m = reply.content.metric_records["metrics"]
    expected = _rdp(releases, SITE_DELTA)
    assert float(m["epsilon-lifetime"]) == pytest.approx(expected, rel=1e-6)
    assert float(m["epsilon-lifetime"]) != pytest.approx(_rdp(releases, 1e-4), rel=1e-3)


# --- the test rows' budget ----------------------------------------------------------------
# The site reserves each test-set release through its accountant before any test row is
# read (the evaluate and report handlers call ``reserve_test``); these tests play the
# server's requests against that reservation directly, as concurrent messages would.

N_TEST = 104  # Cleveland's test rows (the embedded data's fixed split)


def _test_accountant(site_dir: Path, run_key: int, **policy: Any):
    from medfl.site import DictMemory, SiteAccountant

    cfg = parse_run_config(_raw(num_server_rounds=10))
    return SiteAccountant.open(cfg, site=SITE, node_config=_node(site_dir, **policy),
                               run_key=run_key, memory=DictMemory())


def test_more_test_releases_than_planned_are_refused_and_the_spend_stays_planned(tmp_path):
    """The server asks a monitoring evaluation at every round and the report eight times
    at once: only the planned rounds (5 and 10) and one report are released, and the
    run's test ε (Opacus, over what was released) stays within privacy.test-epsilon."""
    from medfl.errors import ConfigError
    from medfl.privacy.mechanisms import MONITOR, REPORT

    site_dir = tmp_path / "site"
    released = []
    for rnd in range(1, 11):
        try:
            released.append(_test_accountant(site_dir, 4).reserve_test(
                MONITOR, server_round=rnd, n_test=N_TEST))
        except ConfigError as exc:
            assert "monitors only at rounds [5, 10]" in str(exc)
    assert len(released) == 2

    def report(_: int) -> float | None:
        try:
            return _test_accountant(site_dir, 4).reserve_test(REPORT, server_round=10,
                                                              n_test=N_TEST)
        except ConfigError:
            return None

    with ThreadPoolExecutor(8) as pool:
        reports = [s for s in pool.map(report, range(8)) if s is not None]
    assert len(reports) == 1
    spent = _rdp([(s, 1.0, 1) for s in released + reports], 1e-4)
    assert spent <= 1.0 + 1e-9
    assert _test_accountant(site_dir, 4).test_spent() == pytest.approx(spent, rel=1e-6)
    ledger = Ledger.read(site_dir)
    assert ledger.lifetime_epsilon(delta=1 / (10 * N_TEST), accountant="rdp",
                                   budget="test") == pytest.approx(
        _rdp([(s, 1.0, 1) for s in released + reports], 1 / (10 * N_TEST)))
    assert len(ledger.of("test")) == 3


def test_exact_test_figures_are_refused_even_where_allowed_under_a_test_limit(tmp_path):
    """A run asking test-epsilon = 0 is refused by a deployed site's policy (see
    test_site_policy); a site that allows exact evaluation still refuses it while it has a
    lifetime limit on its test rows (by default its lifetime-epsilon): exact figures have
    no finite ε. Only a site that sets lifetime-test-epsilon=0 answers exactly."""
    from medfl.config import parse_run_config as parse
    from medfl.errors import PrivacyBudgetExceeded
    from medfl.privacy.mechanisms import REPORT
    from medfl.site import DictMemory, SiteAccountant

    cfg = parse(_raw(num_server_rounds=10, privacy__test_epsilon=0.0))

    def ask(site_dir: Path, **policy: Any) -> float:
        node = _node(site_dir, **{"allow-exact-evaluation": True, **policy})
        return SiteAccountant.open(cfg, site=SITE, node_config=node, run_key=1,
                                   memory=DictMemory()).reserve_test(
            REPORT, server_round=10, n_test=N_TEST)

    with pytest.raises(PrivacyBudgetExceeded, match="no finite ε"):
        ask(tmp_path / "limited")
    assert [e["status"] for e in Ledger.read(tmp_path / "limited").entries] == ["refused"]
    assert ask(tmp_path / "open", **{"lifetime-test-epsilon": 0}) == 0.0
    [row] = Ledger.read(tmp_path / "open").runs()
    assert row["test_epsilon"] == math.inf
