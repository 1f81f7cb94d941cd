"""Aggregation in coefficient space and heavy-ball momentum: one implementation each, used by
the codec's apply, the server and the Flower strategy.

- block_scale(active): s_b = 1/sqrt(k_b) per block (0 for a block without bases), the scale an
  update's coefficients carry once (docs/ops.md, "Scaling").
- aggregate(members): sum_i w_i * s_b(i) * dense_i over updates sharing a seed and dist, each
  zero-padded to the largest K among them (basis k of a block does not depend on K), with the
  blockwise largest active count and the weighted sum of the tensors sent in full.
- heavy_ball(history, current, beta, window): the rounds' entries applied this round, newest
  first, with their factors beta^age, and what to keep for the next round (window - 1 entries:
  the next round adds its own).
"""

from __future__ import annotations

from typing import Any

import torch


def block_scale(active: torch.Tensor) -> torch.Tensor:
    """s_b = 1/sqrt(k_b) (0 for blocks without bases), float32."""
    a = active.to(torch.float32)
    return torch.where(a > 0, a.clamp(min=1).rsqrt(), torch.zeros_like(a))


def aggregate(members: list[tuple[Any, float]]) -> tuple[torch.Tensor, torch.Tensor, dict, int]:
    """(dense scaled coefficients float32 [total_blocks, K], active int32 [total_blocks],
    name -> weighted sum of the full tensors, K) of `members` = [(UpdateMessage, weight)], all
    under one seed and dist. Added in the members' order."""
    K = max(m.num_bases for m, _ in members)
    dense = None
    for m, w in members:
        term = w * m.dense(K) * block_scale(m.active)[:, None]
        dense = term if dense is None else dense + term
    active = torch.stack([m.active.to(torch.int32) for m, _ in members]).amax(0)
    first = members[0][0]
    full = {}
    for name in first.full:
        acc = None
        for m, w in members:
            acc = w * m.full[name] if acc is None else acc + w * m.full[name]
        full[name] = acc
    return dense, active, full, K


def heavy_ball(history: list, current, beta: float, window: int) -> tuple[list[tuple[Any, float]], list]:
    """Heavy-ball momentum over the last `window` rounds (this one included): returns
    ([(entry, beta^age)] newest first, skipping empty entries; the entries to keep). With
    beta = 0 only this round's entry counts and nothing is kept."""
    if not beta or window <= 1:
        return ([(current, 1.0)] if current else []), []
    entries = (list(history) + [current])[-window:]
    terms = [(e, beta**age) for age, e in enumerate(reversed(entries)) if e]
    return terms, entries[-(window - 1) :]
