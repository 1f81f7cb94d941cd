"""ServerApp: Ferret rounds through Flower's SecAgg+ workflow (ferret_kernels.fl.flower.secagg).

With out-dir set it writes rounds.json: per round the unmasked mean vector it applied, the
number of clients in it, and the held-out accuracy before the first and after the last round."""

from __future__ import annotations

import json
import os

from flwr.app import Context
from flwr.server import LegacyContext
from flwr.server import ServerConfig as FlowerServerConfig
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.serverapp import Grid, ServerApp

from ferret_kernels.fl.flower.secagg import make_strategy, update_ndarrays

from . import task

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    fc, sc = task.configs(rc)
    model = task.model(rc)
    strategy = make_strategy(model, fc, sc, min_nodes=int(rc["min-nodes"]))
    ctx = LegacyContext(context, config=FlowerServerConfig(num_rounds=int(rc["num-server-rounds"])), strategy=strategy)
    workflow = DefaultWorkflow(
        fit_workflow=SecAggPlusWorkflow(
            num_shares=rc["num-shares"],  # an int: a count; a float: a fraction of the sampled nodes
            reconstruction_threshold=rc["reconstruction-threshold"],
            clipping_range=float(rc["clipping-range"]),
            quantization_range=int(rc["quantization-range"]),
            max_weight=1.0,
            timeout=float(rc["stage-timeout"]),
        )
    )
    t = task.task(int(rc["min-nodes"]), rc)
    start = t.evaluate(model)
    workflow(grid, ctx)
    if rc.get("out-dir"):
        os.makedirs(str(rc["out-dir"]), exist_ok=True)
        rounds = {
            r: dict(mean=[float(x) for a in update_ndarrays(m) for x in a.reshape(-1)])
            for r, m in strategy.applied.items()
        }
        out = dict(rounds=rounds, clients=strategy.clients, start=start, final=t.evaluate(model))
        with open(os.path.join(str(rc["out-dir"]), "rounds.json"), "w") as f:
            json.dump(out, f)
