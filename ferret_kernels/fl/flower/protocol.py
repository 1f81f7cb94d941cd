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

import hashlib
import math
import re
from collections.abc import Iterable

import torch
from flwr.app import ConfigRecord, Message, RecordDict

from ..codec import FerretConfig, UpdateCodec
from ..message import DecodeError, decode

CONFIG, SYNC, MODEL, UPDATE = "ferret.config", "ferret.sync", "ferret.model", "ferret.update"
UPDATE_KEYS = frozenset({"update", "base-round", "digest"})
DIGEST = re.compile(r"[0-9a-f]{16}")


def model_digest(module: torch.nn.Module, codec: UpdateCodec) -> str:
    """SHA-256 (first 16 hex digits) of the trainable parameters' bytes in layout order."""
    h = hashlib.sha256()
    params = codec.layout.params(module)
    for s in codec.layout.specs:
        h.update(params[s.name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def apply_updates(
    codec: UpdateCodec, module: torch.nn.Module, updates: Iterable[bytes], alphas: Iterable[float]
) -> None:
    """w <- w - alpha_i * reconstruct(update_i) for each encoded update, in order, in place.

    Every update is decoded and checked before the first one is applied."""
    updates, alphas = list(updates), [float(a) for a in alphas]
    if len(updates) != len(alphas):
        raise DecodeError(f"{len(updates)} updates but {len(alphas)} alphas")
    if not all(math.isfinite(a) for a in alphas):
        raise DecodeError("alphas must be finite")
    msgs = [decode(u, codec.layout, max_bases=codec.config.max_bases) for u in updates]
    for m in msgs:
        codec.check(m)
    for m, a in zip(msgs, alphas):
        codec.apply(module, [m], lr=a, weights=[1.0])


def ferret_config(cfg: ConfigRecord) -> FerretConfig:
    return FerretConfig(
        num_bases=int(cfg["num-bases"]),
        block_size=int(cfg["block-size"]),
        dist=str(cfg["dist"]),
        adaptive=bool(cfg["adaptive"]),
        full_threshold=int(cfg["full-threshold"]),
        wire_dtype=str(cfg["wire-dtype"]),
        pack=bool(cfg.get("pack", False)),  # absent: a server from before packed layouts
    )


def content_bytes(msg: Message, record: str) -> int:
    """Serialized size of one record of a message's content (what crossed the wire for it)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(RecordDict({record: msg.content[record]})).ByteSize()


def quote(text, limit: int = 200) -> str:
    """A node-controlled string made safe for a log line: repr (no control characters), truncated."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def describe(v) -> str:
    return f"{type(v).__name__} {quote(v, 40) if isinstance(v, (str, bytes)) else repr(v)[:40]}"


def number(rec, key: str, *, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """A scalar metric, validated: absent -> None; list, bool, NaN, inf or out of range -> DecodeError."""
    if key not in rec:
        return None
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise DecodeError(f"metric {key!r} is {describe(v)}, expected a number")
    v = float(v)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise DecodeError(f"metric {key!r} = {v} is not a finite number in [{lo}, {hi}]")
    return v
