"""Ferret update messages: versioned, self-describing, compact, encoded with safetensors.

A message carries one client's update for one round: the seed and plan (dist, K, block
size), the active count of every block (omitted when all are K), only the active
coefficients (packed block by block, in fp32, bf16 or fp16), the deltas of the tensors
that travel in full, the client's claimed aggregation weight, the round, the client id,
the layout fingerprint and the library / RNG contract / format versions. No pickle:
safetensors' JSON header holds the metadata and its tensors the numbers.

Contract (docs/threat_model.md). The bytes come from a client and are hostile until
`decode` returns:
- `decode(data, layout)` returns an UpdateMessage only if `data` is *the* encoding of a
  valid message for `layout`: every field present, in range and spelled canonically, and
  `encode(decode(data)) == data` byte for byte (one encoding per message: no whitespace,
  key order, padding, number spelling or dtype variants). Anything else raises
  DecodeError naming the problem; no other exception type escapes, whatever the input
  (any bytes, any nesting, any length, any Python object).
- Work and memory are bounded before parsing: the size is checked against the largest
  valid message for the layout and K, the header against the largest valid header.
- `encode` writes that canonical form: safetensors lays out the tensors; the metadata
  keys are then sorted (safetensors' Rust HashMap writes them in a random order, so two
  encodings of one message differed from process to process).
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field

import torch

from .. import __version__ as LIB_VERSION
from ..ops import DISTS, RNG_VERSION
from .layout import ParamLayout

FORMAT_VERSION = 1
WIRE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_COUNT_DTYPES = ((255, torch.uint8), (32767, torch.int16), (2**31 - 1, torch.int32))
MAX_BASES = 1 << 16  # K above this is refused whatever the server's own bound
MAX_WEIGHT = float(2**53)  # the most examples a message may claim (every integer below is exact in a double)
MAX_ROUND = 2**62
REQUIRED_META = frozenset({"fmt", "lib", "rng", "fp", "seed", "dist", "K", "bs", "nb", "w", "r"})
OPTIONAL_META = frozenset({"id"})
_UINT = re.compile(r"0|[1-9][0-9]{0,19}")  # re with str patterns: [0-9] is ASCII only
_FLOAT = re.compile(r"[0-9][0-9.e+-]{0,31}")
_CLIENT = re.compile(r"[A-Za-z0-9._:@+-]{1,64}")
_LIB = re.compile(r"[0-9][0-9A-Za-z.+!-]{0,47}")
_FP = re.compile(r"[0-9a-f]{32}")


class DecodeError(ValueError):
    """A message that cannot be accepted; the text says why."""


@dataclass
class UpdateMessage:
    fingerprint: str
    seed: int
    dist: str
    num_bases: int
    block_size: int
    active: torch.Tensor  # int32 [total_blocks]
    coeffs: torch.Tensor  # float32 [active.sum()], block-major
    full: dict = field(default_factory=dict)  # name -> float32 delta of a tensor sent in full
    weight: float = 1.0
    round: int = 0
    client: str = ""
    wire_dtype: str = "float32"
    lib: str = LIB_VERSION  # the sender's library version (informational; fmt and rng decide compatibility)

    def dense(self, num_bases: int | None = None) -> torch.Tensor:
        """Coefficients as float32 [total_blocks, num_bases (default K)], zero beyond each
        block's active count (num_bases >= K pads with zeros: basis k does not depend on K)."""
        nb, K = self.active.numel(), max(self.num_bases, num_bases or 0)
        mask = torch.arange(K)[None, :] < self.active[:, None].to(torch.int64)
        out = torch.zeros(nb, K, dtype=torch.float32)
        out[mask] = self.coeffs.float()
        return out

    @property
    def num_coefficients(self) -> int:
        return int(self.coeffs.numel())

    def norm(self) -> float:
        """Euclidean norm of everything the update carries (coefficients and full deltas), in float64."""
        sq = float(self.coeffs.double().square().sum()) + sum(
            float(t.double().square().sum()) for t in self.full.values()
        )
        return math.sqrt(sq)

    def step_norm(self, num_bases: int) -> float:
        """The size of the step the update makes, in norm()'s units for an update with `num_bases`
        (the server's K) in every block: block b's coefficients weighted by sqrt(num_bases / k_b).
        A block's reconstruction is scaled by 1/sqrt(k_b), so at one coefficient norm an update
        with k_b = 1 moves the model sqrt(K) times as far as one with k_b = K; bounds on norm()
        alone let a client pick K' = 1 (or active counts of 1) to step sqrt(K) times past them.
        Equal to norm() when every block has num_bases bases."""
        a = self.active.to(torch.float64)
        per_block = self.dense().double().square().sum(1)
        w = torch.where(a > 0, float(num_bases) / a.clamp(min=1), torch.zeros_like(a))
        sq = float((per_block * w).sum()) + sum(float(t.double().square().sum()) for t in self.full.values())
        return math.sqrt(sq)


