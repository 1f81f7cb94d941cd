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

Every reply is hostile until `reply_update` (shape of the records, with fl.replies' checks
shared with the Flower strategy) and FerretServer.receive
(the update's bytes: ferret_kernels.fl.message.decode + UpdateCodec.check + freshness, seed,
norm) have accepted it.
"""

from __future__ import annotations

import numpy as np
import torch

from ..codec import FerretConfig
from ..message import DecodeError
from ..replies import check_base, describe, quote, reply_metrics, update_bytes  # noqa: F401 - quote re-exported

CONFIG, SYNC, UPDATE = "ferret.config", "ferret.sync", "ferret.update"


def config_dict(cfg: FerretConfig) -> dict:
    return cfg.to_fields()


def ferret_config(cfg: dict) -> FerretConfig:
    return FerretConfig.from_fields(cfg)


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


def reply_update(params, metrics, meta, *, base_round: int, digest: str | None) -> tuple[bytes, dict]:
    """The reply's update bytes and validated metrics, or DecodeError saying what is wrong.

    `params`, `metrics`, `meta` are the reply FLModel's fields as FLARE decoded them (any
    type: the site chose them); `digest` is the global model's digest the site's copy must
    have (None: not checked). The update record and metrics are checked by fl.replies, as
    the Flower strategy checks its records."""
    # None or an empty dict: no weights (not truthiness: a numpy array's is an error, or says an
    # array of one zero carries nothing)
    if not (params is None or (isinstance(params, dict) and not params)):
        raise DecodeError(f"reply carries params ({type(params).__name__}): a Ferret site sends no weights")
    if not isinstance(meta, dict):
        raise DecodeError(f"reply meta is {describe(meta)}, expected a dict")
    rec = meta.get(UPDATE)
    data = update_bytes(rec, UPDATE)
    check_base(rec, base_round=base_round, digest=digest)
    if metrics is None:
        return data, {}
    if not isinstance(metrics, dict):
        raise DecodeError(f"metrics are {describe(metrics)}, expected a dict")
    return data, reply_metrics(metrics)
