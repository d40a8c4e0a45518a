"""The server's per-round checkpoint, and resuming a run from it.

After every completed round (train, aggregate, evaluate) the server writes::

    <run dir>/checkpoint/round-<NNNN>/global.npz     the global model after that round
    <run dir>/checkpoint/round-<NNNN>/strategy.npz   the strategy's optimiser state (FedAdam's
                                                     moments, FedAvgM's momentum; may be empty)
    <run dir>/checkpoint/round-<NNNN>/state.json     round number, the run's key, the
                                                     consortium standardiser, per-site records
    <run dir>/checkpoint/LATEST                      the name of the newest complete round

A round's folder is written completely before ``LATEST`` is replaced (atomic rename), so a
server killed at any moment leaves the previous checkpoint intact. Older round folders are
removed once the new one is in place.

The sites' DP accountants stay at the sites: the checkpoint holds only the run's ``run-key``
(the Flower run id that started it), which the server sends with every round so that each
site continues the same accountant history and ledger entry after a resume (see
``medfl.site.dp_state_path``).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medfl.errors import ConfigError
from medfl.io import atomic_write_bytes

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

FOLDER, LATEST = "checkpoint", "LATEST"
#: attributes of Flower's strategies that carry state from one round to the next
STRATEGY_STATE = ("m_t", "v_t", "momentum_vector")


@dataclass
class Checkpoint:
    """What a resumed run needs: the model, the strategy's state and the server's records."""

    round: int
    run_key: int
    weights: dict[str, np.ndarray]
    strategy: dict[str, Any] = field(default_factory=dict)
    scaler: dict[str, Any] | None = None
    records: dict[str, Any] = field(default_factory=dict)


def strategy_state(strategy: object) -> dict[str, Any]:
    """The optimiser state of one of Flower's strategies (dicts or lists of arrays)."""
    return {name: getattr(strategy, name) for name in STRATEGY_STATE
            if getattr(strategy, name, None) is not None}


def restore_strategy_state(strategy: object, state: dict[str, Any]) -> None:
    """Set the optimiser state :func:`strategy_state` saved back on ``strategy``."""
    for name, value in state.items():
        if name not in STRATEGY_STATE:
            raise ConfigError(f"checkpoint strategy state {name!r} is unknown; valid: "
                              f"{list(STRATEGY_STATE)}")
        setattr(strategy, name, value)


def _flatten(state: dict[str, Any]) -> dict[str, np.ndarray]:
    out = {}
    for name, value in state.items():
        if isinstance(value, dict):
            out.update({f"{name}/dict/{k}": np.asarray(v) for k, v in value.items()})
        else:
            out.update({f"{name}/list/{i:05d}": np.asarray(v) for i, v in enumerate(value)})
    return out


def _unflatten(arrays: dict[str, np.ndarray]) -> dict[str, Any]:
    state: dict[str, Any] = {}
    for key in sorted(arrays):
        name, kind, sub = key.split("/", 2)
        if kind == "dict":
            state.setdefault(name, {})[sub] = arrays[key]
        else:
            state.setdefault(name, []).append(arrays[key])
    return state


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    """``arrays`` (ndarrays or tensors) as the bytes of an .npz file."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save(run_dir: Path, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` as the run's newest checkpoint (see the module docstring)."""
    root = run_dir / FOLDER
    name = f"round-{ckpt.round:04d}"
    tmp = root / f".{name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    atomic_write_bytes(tmp / "global.npz", _npz_bytes(ckpt.weights))
    atomic_write_bytes(tmp / "strategy.npz", _npz_bytes(_flatten(ckpt.strategy)))
    # Python's JSON (NaN and Infinity allowed): ε is infinite without DP, and only the
    # server reads this file back.
    state = {"round": ckpt.round, "run_key": ckpt.run_key, "scaler": ckpt.scaler,
             "records": ckpt.records}
    atomic_write_bytes(tmp / "state.json", json.dumps(state, indent=1).encode())
    final = root / name
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    atomic_write_bytes(root / LATEST, (name + "\n").encode())
    for old in root.iterdir():
        if old.is_dir() and old.name != name and old.name.startswith("round-"):
            shutil.rmtree(old, ignore_errors=True)
    return final