def _count_dtype(k: int) -> torch.dtype:
    return next(dt for bound, dt in _COUNT_DTYPES if k <= bound)


def _check_encodable(msg: UpdateMessage) -> None:
    if msg.wire_dtype not in WIRE_DTYPES:
        raise ValueError(f"wire_dtype must be one of {list(WIRE_DTYPES)}, got {msg.wire_dtype!r}")
    if not (isinstance(msg.weight, (int, float)) and math.isfinite(msg.weight) and 0 <= msg.weight <= MAX_WEIGHT):
        raise ValueError(f"weight must be a finite number in [0, 2^53], got {msg.weight!r}")
    if (
        not 0 <= int(msg.seed) < 2**64
        or not 0 <= int(msg.round) <= MAX_ROUND
        or not 1 <= int(msg.num_bases) <= MAX_BASES
    ):
        raise ValueError(f"seed, round or K out of range (seed {msg.seed}, round {msg.round}, K {msg.num_bases})")
    if msg.client and not _CLIENT.fullmatch(msg.client):
        raise ValueError(f"client id must be 1-64 characters of [A-Za-z0-9._:@+-], got {msg.client!r}")
    if not _LIB.fullmatch(msg.lib):
        raise ValueError(f"lib version {msg.lib!r} is not a version string")


def encode(msg: UpdateMessage) -> bytes:
    """The canonical bytes of `msg` (decode(encode(m)) gives m back; decode accepts nothing else)."""
    from safetensors.torch import save

    _check_encodable(msg)
    wire = WIRE_DTYPES[msg.wire_dtype]
    tensors = {"c": msg.coeffs.detach().to(wire).contiguous().cpu()}
    if not bool((msg.active == msg.num_bases).all()):
        tensors["a"] = msg.active.to(_count_dtype(msg.num_bases)).contiguous().cpu()
    for name, t in msg.full.items():
        tensors["f." + name] = t.detach().to(wire).contiguous().cpu()
    meta = {
        "fmt": str(FORMAT_VERSION),
        "lib": msg.lib,
        "rng": str(RNG_VERSION),
        "fp": msg.fingerprint,
        "seed": str(int(msg.seed)),
        "dist": msg.dist,
        "K": str(int(msg.num_bases)),
        "bs": str(int(msg.block_size)),
        "nb": str(msg.active.numel()),
        "w": repr(float(msg.weight)),
        "r": str(int(msg.round)),
    }
    if msg.client:
        meta["id"] = msg.client
    raw = save(tensors, metadata=meta)
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(
        raw[8 : 8 + hlen]
    )  # our own bytes: "__metadata__" first, then the tensors in safetensors' order
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    if len(text) != len(raw[8 : 8 + hlen].rstrip(b" ")):  # same keys and values, only reordered: same length
        raise AssertionError("safetensors wrote a header this encoder does not understand")
    return raw[:8] + text.ljust(hlen, b" ") + raw[8 + hlen :]


def max_header_bytes(layout: ParamLayout) -> int:
    """An upper bound on a valid message's JSON header (metadata under 1 KiB, one entry per tensor)."""
    return 1024 + 160 * (2 + len(layout.full)) + sum(len(s.name.encode()) for s in layout.full)


def max_message_bytes(layout: ParamLayout, num_bases: int) -> int:
    """An upper bound on a valid message's size for this layout and K (oversized ones are refused)."""
    body = layout.total_blocks * (num_bases * 4 + 4) + sum(s.numel * 4 for s in layout.full)
    return body + 8 + max_header_bytes(layout)


def _uint(meta: dict, key: str, lo: int, hi: int) -> int:
    s = meta[key]
    if not _UINT.fullmatch(s):
        raise DecodeError(
            f"message metadata {key}={s[:40]!r} is not a canonical decimal integer "
            f"(ASCII digits, no sign, spaces, separators or leading zeros)"
        )
    v = int(s)
    if not lo <= v <= hi:
        raise DecodeError(f"message metadata {key}={v} is outside [{lo}, {hi}]")
    return v


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray)):
        return bytes(data)
    if isinstance(data, memoryview):
        if not data.c_contiguous or data.format not in ("B", "b", "c"):
            raise DecodeError(
                f"a message is a contiguous byte buffer; got a memoryview of format {data.format!r}"
                f"{'' if data.c_contiguous else ', not contiguous'}"
            )
        return data.tobytes()
    raise DecodeError(f"a message is bytes, got {type(data).__name__}")


