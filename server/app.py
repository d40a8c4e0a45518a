"""MedFL ServerApp: a thin adapter. Parses config once, runs FedAvg, writes the run directory."""

from __future__ import annotations

import logging

from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from medfl import federation as fed
from medfl import orchestration as orch
from medfl import tasks
from medfl.errors import MedflError, SiteRefused
from medfl.federation.run_start import RunStart
from medfl.federation.strategies import build_strategy

logger = logging.getLogger(__name__)
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run the federation (fresh or resumed), query the final model, write the run."""
    start = RunStart.open(dict(context.run_config), run_id=context.run_id)
    cfg, run_dir = start.cfg, start.run_dir
    logger.info("MedFL run directory: %s", run_dir.path)

    fed.check_fedbn(cfg)  # a model without normalisation layers fails here, not at a site
    nodes = fed.wait_for_nodes(grid, minimum=cfg.strategy.min_nodes)
    try:
        scaler, node_sites = start.scaler(grid, nodes)
    except SiteRefused as refused:  # a consortium matter, not a server fault: no traceback
        orch.stop_refused(run_dir, refused)
        return
    shared = ConfigRecord({**fed.scaler_to_config(scaler), "run-key": start.run_key,
                           **fed.image_size_to_config(cfg)})

    strategy = build_strategy(cfg, num_sites=len(nodes), on_round=run_dir.append_round,
                              node_sites=node_sites, weighted_by_key=fed.weight_key(cfg),
                              on_checkpoint=start.checkpoint_writer(scaler))
    initial = start.initial_weights()
    start.restore(strategy)
    runner = fed.with_central_dp(strategy, cfg, num_sites=len(nodes))
    # Under secure aggregation a round's updates reach the strategy only as their sum.
    train_grid = (fed.SecureTrainGrid(grid, cfg.secure_aggregation, run_id=context.run_id)
                  if cfg.secure_aggregation.enabled else grid)
    result = runner.start(
        grid=train_grid,
        initial_arrays=fed.to_array_record(initial),
        num_rounds=cfg.num_server_rounds - strategy.round_offset,
        timeout=cfg.strategy.round_timeout,
        train_config=ConfigRecord(dict(shared)),
        evaluate_config=ConfigRecord(dict(shared)),
    )
    final = start.final_arrays(result.arrays)
    if not final or not strategy.rounds_trained:
        raise MedflError("no round produced an aggregated model (every site failed, was "
                         f"refused or dropped); see {run_dir.path / 'rounds.jsonl'}")

    audits, final_nodes = {}, fed.final_query_nodes(cfg, strategy, grid.get_node_ids())
    if cfg.privacy.audit:
        audits = fed.query_audit(grid, final_nodes, arrays=final,
                                 config=shared, timeout=cfg.strategy.round_timeout)
    report_config = ConfigRecord({**dict(shared), "run-name": run_dir.path.name})
    report_stats = fed.query_report(grid, final_nodes, arrays=final, config=report_config,
                                    timeout=cfg.strategy.round_timeout,
                                    n_cells=len(tasks.task_for(cfg).cells()),
                                    secure=fed.secure_report_plan(cfg, run_id=context.run_id))
    summary = orch.finish_run(
        run_dir, cfg, weights=fed.from_array_record(final), scaler=scaler,
        train=strategy.final_train, evaluation=strategy.final_site_stats,
        rounds_trained=strategy.rounds_trained, audits=audits,
        central=fed.central_dp_report(cfg, strategy), report_stats=report_stats,
        personal=strategy.final_personal_stats,
    )
    logger.info("MedFL run finished: mean site accuracy %s; files in %s",
                summary["mean_site_accuracy"], run_dir.path)
