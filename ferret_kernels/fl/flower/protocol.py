"""Ferret on Flower: the wire protocol shared by the server half (strategy.py) and the
client half (client.py), and the helpers both use.

Wire protocol (all records are plain Flower records; the update itself is the federated
layer's safetensors message, ferret_kernels.fl.message):

server -> node (TRAIN or EVALUATE message)
    "ferret.config"  ConfigRecord: round, base-round (the global model's round the node must
                     be at), seed (decimal string: seeds span [0, 2^64)), num-bases,
                     block-size, dist, adaptive, full-threshold, wire-dtype, plus the
                     user's train config under their own keys.
    "ferret.sync"    ConfigRecord: rounds (list[int]), updates (list[bytes]), alphas
                     (list[float]): the applied updates the node has not seen yet, in
                     order; the node applies w <- w - alpha * reconstruct(update) for each.
    "ferret.model"   ArrayRecord with the full global model: only the first time a node is
                     contacted, after it lost its copy, or when the updates it missed are
                     no longer in the bounded catch-up log (they would exceed the model's size).
node -> server (reply)
    "ferret.update"  ConfigRecord with exactly: update (bytes, the encoded UpdateMessage of
                     w_old - w_new), base-round (int) and digest (16 hex digits, of the
                     node's copy before training).
    "metrics"        MetricRecord: num-examples, train-loss (finite numbers if present) and
                     whatever the train function returns (not read by the strategy).
"""

from __future__ import annotations

from flwr.app import ConfigRecord, Message, RecordDict

from ..codec import FerretConfig
from ..replies import DIGEST, UPDATE_KEYS, describe, number, quote  # noqa: F401 - re-exported (engine-neutral)
from ..sync import apply_updates, model_digest  # noqa: F401 - re-exported (moved to the engine-neutral fl.sync)

CONFIG, SYNC, MODEL, UPDATE = "ferret.config", "ferret.sync", "ferret.model", "ferret.update"


def ferret_config(cfg: ConfigRecord) -> FerretConfig:
    return FerretConfig.from_fields(cfg)


def content_bytes(msg: Message, record: str) -> int:
    """Serialized size of one record of a message's content (what crossed the wire for it)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(RecordDict({record: msg.content[record]})).ByteSize()
