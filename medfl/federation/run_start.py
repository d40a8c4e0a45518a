"""How a run starts, resolved once: a fresh run, or an interrupted one continued from its
newest checkpoint (``resume-from``; see ``checkpoint``).

Everything that differs between the two lives here, so the ServerApp reads the same top to
bottom either way: the config and run directory (a resumed run keeps its own), the run key
the sites know it by, the consortium standardiser, the weights round 1 starts from, and the
strategy's records and optimiser state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord
from flwr.serverapp import Grid

from medfl import orchestration as orch
from medfl.config import RunConfig, parse_run_config
from medfl.data.scaling import Standardizer
from medfl.federation import checkpoint as ckpt
from medfl.federation.nodes import sample_nodes
from medfl.federation.queries import query_feature_moments
from medfl.federation.recording import Recording
from medfl.federation.records import array_values, to_array_record
from medfl.reporting.run_dir import RunDirectory, config_record, resolve_output_root


@dataclass(frozen=True)
class CheckpointWriter:
    """Saves the run's checkpoint after every completed round (the strategy's
    ``on_checkpoint``): the round's global model, the strategy's state and records."""

    run_dir: Path
    run_key: int
    scaler: Standardizer | None

    def __call__(self, strategy: Recording, run_round: int, arrays: ArrayRecord) -> None:
        """Write the checkpoint of ``run_round`` (see ``checkpoint.save``)."""
        ckpt.save(self.run_dir, ckpt.Checkpoint(
            round=run_round, run_key=self.run_key,
            weights={name: array_values(array) for name, array in arrays.items()},
            strategy=ckpt.strategy_state(strategy),
            scaler=self.scaler.to_dict() if self.scaler is not None else None,
            records=strategy.records()))


@dataclass(frozen=True)
class RunStart:
    """A run's starting point; ``resumed`` is the checkpoint it continues, ``None`` for a
    fresh run."""

    cfg: RunConfig
    run_dir: RunDirectory
    #: the sites' ledgers know a run by the Flower run id that started it, also after a resume
    run_key: int
    resumed: ckpt.Checkpoint | None = None

    @classmethod
    def open(cls, raw: dict[str, Any], *, run_id: int) -> RunStart:
        """Parse the run config ``raw``; a fresh run gets a new run directory (with its
        ``config.json`` and ``resume.toml``), a resumed one its own config and folder."""
        cfg = parse_run_config(raw)
        if cfg.resume_from:
            resume = ckpt.open_resume(cfg.resume_from, resolve_output_root(cfg), raw)
            return cls(cfg=parse_run_config(resume.raw_config),
                       run_dir=RunDirectory(resume.path),
                       run_key=resume.checkpoint.run_key, resumed=resume.checkpoint)
        run_dir = RunDirectory.create(resolve_output_root(cfg), cfg.run_name)
        run_dir.write_json("config.json", config_record(cfg, raw, run_dir.path.name))
        ckpt.write_resume_file(run_dir.path, raw)
        return cls(cfg=cfg, run_dir=run_dir, run_key=run_id)

    def scaler(self, grid: Grid, nodes: Sequence[int]
               ) -> tuple[Standardizer | None, dict[int, str]]:
        """The consortium standardiser (the checkpoint's, else pooled from the sampled
        sites' feature moments when ``preprocessing.scaling`` is federated, else none) and
        the node id -> site name map learnt on the way."""
        if self.resumed is not None and self.resumed.scaler:
            return Standardizer.from_dict(self.resumed.scaler), {}
        cfg = self.cfg
        if not (cfg.is_tabular and cfg.preprocessing.scaling == "federated"):
            return None, {}
        asked = sample_nodes(nodes, cfg.strategy.fraction_train,
                             minimum=cfg.strategy.min_round_nodes, seed=cfg.seed)
        failures: dict[int, str] = {}
        moments, node_sites = query_feature_moments(
            grid, asked, timeout=cfg.strategy.round_timeout, run_key=self.run_key,
            failures=failures)
        return orch.consortium_scaler(cfg, moments, expected=len(asked),
                                      refusals=failures), node_sites

    def checkpoint_writer(self, scaler: Standardizer | None) -> CheckpointWriter:
        """The strategy's ``on_checkpoint`` for this run."""
        return CheckpointWriter(self.run_dir.path, self.run_key, scaler)

    def initial_weights(self) -> dict[str, torch.Tensor]:
        """The weights the first round of this start sends: the checkpoint's, or the
        model built from the run's seed (built either way: it seeds torch alike)."""
        weights = orch.initial_weights(self.cfg)
        if self.resumed is not None:
            weights = ckpt.as_tensors(self.resumed.weights)
        return weights

    def restore(self, strategy: Recording) -> None:
        """Give a resumed run's strategy its records, round count and optimiser state."""
        if self.resumed is not None:
            strategy.restore(self.resumed.records, completed_rounds=self.resumed.round)
            ckpt.restore_strategy_state(strategy, self.resumed.strategy)

    def final_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        """The run's final model: the last aggregated one, or for a resumed run that
        aggregated no round since, the checkpoint's (empty for a fresh run without one)."""
        if aggregated or self.resumed is None:
            return aggregated
        return to_array_record(ckpt.as_tensors(self.resumed.weights))
