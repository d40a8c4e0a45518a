"""The site's accountant reads and writes the DP state in the format sites already hold."""

from __future__ import annotations

import hashlib
import json

from conftest import run_config
from flwr.app import RecordDict

from medfl.config import parse_run_config
from medfl.federation.records import StateMemory
from medfl.privacy.dp import DPPlan
from medfl.site import DictMemory, SiteAccountant

#: A DP state file as sites have written it since the DP state was first kept (the backup
#: copy in ``<site-dir>/dp-state/``): a run that planned, after one release and two rounds.
WRITTEN = {
    "history-sigma": [5.0, 1.1], "history-rate": [1.0, 0.05], "history-steps": [1, 40],
    "noise-multiplier": 1.1, "sample-rate": 0.05, "steps-per-round": 20, "rounds": 3,
    "max-grad-norm": 1.0, "delta": 0.001, "accountant": "prv", "target-epsilon": 3.0,
    "prior-sigma": [5.0], "prior-rate": [1.0], "prior-steps": [1],
}
PLAN = DPPlan(1.1, 0.05, 20, 3, 1.0, 1e-3, "prv", 3.0, ((5.0, 1.0, 1),))
HISTORY = [(5.0, 1.0, 1), (1.1, 0.05, 40)]


def _cfg(tmp_path):
    return parse_run_config(run_config(state_dir=str(tmp_path), num_server_rounds=3))


def _state_file(tmp_path, cfg, run_key):
    # the file name sites have always used: run key plus a fingerprint of the DP settings
    p, t = cfg.privacy, cfg.train
    inputs = ("va", cfg.seed, cfg.num_server_rounds, t.local_epochs, t.batch_size, p.enabled,
              p.target_epsilon, p.target_delta, p.max_grad_norm, p.accountant,
              cfg.preprocessing.stats_noise_multiplier, cfg.task.value, cfg.model.name)
    tag = hashlib.sha256(repr(inputs).encode()).hexdigest()[:12]
    return tmp_path / "va" / "dp-state" / f"run-{run_key}-{tag}.json"


def _open(cfg, memory, run_key=7):
    return SiteAccountant.open(cfg, site="va", node_config={}, run_key=run_key, memory=memory)


def test_an_existing_state_file_is_loaded_and_saved_back_unchanged(tmp_path):
    cfg = _cfg(tmp_path)
    path = _state_file(tmp_path, cfg, 7)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(WRITTEN))
    memory = DictMemory()
    accountant = _open(cfg, memory)
    assert accountant.path == path
    assert (accountant.plan, accountant.history) == (PLAN, HISTORY)
    path.unlink()
    accountant.save()
    assert json.loads(path.read_text()) == WRITTEN
    assert memory.get("medfl.dp") == WRITTEN


def test_node_memory_wins_over_the_file_and_nothing_means_a_fresh_run(tmp_path):
    cfg = _cfg(tmp_path)
    path = _state_file(tmp_path, cfg, 7)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(WRITTEN))
    memory = DictMemory()
    memory.put("medfl.dp", {"history-sigma": [5.0], "history-rate": [1.0],
                            "history-steps": [1]})  # released moments, not planned yet
    accountant = _open(cfg, memory)
    assert (accountant.plan, accountant.history) == (None, [(5.0, 1.0, 1)])
    fresh = _open(cfg, DictMemory(), run_key=8)
    assert (fresh.plan, fresh.history) == (None, [])


def test_the_state_round_trips_through_flowers_context_state(tmp_path):
    cfg = _cfg(tmp_path)
    state = RecordDict()
    accountant = _open(cfg, StateMemory(state))
    accountant.plan, accountant.history = PLAN, HISTORY
    accountant.save()
    assert dict(state.config_records["medfl.dp"]) == WRITTEN
    _state_file(tmp_path, cfg, 7).unlink()  # memory alone suffices
    again = _open(cfg, StateMemory(state))
    assert (again.plan, again.history) == (PLAN, HISTORY)
