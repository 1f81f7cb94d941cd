"""Ferret update messages: versioned, self-describing, compact, encoded with safetensors.

A message carries one client's update for one round: the seed and plan (dist, K, block
size), the active count of every block (omitted when all are K), only the active
coefficients (packed block by block, in fp32, bf16 or fp16), the deltas of the tensors
that travel in full, the client's aggregation weight, the layout fingerprint and the
library / RNG contract / format versions. No pickle: safetensors' JSON header holds the
metadata and its tensors the numbers.

`decode` validates everything before returning (sizes, versions, fingerprint, finite
values, counts within bounds, shapes) and raises DecodeError naming the problem, so a bad
message is refused before anything touches a model.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import torch

from .. import __version__ as LIB_VERSION
from ..ops import DISTS, RNG_VERSION
from .layout import ParamLayout

FORMAT_VERSION = 1
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_COUNT_DTYPES = ((255, torch.uint8), (32767, torch.int16), (2**31 - 1, torch.int32))


class DecodeError(ValueError):
    """A message that cannot be accepted; the text says why."""


@dataclass
class UpdateMessage:
    fingerprint: str
    seed: int
    dist: str
    num_bases: int
    block_size: int
    active: torch.Tensor            # int32 [total_blocks]
    coeffs: torch.Tensor            # float32 [active.sum()], block-major
    full: dict = field(default_factory=dict)  # name -> float32 delta of a tensor sent in full
    weight: float = 1.0
    round: int = 0
    client: str = ""
    wire_dtype: str = "float32"

    def dense(self) -> torch.Tensor:
        """Coefficients as float32 [total_blocks, K], zero beyond each block's active count."""
        nb, K = self.active.numel(), self.num_bases
        mask = torch.arange(K)[None, :] < self.active[:, None].to(torch.int64)
        out = torch.zeros(nb, K, dtype=torch.float32)
        out[mask] = self.coeffs.float()
        return out

    @property
    def num_coefficients(self) -> int:
        return int(self.coeffs.numel())


def _count_dtype(k: int) -> torch.dtype:
    return next(dt for bound, dt in _COUNT_DTYPES if k <= bound)


def encode(msg: UpdateMessage) -> bytes:
    from safetensors.torch import save

    if msg.wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {list(WIRE_DTYPES)}, got {msg.wire_dtype!r}")
    tensors = {"c": msg.coeffs.detach().to(WIRE_DTYPES[msg.wire_dtype]).contiguous().cpu()}
    uniform = bool((msg.active == msg.num_bases).all())
    if not uniform:
        tensors["a"] = msg.active.to(_count_dtype(msg.num_bases)).contiguous().cpu()
    for name, t in msg.full.items():
        tensors["f." + name] = t.detach().to(WIRE_DTYPES[msg.wire_dtype]).contiguous().cpu()
    meta = {
        "fmt": str(FORMAT_VERSION), "lib": LIB_VERSION, "rng": str(RNG_VERSION), "fp": msg.fingerprint,
        "seed": str(msg.seed), "dist": msg.dist, "K": str(msg.num_bases), "bs": str(msg.block_size),
        "nb": str(msg.active.numel()), "w": repr(float(msg.weight)), "r": str(msg.round),
    }
    if msg.client:
        meta["id"] = msg.client
    return save(tensors, metadata=meta)


def max_message_bytes(layout: ParamLayout, num_bases: int) -> int:
    """An upper bound on a valid message's size for this layout and K (oversized ones are refused)."""
    body = layout.total_blocks * (num_bases * 4 + 4) + sum(s.numel * 4 for s in layout.full)
    return body + 8 + 4096 + 256 * len(layout.full)


def _int(meta, key, lo, hi):
    try:
        v = int(meta[key])
    except (KeyError, ValueError):
        raise DecodeError(f"message metadata {key!r} is missing or not an integer") from None
    if not lo <= v <= hi:
        raise DecodeError(f"message metadata {key}={v} is outside [{lo}, {hi}]")
    return v