def load(run_dir: Path) -> Checkpoint:
    """The newest complete checkpoint of ``run_dir``; a clear error when there is none."""
    root = Path(run_dir) / FOLDER
    try:
        name = (root / LATEST).read_text().strip()
    except OSError:
        raise ConfigError(f"resume-from: {Path(run_dir).name!r} has no checkpoint (no "
                          f"{FOLDER}/{LATEST}); only a run that completed at least one round "
                          "can be resumed") from None
    folder = root / name
    try:
        state = json.loads((folder / "state.json").read_text())
        with np.load(folder / "global.npz") as z:
            weights = {k: z[k] for k in z.files}
        with np.load(folder / "strategy.npz") as z:
            strategy = _unflatten({k: z[k] for k in z.files})
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"resume-from: the checkpoint {name!r} cannot be read "
                          f"({type(exc).__name__}); it may be damaged") from None
    return Checkpoint(round=int(state["round"]), run_key=int(state["run_key"]),
                      weights=weights, strategy=strategy, scaler=state.get("scaler"),
                      records=state.get("records") or {})


def truncate_rounds(run_dir: Path, last_round: int) -> int:
    """Drop ``rounds.jsonl`` lines past ``last_round`` (a round the server was killed in),
    and a last line the kill cut short; returns how many were dropped."""
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("round", 0) <= last_round:
                keep.append(line)
        except ValueError:
            continue
    if len(keep) != len(lines):
        atomic_write_bytes(path, "".join(ln + "\n" for ln in keep).encode())
    return len(lines) - len(keep)


RESUME_FILE = "resume.toml"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def write_resume_file(run_dir: Path, raw: dict[str, Any]) -> Path:
    """``<run>/resume.toml``: this run's own run config with ``resume-from`` set to it, so
    that ``flwr run ... --run-config <run>/resume.toml`` continues it. Server and sites then
    read the same config (the sites take theirs from the ``flwr run`` command)."""
    values = {**raw, "resume-from": str(run_dir)}
    lines = ["# Continue this run after a crash:",
             f"#   flwr run <project> <federation> --stream --run-config {run_dir / RESUME_FILE}"]
    lines += [f"{key} = {_toml_value(v)}" for key, v in sorted(values.items())]
    path = run_dir / RESUME_FILE
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
    return path


@dataclass
class Resume:
    """A run to continue: its folder, its own run config and its newest checkpoint."""

    path: Path
    raw_config: dict[str, Any]
    checkpoint: Checkpoint


def open_resume(resume_from: str, output_root: Path, run_config: dict[str, Any]) -> Resume:
    """Find the run named by ``resume-from`` (a folder, or a run name under the output
    folder) and its checkpoint.

    A resumed run must be the same run, only finished: the sites read their run config
    from the ``flwr run`` command, so ``run_config`` (what this command gave) must equal
    the run's own config apart from ``resume-from``; ``<run>/resume.toml`` is that config.
    """
    path = Path(resume_from).expanduser()
    if not path.is_absolute():
        path = output_root / path
    config_file = path / "config.json"
    try:
        raw = dict(json.loads(config_file.read_text())["run_config"])
    except (OSError, ValueError, KeyError):
        raise ConfigError(f"resume-from={resume_from!r} is not a MedFL run folder (no "
                          "readable config.json); give the folder of the interrupted run, "
                          "e.g. outputs/<run-name>") from None
    differ = sorted(k for k in set(raw) | set(run_config) if k != "resume-from"
                    and raw.get(k) != run_config.get(k))
    if differ:
        raise ConfigError(f"resume-from: this command's run config differs from run "
                          f"{path.name!r}'s in {differ[:8]}; the sites would train with "
                          f"other settings. Resume with its own config: --run-config "
                          f"{path / RESUME_FILE}")
    ckpt = load(path)
    rounds = int(raw.get("num-server-rounds", 0))
    if ckpt.round >= rounds and (path / "summary.json").exists():
        raise ConfigError(f"resume-from: run {path.name!r} already finished all {rounds} "
                          "rounds; nothing to resume")
    raw["resume-from"] = ""
    dropped = truncate_rounds(path, ckpt.round)
    logger.info("resuming run %s after round %d of %d (%d partial round record(s) dropped)",
                path.name, ckpt.round, rounds, dropped)
    return Resume(path=path, raw_config=raw, checkpoint=ckpt)


def as_tensors(weights: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Checkpointed arrays as the torch state dict the strategies start from."""
    import torch

    return {k: torch.from_numpy(np.array(v)) for k, v in weights.items()}
