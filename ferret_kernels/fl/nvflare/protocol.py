"""Ferret on NVIDIA FLARE: the wire protocol shared by the server half (controller.py) and the
site half (client.py), carried in FLARE's FLModel (params, metrics, meta), and the checks the
server runs on every reply. No FLARE import here: these are plain dicts, bytes and arrays.

server -> site (a "train" task; FLModel.current_round = the round being trained)
    meta["ferret.config"]  dict: round, base-round (the global model's round the site must be
                           at), seed (decimal string: seeds span [0, 2^64)), num-bases,
                           block-size, dist, adaptive, full-threshold, wire-dtype, plus the
                           job's train config under "train".
    meta["ferret.sync"]    dict: rounds (list[int]), updates (list[bytes]: encoded
                           UpdateMessages, ferret_kernels.fl.message), alphas (list[float]),
                           model-round (int): the applied updates the site has not seen yet, in
                           order; the site applies w <- w - alpha * reconstruct(update) for each.
    params                 the full global model ({name: numpy array}) only at first contact,
                           after the site lost its copy or failed, or when the updates it
                           missed are no longer in the bounded catch-up log; otherwise {}.
site -> server (the task result)
    meta["ferret.update"]  dict with exactly: update (bytes: the encoded UpdateMessage of
                           w_old - w_new), base-round (int), digest (16 hex digits, of the
                           site's copy before training).
    metrics                num-examples, train-loss (finite numbers if present) and whatever
                           the train function returns (not read by the server).
    params                 None: no weights leave the site.

Every reply is hostile until `reply_update` (shape of the records) and FerretServer.receive
(the update's bytes: ferret_kernels.fl.message.decode + UpdateCodec.check + freshness, seed,
norm) have accepted it.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch

from ..codec import FerretConfig
from ..message import MAX_WEIGHT, DecodeError

CONFIG, SYNC, UPDATE = "ferret.config", "ferret.sync", "ferret.update"
UPDATE_KEYS = frozenset({"update", "base-round", "digest"})
DIGEST = re.compile(r"[0-9a-f]{16}")


def config_dict(cfg: FerretConfig) -> dict:
    return {
        "num-bases": cfg.num_bases,
        "block-size": cfg.block_size,
        "dist": cfg.dist,
        "adaptive": cfg.adaptive,
        "full-threshold": cfg.full_threshold,
        "wire-dtype": cfg.wire_dtype,
    }


def ferret_config(cfg: dict) -> FerretConfig:
    return FerretConfig(
        num_bases=int(cfg["num-bases"]),
        block_size=int(cfg["block-size"]),
        dist=str(cfg["dist"]),
        adaptive=bool(cfg["adaptive"]),
        full_threshold=int(cfg["full-threshold"]),
        wire_dtype=str(cfg["wire-dtype"]),
    )


def to_numpy(state: dict) -> dict:
    """A state dict as numpy arrays (what FLARE's FOBS serializes without torch decomposers)."""
    out = {}
    for k, v in state.items():
        t = v.detach().cpu().contiguous()
        if t.dtype == torch.bfloat16:
            raise TypeError(f"{k} is bfloat16, which numpy cannot hold: keep the global model in float32 or float16")
        out[k] = t.numpy()
    return out


def from_numpy(params: dict, like: dict) -> dict:
    """Arrays received from the server as tensors of the model's own shapes and dtypes;
    ValueError names a missing, extra or mis-shaped entry before anything is loaded."""
    if not isinstance(params, dict):
        raise ValueError(f"the global model must be a dict of arrays, got {type(params).__name__}")
    missing, extra = sorted(set(like) - set(params)), sorted(set(params) - set(like))
    if missing or extra:
        raise ValueError(f"the global model does not match: missing {missing[:5]}, unexpected {extra[:5]}")
    out = {}
    for k, ref in like.items():
        a = params[k]
        if not isinstance(a, np.ndarray) or tuple(a.shape) != tuple(ref.shape):
            raise ValueError(f"global model entry {k!r} is not an array of shape {tuple(ref.shape)}")
        out[k] = torch.from_numpy(np.ascontiguousarray(a)).to(ref.dtype)
    return out


def quote(text, limit: int = 200) -> str:
    """A site-controlled string made safe for a log line: repr (no control characters), truncated."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def describe(v) -> str:
    return f"{type(v).__name__} {quote(v, 40) if isinstance(v, (str, bytes)) else repr(v)[:40]}"


def number(rec: dict, key: str, *, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """A scalar metric, validated: absent -> None; list, bool, NaN, inf or out of range -> DecodeError."""
    if key not in rec:
        return None
    v = rec[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise DecodeError(f"metric {key!r} is {describe(v)}, expected a number")
    v = float(v)
    if not (math.isfinite(v) and lo <= v <= hi):
        raise DecodeError(f"metric {key!r} = {v} is not a finite number in [{lo}, {hi}]")
    return v


def reply_update(params, metrics, meta, *, base_round: int, digest: str | None) -> tuple[bytes, dict]:
    """The reply's update bytes and validated metrics, or DecodeError saying what is wrong.

    `params`, `metrics`, `meta` are the reply FLModel's fields as FLARE decoded them (any
    type: the site chose them); `digest` is the global model's digest the site's copy must
    have (None: not checked)."""
    if params:
        raise DecodeError(f"reply carries params ({type(params).__name__}): a Ferret site sends no weights")
    if not isinstance(meta, dict):
        raise DecodeError(f"reply meta is {describe(meta)}, expected a dict")
    rec = meta.get(UPDATE)
    if not isinstance(rec, dict):
        raise DecodeError(f"reply has no {UPDATE!r} dict (got {type(rec).__name__})")
    if set(rec) != UPDATE_KEYS:
        raise DecodeError(
            f"{UPDATE!r} must hold exactly {sorted(UPDATE_KEYS)}, got {[quote(k, 30) for k in sorted(map(str, rec))][:8]}"
        )
    data, base, dig = rec["update"], rec["base-round"], rec["digest"]
    if not isinstance(data, bytes):
        raise DecodeError(f"'update' is {describe(data)}, expected bytes")
    if isinstance(base, bool) or not isinstance(base, int):
        raise DecodeError(f"'base-round' is {describe(base)}, expected an integer")
    if base != base_round:
        raise DecodeError(f"update made on round {base}'s model, expected {base_round}")
    if not isinstance(dig, str) or not DIGEST.fullmatch(dig):
        raise DecodeError(f"'digest' is {describe(dig)}, expected 16 hex digits")
    if digest is not None and dig != digest:
        raise DecodeError("the site's model copy differs from the global model (digest mismatch)")
    out = {}
    if metrics is not None:
        if not isinstance(metrics, dict):
            raise DecodeError(f"metrics are {describe(metrics)}, expected a dict")
        out = {
            "num-examples": number(metrics, "num-examples", lo=0, hi=MAX_WEIGHT),
            "train-loss": number(metrics, "train-loss"),
        }
    return data, out
