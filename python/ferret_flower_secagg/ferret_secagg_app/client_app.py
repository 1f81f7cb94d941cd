"""ClientApp: trains on its partition and replies with its Ferret coefficient vector behind
Flower's secaggplus_mod, which masks it so the server sees only the sum."""

from __future__ import annotations

import functools
import os

import numpy as np
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp

from ferret_kernels.fl.flower.secagg import ferret_secagg_train

from . import task


@functools.lru_cache(maxsize=1)
def _setup(run_cfg_items, num_partitions: int):
    rc = dict(run_cfg_items)
    return task.model(rc), task.task(num_partitions, rc)


def train(msg: Message, context: Context) -> Message:
    rc = context.run_config
    pid, n = int(context.node_config["partition-id"]), int(context.node_config["num-partitions"])
    m, t = _setup(tuple(sorted(rc.items())), n)
    fc, _ = task.configs(rc)
    reply = ferret_secagg_train(
        msg,
        context,
        model_fn=lambda c: m,
        train_fn=lambda model, cfg, c: task.train(t, model, pid, rc, int(cfg["round"])),
        ferret=fc,
    )
    if rc.get("out-dir"):  # this node's own vector, so a test can check the server got only their mean
        import flwr.compat.common.recorddict_compat as compat
        from flwr.common import parameters_to_ndarrays

        arrays = parameters_to_ndarrays(compat.recorddict_to_fitres(reply.content, keep_input=True).parameters)
        d = os.path.join(str(rc["out-dir"]), "nodes")
        os.makedirs(d, exist_ok=True)
        rnd = int(compat.recorddict_to_fitins(msg.content, keep_input=True).config["round"])
        np.save(os.path.join(d, f"round{rnd}_partition{pid}.npy"), np.concatenate([a.reshape(-1) for a in arrays]))
    return reply


app = ClientApp(mods=[secaggplus_mod])
app.train()(train)
