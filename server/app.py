"""MedFL ServerApp: a thin adapter. Parses config once, runs FedAvg, writes the run directory."""

from __future__ import annotations

import logging

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from medfl import federation as fed
from medfl import orchestration as orch
from medfl.config import parse_run_config
from medfl.data.scaling import Standardizer
from medfl.errors import MedflError
from medfl.federation import checkpoint as ckpt
from medfl.federation.strategies import build_strategy
from medfl.reporting.run_dir import RunDirectory, config_record, resolve_output_root

logger = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    raw = dict(context.run_config)
    cfg = parse_run_config(raw)
    resume = (ckpt.open_resume(cfg.resume_from, resolve_output_root(cfg), raw)
              if cfg.resume_from else None)
    if resume is not None:  # the same run, continued: its own config and folder
        cfg, run_dir = parse_run_config(resume.raw_config), RunDirectory(resume.path)
    else:
        run_dir = RunDirectory.create(resolve_output_root(cfg), cfg.run_name)
        run_dir.write_json("config.json", config_record(cfg, raw, run_dir.path.name))
        ckpt.write_resume_file(run_dir.path, raw)
    logger.info("MedFL run directory: %s", run_dir.path)

    fed.check_fedbn(cfg)  # a model without normalisation layers fails here, not at a site
    nodes = fed.wait_for_nodes(grid, minimum=cfg.strategy.min_nodes)
    # the sites' ledgers know a run by the Flower run id that started it, also after a resume
    run_key = resume.checkpoint.run_key if resume is not None else context.run_id
    scaler, node_sites = None, {}
    if resume is not None and resume.checkpoint.scaler:
        scaler = Standardizer.from_dict(resume.checkpoint.scaler)
    elif cfg.is_tabular and cfg.preprocessing.scaling == "federated":
        asked = fed.sample_nodes(nodes, cfg.strategy.fraction_train,
                                 minimum=cfg.strategy.min_round_nodes, seed=cfg.seed)
        moments, node_sites = fed.query_feature_moments(
            grid, asked, timeout=cfg.strategy.round_timeout, run_key=run_key)
        scaler = orch.consortium_scaler(cfg, moments, expected=len(asked))
    shared = ConfigRecord({**fed.scaler_to_config(scaler), "run-key": run_key})

    def checkpoint(server_round: int, arrays: ArrayRecord) -> None:
        ckpt.save(run_dir.path, ckpt.Checkpoint(
            round=server_round, run_key=run_key, weights=fed.from_array_record(arrays),
            strategy=ckpt.strategy_state(strategy),
            scaler=scaler.to_dict() if scaler is not None else None,
            records=strategy.records()))

    strategy = build_strategy(cfg, num_sites=len(nodes), on_round=run_dir.append_round,
                              node_sites=node_sites, weighted_by_key=fed.weight_key(cfg),
                              on_checkpoint=checkpoint)
    initial = orch.initial_weights(cfg)
    if resume is not None:
        strategy.restore(resume.checkpoint.records, completed_rounds=resume.checkpoint.round)
        ckpt.restore_strategy_state(strategy, resume.checkpoint.strategy)
        initial = ckpt.as_tensors(resume.checkpoint.weights)
    runner = fed.with_central_dp(strategy, cfg, num_sites=len(nodes))
    result = runner.start(
        grid=grid,
        initial_arrays=fed.to_array_record(initial),
        num_rounds=cfg.num_server_rounds - strategy.round_offset,
        timeout=cfg.strategy.round_timeout,
        train_config=ConfigRecord(dict(shared)),
        evaluate_config=ConfigRecord(dict(shared)),
    )
    if not result.arrays and resume is not None:  # no round aggregated since the resume
        result.arrays = fed.to_array_record(initial)
    if not result.arrays or not strategy.rounds_trained:
        raise MedflError("no round produced an aggregated model (every site failed, was "
                         f"refused or dropped); see {run_dir.path / 'rounds.jsonl'}")
    audits, final_nodes = {}, fed.final_query_nodes(cfg, strategy, grid.get_node_ids())
    if cfg.privacy.audit:
        audits = fed.query_audit(grid, final_nodes, arrays=result.arrays,
                                 config=shared, timeout=cfg.strategy.round_timeout)
    report_config = ConfigRecord({**dict(shared), "run-name": run_dir.path.name})
    report_stats = fed.query_report(grid, final_nodes, arrays=result.arrays,
                                    config=report_config, timeout=cfg.strategy.round_timeout)
    summary = orch.finish_run(
        run_dir, cfg, weights=fed.from_array_record(result.arrays), scaler=scaler,
        train=strategy.final_train, evaluation=strategy.final_site_stats,
        rounds_trained=strategy.rounds_trained, audits=audits,
        central=fed.central_dp_report(cfg, strategy), report_stats=report_stats,
        personal=strategy.final_personal_stats,
    )
    logger.info("MedFL run finished: mean site accuracy %s; files in %s",
                summary["mean_site_accuracy"], run_dir.path)