def _load_tensors(data: bytes) -> dict:
    from safetensors.torch import load

    try:
        return load(data)
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as e:  # noqa: BLE001 - SafetensorError, and pyo3's PanicException (a BaseException)
        raise DecodeError(f"message is not a valid safetensors payload ({type(e).__name__}: {str(e)[:200]})") from None


def _header(data: bytes, hlen: int) -> dict:
    def pairs(items):
        keys = [k for k, _ in items]
        if len(set(keys)) != len(keys):
            raise DecodeError(f"message header repeats a key ({sorted(k for k in set(keys) if keys.count(k) > 1)[:3]})")
        return dict(items)

    def no_constant(name):
        raise DecodeError(f"message header holds the non-JSON constant {name}")

    def no_float(text):
        raise DecodeError(f"message header holds a float ({text[:20]}); only integers and strings belong there")

    try:
        header = json.loads(
            data[8 : 8 + hlen], object_pairs_hook=pairs, parse_constant=no_constant, parse_float=no_float
        )
    except DecodeError:
        raise
    except (ValueError, RecursionError) as e:  # safetensors already bounded the nesting; belt and braces
        raise DecodeError(f"message header is not valid JSON ({type(e).__name__}: {str(e)[:100]})") from None
    if not isinstance(header, dict) or not isinstance(header.get("__metadata__"), dict):
        raise DecodeError("message has no metadata")
    meta = header["__metadata__"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise DecodeError("message metadata must map strings to strings")
    return meta


def _oversize_hint(data: bytes, layout: ParamLayout, kmax: int) -> str:
    """What an oversized message's header says that differs from this layout (a client configured
    with a larger K or another block size got only the size error): its header is bounded, so it is
    read, leniently, for the message; "" where it cannot be read."""
    try:
        (hlen,) = struct.unpack("<Q", data[:8])
        if hlen > min(max_header_bytes(layout), len(data) - 8):
            return ""
        meta = _header(data, hlen)
    except (DecodeError, struct.error):
        return ""
    why = []
    if meta.get("fp") != layout.fingerprint:
        why.append("it was made for another model or block plan (layout fingerprint differs)")
    for key, what, ok, want in (
        ("K", "K", lambda v: v <= kmax, f"at most {kmax}"),
        ("bs", "block size", lambda v: v == layout.block_size, str(layout.block_size)),
    ):
        v = meta.get(key, "")
        if isinstance(v, str) and _UINT.fullmatch(v) and len(v) < 20 and not ok(int(v)):  # ASCII digits only
            why.append(f"its {what} is {int(v)}, this layout's {want}")
    return ": " + "; ".join(why) if why else ""


def decode(data, layout: ParamLayout, *, max_bases: int | None = None) -> UpdateMessage:
    """Parse and validate a message for `layout`. Raises DecodeError (only) on any problem."""
    kmax = min(max_bases or MAX_BASES, MAX_BASES)
    data = _as_bytes(data)
    limit = max_message_bytes(layout, kmax)
    if len(data) > limit:
        raise DecodeError(
            f"message of {len(data)} bytes is larger than any valid one for this layout ({limit})"
            + _oversize_hint(data, layout, kmax)
        )
    if len(data) < 8:
        raise DecodeError("message is truncated (shorter than its header length field)")
    (hlen,) = struct.unpack("<Q", data[:8])
    if hlen > len(data) - 8:
        raise DecodeError(f"message is truncated (header of {hlen} bytes, {len(data) - 8} present)")
    if hlen > max_header_bytes(layout):
        raise DecodeError(f"message header of {hlen} bytes is larger than any valid one ({max_header_bytes(layout)})")
    tensors = _load_tensors(data)  # safetensors checks the structure, offsets and sizes (and bounds JSON nesting)
    meta = _header(data, hlen)

    keys = set(meta)
    if keys - REQUIRED_META - OPTIONAL_META or REQUIRED_META - keys:
        raise DecodeError(
            f"message metadata keys differ from the format's (unexpected "
            f"{sorted(keys - REQUIRED_META - OPTIONAL_META)[:5]}, missing {sorted(REQUIRED_META - keys)})"
        )
    if meta["fmt"] != str(FORMAT_VERSION):
        raise DecodeError(f"message format version {meta['fmt'][:40]!r} is not supported (expected {FORMAT_VERSION})")
    if meta["rng"] != str(RNG_VERSION):
        raise DecodeError(
            f"message uses RNG contract version {meta['rng'][:40]!r}; this library implements {RNG_VERSION}"
        )
    if not _LIB.fullmatch(meta["lib"]):
        raise DecodeError(f"message lib version {meta['lib'][:60]!r} is not a version string")
    if not _FP.fullmatch(meta["fp"]) or meta["fp"] != layout.fingerprint:
        raise DecodeError("message was made for another model or block plan (layout fingerprint differs)")
    dist = meta["dist"]
    if dist not in DISTS:
        raise DecodeError(f"message has unknown dist {dist[:40]!r}")
    seed = _uint(meta, "seed", 0, 2**64 - 1)
    K = _uint(meta, "K", 1, kmax)
    bs = _uint(meta, "bs", 1, 2**40)
    if bs != layout.block_size:
        raise DecodeError(f"message block size {bs} differs from the layout's {layout.block_size}")
    nb = _uint(meta, "nb", 0, 2**40)
    if nb != layout.total_blocks:
        raise DecodeError(f"message has {nb} blocks, the layout {layout.total_blocks}")
    rnd = _uint(meta, "r", 0, MAX_ROUND)
    w = meta["w"]
    if not _FLOAT.fullmatch(w):
        raise DecodeError(f"message weight {w[:40]!r} is not a non-negative decimal number")
    try:
        weight = float(w)
    except ValueError:
        raise DecodeError(f"message weight {w!r} is not a number") from None
    if not math.isfinite(weight) or not 0 <= weight <= MAX_WEIGHT:
        raise DecodeError(f"message weight {w} must be finite and in [0, 2^53]")
    if repr(weight) != w:
        raise DecodeError(f"message weight {w!r} is not spelled canonically (expected {repr(weight)!r})")
    client = meta.get("id", "")
    if "id" in meta and not _CLIENT.fullmatch(client):
        raise DecodeError(f"message client id {client[:70]!r} is not 1-64 characters of [A-Za-z0-9._:@+-]")

    expected = {"c"} | {"f." + s.name for s in layout.full}
    extra = set(tensors) - expected - {"a"}
    missing = expected - set(tensors)
    if extra or missing:
        raise DecodeError(
            f"message tensors do not match the layout (unexpected {sorted(extra)[:5]}, missing {sorted(missing)[:5]})"
        )
    c = tensors["c"]
    wire = next((k for k, v in WIRE_DTYPES.items() if v == c.dtype), None)
    if wire is None:
        raise DecodeError(f"message tensor 'c' has dtype {c.dtype}; expected float32, bfloat16 or float16")
    for name, t in tensors.items():
        if name == "a":
            continue
        if t.dtype != c.dtype:
            raise DecodeError(
                f"message tensor {name!r} has dtype {t.dtype}, the coefficients {c.dtype} (one wire dtype per message)"
            )
        if not torch.isfinite(t).all():
            raise DecodeError(f"message tensor {name!r} has NaN or Inf values")
    if "a" in tensors:
        a = tensors["a"]
        if a.dtype != _count_dtype(K) or a.dim() != 1 or a.numel() != nb:
            raise DecodeError(
                f"active counts must be a {_count_dtype(K)} vector of {nb} blocks for K={K}, "
                f"got {a.dtype} {list(a.shape)}"
            )
        active = a.to(torch.int32)
        if nb and (int(active.min()) < 0 or int(active.max()) > K):
            raise DecodeError(f"active counts must be in [0, K={K}]")
        if bool((active == K).all()):
            raise DecodeError("message sends active counts that are all K (the canonical form omits them)")
    else:
        active = torch.full((nb,), K, dtype=torch.int32)
    if c.dim() != 1 or c.numel() != int(active.sum()):
        raise DecodeError(
            f"message has {c.numel()} coefficients ({list(c.shape)}), its active counts say {int(active.sum())}"
        )
    full = {}
    for s in layout.full:
        t = tensors["f." + s.name]
        if tuple(t.shape) != s.shape:
            raise DecodeError(f"full tensor {s.name}: shape {list(t.shape)} differs from the layout's {list(s.shape)}")
        full[s.name] = t.float()
    msg = UpdateMessage(
        layout.fingerprint, seed, dist, K, bs, active, c.float(), full, weight, rnd, client, wire, meta["lib"]
    )
    again = encode(msg)
    if again != data:
        at = next((i for i, (x, y) in enumerate(zip(again, data)) if x != y), min(len(again), len(data)))
        raise DecodeError(
            f"message is not in its canonical encoding (valid fields, but the bytes differ from their one "
            f"encoding from byte {at}: header spacing, key order, padding or a redundant form)"
        )
    return msg
