"""A site's last released update, kept so that a repeated round costs no privacy.

When the server dies after a site has trained round *r* (its update may already have left
the site), the resumed run asks for round *r* again with the same global model. Training
again would spend ε a second time for the same round; instead the site sends the update it
already released, which is post-processing of a released output and costs nothing. The
request must match exactly: same run, same round, and the same incoming model and config
(a digest of their bytes). The file is the site's own update, kept in its state folder.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from medfl.io import atomic_write_bytes
from medfl.privacy.dp import DPPlan, History

logger = logging.getLogger(__name__)


def request_digest(server_round: int, weights: dict[str, torch.Tensor],
                   extra: dict[str, Any]) -> str:
    """sha256 of the round number, the incoming model's arrays and the round's settings."""
    h = hashlib.sha256(f"round={server_round};".encode())
    for name in sorted(weights):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.numpy().tobytes())
    h.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _paths(base: Path) -> tuple[Path, Path]:
    return (base.with_name(base.stem + "-last-update.safetensors"),
            base.with_name(base.stem + "-last-update.json"))


def _plan_from(d: dict[str, Any] | None) -> DPPlan | None:
    if d is None:
        return None
    return DPPlan(**{**d, "prior": tuple(tuple(x) for x in d["prior"])})


def find(base: Path, digest: str) -> tuple[dict[str, torch.Tensor], dict[str, Any],
                                            DPPlan | None, History] | None:
    """The kept update, its metrics, and the DP plan and history *after* that round, if
    the last released round had this ``digest`` (the history travels with the update, so
    a crash between keeping it and saving the DP state cannot lose that round's spend)."""
    arrays, meta = _paths(base)
    try:
        info = json.loads(meta.read_text())
        if info.get("digest") != digest:
            return None
        history = [(float(s), float(q), int(n)) for s, q, n in info["history"]]
        with safe_open(str(arrays), framework="pt") as fh:
            paired = (fh.metadata() or {}).get("digest", digest)  # older files: no digest
        if paired != digest:
            return None  # another writer's arrays: not this round's update
        return load_file(str(arrays)), dict(info["metrics"]), _plan_from(info["plan"]), history
    except (OSError, ValueError, KeyError, TypeError):
        return None


def keep(base: Path, digest: str, weights: dict[str, torch.Tensor], metrics: dict[str, Any],
         *, plan: DPPlan | None, history: History) -> None:
    """Keep this round's released update (arrays first, then the record that names them)."""
    arrays, meta = _paths(base)
    # In memory, then one unique temporary file and a rename: concurrent writers never
    # share a temporary name. The digest inside the arrays pairs them with their record.
    atomic_write_bytes(arrays, save({k: v.detach().cpu().contiguous()
                                     for k, v in weights.items()}, metadata={"digest": digest}))
    record = {"digest": digest, "metrics": metrics, "history": [list(h) for h in history],
              "plan": dataclasses.asdict(plan) if plan is not None else None}
    # Python's JSON: ε is infinite without DP, and only this module reads the file back
    atomic_write_bytes(meta, json.dumps(record).encode())
