"""Ferret on Flower, the client half: ClientApp handlers that keep the node's copy of the
global model in its Context.state, bring it to the round the server names (applying the
updates the message carries), train or evaluate with the user's function, and reply with
the Ferret update (K coefficients per block) of w_old - w_new. Wire protocol: protocol.py.

    app = ClientApp()

    @app.train()
    def train(msg, context):
        return ferret_train(msg, context, model_fn=..., train_fn=...)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from ..codec import UpdateCodec
from ..message import encode
from .protocol import CONFIG, MODEL, SYNC, UPDATE, apply_updates, ferret_config, model_digest


def _synced_model(msg: Message, context: Context, model_fn) -> tuple[torch.nn.Module, UpdateCodec, ConfigRecord, dict]:
    """The node's copy of the global model, brought to the message's base round and saved in
    Context.state. Returns (model, codec, config, the copy's tensors)."""
    cfg = msg.content[CONFIG]
    base = int(cfg["base-round"])
    model = model_fn(context)  # the architecture; its weights are replaced below (a cached module is fine)
    codec = UpdateCodec.for_module(model, ferret_config(cfg))
    sync = msg.content[SYNC]
    if MODEL in msg.content:
        state, have = msg.content[MODEL].to_torch_state_dict(), int(sync["model-round"])
    elif MODEL in context.state:
        state, have = context.state[MODEL].to_torch_state_dict(), int(context.state[SYNC]["round"])
    else:
        raise RuntimeError("this node holds no copy of the global model and none was sent")
    model.load_state_dict(state)
    rounds = [int(r) for r in sync["rounds"]]
    todo = [i for i, r in enumerate(rounds) if r > have]
    if sorted({rounds[i] for i in todo}) != list(range(have + 1, base + 1)):
        raise RuntimeError(
            f"node copy is at round {have}; the sync covers rounds {sorted(set(rounds))}, not {have + 1}..{base}"
        )
    apply_updates(codec, model, [sync["updates"][i] for i in todo], [sync["alphas"][i] for i in todo])
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    context.state[MODEL] = ArrayRecord(snapshot)
    context.state[SYNC] = ConfigRecord({"round": base})
    return model, codec, cfg, snapshot


def ferret_train(
    msg: Message,
    context: Context,
    *,
    model_fn: Callable[[Context], torch.nn.Module],
    train_fn: Callable[[torch.nn.Module, ConfigRecord, Context], dict],
) -> Message:
    """ClientApp train handler: sync the node's copy, train locally with `train_fn(model,
    config, context) -> metrics` (must include "num-examples"), reply with the Ferret update."""
    model, codec, cfg, old = _synced_model(msg, context, model_fn)
    digest = model_digest(model, codec)
    metrics = dict(train_fn(model, cfg, context))
    upd = codec.compress(
        old,
        model,
        int(cfg["seed"]),
        weight=float(metrics.get("num-examples", 1)),
        round=int(cfg["round"]),
        client=str(context.node_id),
    )
    model.load_state_dict(old)  # the node's copy stays the global model
    content = RecordDict(
        {
            UPDATE: ConfigRecord({"update": encode(upd), "base-round": int(cfg["base-round"]), "digest": digest}),
            "metrics": MetricRecord({k: float(v) for k, v in metrics.items()}),
        }
    )
    return Message(content, reply_to=msg)


def ferret_evaluate(
    msg: Message,
    context: Context,
    *,
    model_fn: Callable[[Context], torch.nn.Module],
    evaluate_fn: Callable[[torch.nn.Module, ConfigRecord, Context], dict],
) -> Message:
    """ClientApp evaluate handler: sync the node's copy and evaluate it."""
    model, _, cfg, _ = _synced_model(msg, context, model_fn)
    metrics = dict(evaluate_fn(model, cfg, context))
    return Message(RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})}), reply_to=msg)