def decode(data: bytes, layout: ParamLayout, *, max_bases: int | None = None) -> UpdateMessage:
    """Parse and validate a message for `layout`. Raises DecodeError on any problem."""
    from safetensors.torch import load

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DecodeError(f"a message is bytes, got {type(data).__name__}")
    limit = max_message_bytes(layout, max_bases or 2**16)
    if len(data) > limit:
        raise DecodeError(f"message of {len(data)} bytes is larger than any valid one for this layout ({limit})")
    if len(data) < 8:
        raise DecodeError("message is truncated (shorter than its header length field)")
    (hlen,) = struct.unpack("<Q", bytes(data[:8]))
    if hlen > len(data) - 8:
        raise DecodeError(f"message is truncated (header of {hlen} bytes, {len(data) - 8} present)")
    try:
        header = json.loads(bytes(data[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DecodeError(f"message header is not valid JSON ({e})") from None
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict):
        raise DecodeError("message has no metadata")
    try:
        tensors = load(bytes(data))
    except Exception as e:  # safetensors raises SafetensorError (and others) on malformed payloads
        raise DecodeError(f"message is not a valid safetensors payload ({type(e).__name__}: {e})") from None

    if meta.get("fmt") != str(FORMAT_VERSION):
        raise DecodeError(f"message format version {meta.get('fmt')!r} is not supported (expected {FORMAT_VERSION})")
    if meta.get("rng") != str(RNG_VERSION):
        raise DecodeError(f"message uses RNG contract version {meta.get('rng')!r}; this library implements {RNG_VERSION}")
    if meta.get("fp") != layout.fingerprint:
        raise DecodeError("message was made for another model or block plan (layout fingerprint differs)")
    dist = meta.get("dist")
    if dist not in DISTS:
        raise DecodeError(f"message has unknown dist {dist!r}")
    seed = _int(meta, "seed", 0, 2**64 - 1)
    K = _int(meta, "K", 1, max_bases or 2**31 - 1)
    bs = _int(meta, "bs", 1, 2**33)
    if bs != layout.block_size:
        raise DecodeError(f"message block size {bs} differs from the layout's {layout.block_size}")
    nb = _int(meta, "nb", 0, 2**32)
    if nb != layout.total_blocks:
        raise DecodeError(f"message has {nb} blocks, the layout {layout.total_blocks}")
    rnd = _int(meta, "r", 0, 2**62)
    try:
        weight = float(meta.get("w", "1.0"))
    except ValueError:
        raise DecodeError("message weight is not a number") from None
    if not math.isfinite(weight) or weight < 0:
        raise DecodeError(f"message weight {weight} must be finite and >= 0")

    expected = {"c"} | {"f." + s.name for s in layout.full}
    extra = set(tensors) - expected - {"a"}
    missing = expected - set(tensors)
    if extra or missing:
        raise DecodeError(f"message tensors do not match the layout (unexpected {sorted(extra)}, missing {sorted(missing)})")
    wire = None
    for name, t in tensors.items():
        if name == "a":
            continue
        dt = next((k for k, v in WIRE_DTYPES.items() if v == t.dtype), None)
        if dt is None:
            raise DecodeError(f"message tensor {name!r} has dtype {t.dtype}; expected float32, bfloat16 or float16")
        wire = wire or dt
        if not torch.isfinite(t).all():
            raise DecodeError(f"message tensor {name!r} has NaN or Inf values")
    if "a" in tensors:
        a = tensors["a"]
        if a.dtype not in (torch.uint8, torch.int16, torch.int32) or a.dim() != 1 or a.numel() != nb:
            raise DecodeError(f"active counts must be an integer vector of {nb} blocks, got {a.dtype} {list(a.shape)}")
        active = a.to(torch.int32)
        if nb and (int(active.min()) < 0 or int(active.max()) > K):
            raise DecodeError(f"active counts must be in [0, K={K}]")
    else:
        active = torch.full((nb,), K, dtype=torch.int32)
    c = tensors["c"]
    if c.dim() != 1 or c.numel() != int(active.sum()):
        raise DecodeError(f"message has {c.numel()} coefficients, its active counts say {int(active.sum())}")
    full = {}
    for s in layout.full:
        t = tensors["f." + s.name]
        if tuple(t.shape) != s.shape:
            raise DecodeError(f"full tensor {s.name}: shape {list(t.shape)} differs from the layout's {list(s.shape)}")
        full[s.name] = t.float()
    return UpdateMessage(layout.fingerprint, seed, dist, K, bs, active, c.float(), full, weight, rnd,
                         meta.get("id", ""), wire or "float32")
