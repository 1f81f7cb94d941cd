"""ClientApp: keeps its copy of the global model in Context.state, trains locally and
replies with a Ferret update (K coefficients per block) instead of the weights."""

from __future__ import annotations

import functools

from flwr.app import Context, Message
from flwr.clientapp import ClientApp

from ferret_kernels.fl.flower import ferret_evaluate, ferret_train

from . import task

app = ClientApp()


@functools.lru_cache(maxsize=1)
def _setup(run_cfg_items, partition: int, num_partitions: int):
    cfg = dict(run_cfg_items)
    model, tok = task.build_model(cfg)
    return model, task.build_task(cfg, tok, num_partitions)


def _node(context: Context):
    pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    if not 0 <= pid < n:
        raise ValueError(f"node config partition-id={pid} must be in [0, num-partitions={n})")
    model, t = _setup(tuple(sorted(context.run_config.items())), pid, n)
    return model, t, pid


@app.train()
def train(msg: Message, context: Context) -> Message:
    _, t, pid = _node(context)
    return ferret_train(
        msg,
        context,
        model_fn=lambda c: _node(c)[0],
        train_fn=lambda model, cfg, c: task.train(t, model, pid, c.run_config, int(cfg["round"])),
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, t, _ = _node(context)
    return ferret_evaluate(
        msg, context, model_fn=lambda c: _node(c)[0], evaluate_fn=lambda model, cfg, c: task.evaluate(t, model)
    )
