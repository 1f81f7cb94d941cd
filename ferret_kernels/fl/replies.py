"""Checks on the records of a client's reply, whatever the FL engine carries them in (Flower's
ConfigRecord / MetricRecord: fl/flower; NVIDIA FLARE's FLModel meta / metrics: fl/nvflare):
one implementation, so both engines refuse the same things with the same words.

A reply's update record maps exactly the keys UPDATE_KEYS: "update" (bytes: the encoded
UpdateMessage, checked afterwards by FerretServer.receive), "base-round" (int: the global
round the client's copy was at) and "digest" (16 hex digits: fl.sync.model_digest of that
copy). Every value is hostile: anything else raises DecodeError saying what is wrong, in a
form safe for a log line (quote: repr, truncated).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from .message import MAX_WEIGHT, DecodeError

UPDATE_KEYS = frozenset({"update", "base-round", "digest"})
DIGEST = re.compile(r"[0-9a-f]{16}")


def quote(text, limit: int = 200) -> str:
    """A client-controlled string made safe for a log line: repr (no control characters), truncated."""
    text = str(text)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


def describe(v) -> str:
    return f"{type(v).__name__} {quote(v, 40) if isinstance(v, (str, bytes)) else repr(v)[:40]}"


def number(rec, key: str, *, lo: float = -math.inf, hi: float = math.inf) -> float | None:
    """A scalar metric, validated: absent -> None; list, bool, NaN, inf or out of range -> DecodeError.
    Python and numpy scalars count as numbers (numpy's bool does not)."""
    if key not in rec:
        return None
    v = rec[key]
    if isinstance(v, bool) or type(v).__name__ == "bool_" or not _is_number(v):
        raise DecodeError(f"metric {key!r} is {describe(v)}, expected a number")
    try:
        v = float(v)
    except OverflowError:  # an int past the float range (10**400)
        raise DecodeError(f"metric {key!r} is an integer beyond the float range") from None
    if not (math.isfinite(v) and lo <= v <= hi):
        raise DecodeError(f"metric {key!r} = {v} is not a finite number in [{lo}, {hi}]")
    return v


def _is_number(v) -> bool:
    if isinstance(v, (int, float)):
        return True
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency
        return False
    return isinstance(v, (np.integer, np.floating))


def update_bytes(rec, name: str = "ferret.update") -> bytes:
    """The update's bytes from a reply's update record `name` (a mapping with exactly UPDATE_KEYS)."""
    if not isinstance(rec, Mapping):
        raise DecodeError(f"reply has no {name!r} record (got {type(rec).__name__})")
    if set(rec) != UPDATE_KEYS:
        raise DecodeError(
            f"{name!r} must hold exactly {sorted(UPDATE_KEYS)}, got {[quote(k, 30) for k in sorted(map(str, rec))][:8]}"
        )
    data = rec["update"]
    if not isinstance(data, bytes):
        raise DecodeError(f"'update' is {describe(data)}, expected bytes")
    return data


def check_base(rec: Mapping, *, base_round: int, digest: str | None) -> None:
    """The record's base round is `base_round` and, unless `digest` is None, its digest is `digest`."""
    base, dig = rec["base-round"], rec["digest"]
    if isinstance(base, bool) or not isinstance(base, int):
        raise DecodeError(f"'base-round' is {describe(base)}, expected an integer")
    if base != base_round:
        raise DecodeError(f"update made on round {base}'s model, expected {base_round}")
    if not isinstance(dig, str) or not DIGEST.fullmatch(dig):
        raise DecodeError(f"'digest' is {describe(dig)}, expected 16 hex digits")
    if digest is not None and dig != digest:
        raise DecodeError("the node's model copy differs from the global model (digest mismatch)")


def reply_metrics(metrics) -> dict:
    """num-examples (in [0, 2^53]) and train-loss, each a finite number or None; other keys are ignored."""
    return {
        "num-examples": number(metrics, "num-examples", lo=0, hi=MAX_WEIGHT),
        "train-loss": number(metrics, "train-loss"),
    }
