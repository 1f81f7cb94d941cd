"""Simulated hostile clients for the harness loop and the tests: valid update messages in a
harmful direction (what no size or weight bound can refuse; docs/privacy.md).

Contract: `poison(msg, attack, scale, gen)` returns a new UpdateMessage with the same seed,
plan and metadata as the honest `msg` and finite values; the honest message is not changed.

- "sign_flip": -scale x the honest update (gradient ascent at scale x its norm);
- "scale": scale x the honest update (a boosted, same-direction update);
- "random": a Gaussian direction with scale x the honest update's norm.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from ..message import UpdateMessage

ATTACKS = ("none", "sign_flip", "scale", "random")


def poison(msg: UpdateMessage, attack: str, scale: float, gen: np.random.Generator) -> UpdateMessage:
    if attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r} (one of {ATTACKS})")
    if not math.isfinite(scale):
        raise ValueError(f"attack scale must be finite, got {scale}")
    if attack == "none":
        return msg
    if attack in ("sign_flip", "scale"):
        f = -scale if attack == "sign_flip" else scale
        return dataclasses.replace(msg, coeffs=msg.coeffs * f, full={k: v * f for k, v in msg.full.items()})
    g = torch.Generator().manual_seed(int(gen.integers(2**62)))
    coeffs = torch.randn(msg.coeffs.shape, generator=g)
    full = {k: torch.randn(v.shape, generator=g) for k, v in sorted(msg.full.items())}
    n = math.sqrt(float(coeffs.double().square().sum()) + sum(float(v.double().square().sum()) for v in full.values()))
    f = scale * msg.norm() / max(n, 1e-30)
    return dataclasses.replace(msg, coeffs=coeffs * f, full={k: v * f for k, v in full.items()})
