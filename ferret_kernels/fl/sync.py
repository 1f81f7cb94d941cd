"""Keeping a server's global model and its sites' copies identical, whatever the FL engine
(Flower: fl/flower, NVIDIA FLARE: fl/nvflare): no import of either engine here.

Contract:
- `model_digest(module, codec)`: SHA-256 (16 hex digits) of the trainable parameters' bytes
  in layout order; two copies with one digest are bit-identical.
- `apply_updates(codec, module, updates, alphas)`: w <- w - alpha_i * reconstruct(update_i)
  for each encoded update, in order, in place; every update is decoded and checked (and
  every alpha checked finite) before the first one is applied, so a refused call leaves
  the module as it was (DecodeError says why).
- `aggregate_round(server, module, msgs, round, window)`: one round on the server: the
  validated messages are aggregated in coefficient space (FerretServer.broadcast), encoded,
  combined with the momentum window (heavy ball) and applied to `module` from those very
  bytes through `apply_updates`. Returns (entry, window): entry is [(encoded update, alpha)],
  exactly what a site must apply (with apply_updates) to follow the server bit for bit.
- the catch-up log ({round: entry}, oldest first, bounded in bytes): `missed_updates` is what
  brings a client's copy from its round to the current one (or None: send the full model),
  `trim_catchup` keeps the log within its budget.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable

import torch

from .aggregate import heavy_ball
from .codec import UpdateCodec
from .message import DecodeError, decode, encode


def model_digest(module, codec: UpdateCodec) -> str:
    """SHA-256 (first 16 hex digits) of the trainable parameters' bytes in layout order; module is
    a model or a mapping of (at least) its parameters by name (a state dict not yet loaded)."""
    h = hashlib.sha256()
    params = codec.layout.params(module) if isinstance(module, torch.nn.Module) else module
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


@torch.no_grad()
def aggregate_round(server, module: torch.nn.Module, msgs: list, round: int, window: list) -> tuple[list, list]:
    """Aggregate the round's validated UpdateMessages in coefficient space, encode what is
    applied and apply those very bytes to `module`. Returns (entry, new momentum window).

    Under the shared seed one aggregate of every accepted update (whatever its K); under
    per-client seeds each (clipped) update; each with its share, times lr_t and the
    momentum factor. No accepted update: entry holds only the momentum terms (or nothing)."""
    cfg = server.config
    lr = server.lr_at(round)
    # under DP a round releases its noised aggregate even with no accepted update (skipping the
    # release would tell whether the one sampled client's update was accepted)
    own = [(encode(b), b.weight) for b in server.broadcast(msgs, round=round)] if msgs or cfg.dp else []
    factors, window = heavy_ball(window, own, cfg.momentum, cfg.momentum_window)
    entry = [(b, lr * w * f) for e, f in factors for b, w in e]
    apply_updates(server.codec, module, [b for b, _ in entry], [a for _, a in entry])
    return entry, window


def missed_updates(catchup, have: int | None, current: int, limit: int) -> tuple[list, list, list] | None:
    """What brings a copy at round `have` to round `current` from the catch-up log (an ordered
    {round: [(encoded update, alpha)]}, oldest first): (rounds, updates, alphas) in order, or
    None when the full model must be sent instead (no copy, rounds no longer in the log, or
    more than `limit` bytes of updates)."""
    if have is None or (have < current and (not catchup or have + 1 < next(iter(catchup)))):
        return None
    rounds, updates, alphas = [], [], []
    for r, entry in catchup.items():
        if have < r <= current:
            for u, a in entry:
                rounds.append(r), updates.append(u), alphas.append(a)
    if sum(len(u) for u in updates) > limit:
        return None
    return rounds, updates, alphas


def trim_catchup(catchup, budget: int, round_of: dict, next_round: int) -> dict:
    """Drop the oldest rounds until the log holds at most `budget` bytes (a lagging client then
    gets the model: the log never holds more than its budget). Returns `round_of` (client ->
    the round its copy is at) without the clients the log can no longer bring up to date."""
    while catchup and sum(len(b) for e in catchup.values() for b, _ in e) > budget:
        catchup.popitem(last=False)
    oldest = next(iter(catchup), next_round)
    return {n: r for n, r in round_of.items() if r + 1 >= oldest}
