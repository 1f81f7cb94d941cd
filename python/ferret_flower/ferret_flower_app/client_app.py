"""ClientApp: keeps its copy of the global model in Context.state, trains locally and
replies with a Ferret update (K coefficients per block) instead of the weights."""

from __future__ import annotations

import functools
import random

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from ferret_kernels.fl.flower import ferret_evaluate, ferret_train, UPDATE

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
    reply = ferret_train(msg, context, model_fn=lambda c: _node(c)[0],
                         train_fn=lambda model, cfg, c: task.train(t, model, pid, c.run_config, int(cfg["round"])))
    # Fault injection for the deployment tests and the soak benchmark: node config
    # `corrupt-round=R` garbles this node's update in round R, `corrupt-rate=p` in a fraction p
    # of rounds (drawn from the partition and round), and the server must reject it and finish
    # the round without it.
    rnd = int(msg.content["ferret.config"]["round"])
    rate = float(context.node_config.get("corrupt-rate", 0.0))
    if int(context.node_config.get("corrupt-round", -1)) == rnd or (rate and random.Random(f"{pid}:{rnd}").random() < rate):
        data = bytearray(reply.content[UPDATE]["update"])
        data[-8:] = b"\xff" * 8  # the last coefficients become NaN
        reply.content[UPDATE] = ConfigRecord(dict(reply.content[UPDATE], update=bytes(data)))
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    _, t, _ = _node(context)
    return ferret_evaluate(msg, context, model_fn=lambda c: _node(c)[0], evaluate_fn=lambda model, cfg, c: task.evaluate(t, model))
