"""Server side of Ferret: validation, weighted aggregation, learning-rate schedules, clipping
and momentum in coefficient space, and the seed schemes.

- seed_scheme "shared": one seed per round for all clients; coefficients are averaged and
  reconstructed once (the broadcast is one aggregate message).
- seed_scheme "per_client": a fresh seed per client; each update is reconstructed in its
  own fused in-place pass.
- momentum (heavy ball, beta): the update applied in round t is sum_s beta^(t-s) U_s, where
  U_s is round s's aggregate. It is kept as the coefficient sets of the last
  `momentum_window` rounds and re-reconstructed, so no model-sized buffer is needed; terms
  older than the window are dropped (truncated momentum).
- clip_norm: each client's update is scaled down to at most this norm, measured on its
  coefficients (which preserve the update's norm in expectation, like a JL sketch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .compress import Compressor, _block_scale
from .message import DecodeError, UpdateMessage, decode


@dataclass
class ServerConfig:
    lr: float = 1.0
    schedule: str = "constant"      # constant | cosine | linear | step
    rounds: int = 1                 # for the cosine / linear schedules
    step_gamma: float = 0.5         # step schedule: lr * gamma^(round // step_every)
    step_every: int = 10
    momentum: float = 0.0
    momentum_window: int = 8
    clip_norm: float | None = None
    weighting: str = "examples"     # examples (message weights) | equal
    seed_scheme: str = "shared"     # shared | per_client
    base_seed: int = 0

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "linear", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.weighting not in ("examples", "equal"):
            raise ValueError(f"unknown weighting {self.weighting!r}")
        if self.seed_scheme not in ("shared", "per_client"):
            raise ValueError(f"unknown seed_scheme {self.seed_scheme!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


class FerretServer:
    def __init__(self, compressor: Compressor, config: ServerConfig):
        self.compressor = compressor
        self.config = config
        self.history: list[list[tuple[UpdateMessage, float]]] = []  # momentum window
        self.rejected: list[tuple[str, str]] = []

    def seed_for(self, round: int, client: int = 0) -> int:
        """The round's shared seed, or a client's own seed under the per-client scheme."""
        c = client if self.config.seed_scheme == "per_client" else 0
        return splitmix64(splitmix64(self.config.base_seed ^ (round << 20)) ^ c)

    def lr_at(self, round: int) -> float:
        c = self.config
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * min(round, c.rounds) / max(c.rounds, 1)))
        if c.schedule == "linear":
            return c.lr * max(0.0, 1 - round / max(c.rounds, 1))
        return c.lr * c.step_gamma ** (round // c.step_every)

    def receive(self, data: bytes, *, expected_seed: int | None = None) -> UpdateMessage | None:
        """Decode and validate one client's message; a bad one is recorded and returns None."""
        try:
            msg = decode(data, self.compressor.layout, max_bases=self.compressor.config.max_bases)
            self.compressor.check(msg)
            if expected_seed is not None and msg.seed != expected_seed:
                raise DecodeError(f"message seed {msg.seed} is not the one assigned ({expected_seed})")
            if msg.dist != self.compressor.config.dist:
                raise DecodeError(f"message dist {msg.dist} differs from the server's {self.compressor.config.dist}")
        except (DecodeError, ValueError) as e:
            self.rejected.append((getattr(e, "client", ""), str(e)))
            return None
        return msg

    def _clipped(self, msg: UpdateMessage) -> UpdateMessage:
        cn = self.config.clip_norm
        if cn is None:
            return msg
        norm = math.sqrt(float(msg.coeffs.double().square().sum()) + sum(float(t.double().square().sum()) for t in msg.full.values()))
        if norm <= cn:
            return msg
        f = cn / norm
        return UpdateMessage(msg.fingerprint, msg.seed, msg.dist, msg.num_bases, msg.block_size, msg.active,
                             msg.coeffs * f, {k: v * f for k, v in msg.full.items()}, msg.weight, msg.round,
                             msg.client, msg.wire_dtype)

    def aggregate(self, messages: list[UpdateMessage]) -> list[tuple[UpdateMessage, float]]:
        """Clipped messages with normalized weights (examples or equal)."""
        if not messages:
            return []
        w = [m.weight if self.config.weighting == "examples" else 1.0 for m in messages]
        tot = sum(w)
        if tot <= 0:
            w, tot = [1.0] * len(messages), float(len(messages))
        return [(self._clipped(m), wi / tot) for m, wi in zip(messages, w)]

    @torch.no_grad()
    def step(self, module, messages: list[UpdateMessage], round: int) -> None:
        """Apply one round: w <- w - lr_t * (U_t + beta U_{t-1} + ...), in place."""
        self.history.append(self.aggregate(messages))
        self.history = self.history[-max(1, self.config.momentum_window if self.config.momentum else 1):]
        lr = self.lr_at(round)
        beta = self.config.momentum
        for age, entry in enumerate(reversed(self.history)):
            if entry:
                self.compressor.apply(module, [m for m, _ in entry], lr=lr * beta**age, weights=[wi for _, wi in entry])

    def broadcast(self, messages: list[UpdateMessage]) -> list[UpdateMessage]:
        """What clients need to apply the round themselves: under the shared seed, one
        aggregate message (averaged coefficients); otherwise the client messages."""
        agg = self.aggregate(messages)
        if not agg or self.config.seed_scheme != "shared" or len({(m.seed, m.num_bases) for m, _ in agg}) != 1:
            return [m for m, _ in agg]
        first = agg[0][0]
        dense = sum(wi * m.dense() * _block_scale(m.active)[:, None] for m, wi in agg)
        active = torch.stack([m.active for m, _ in agg]).amax(0)
        # re-express in the message's convention (coefficients carry s_b once)
        dense = dense / torch.where(active > 0, _block_scale(active), torch.ones(1))[:, None]
        mask = torch.arange(first.num_bases)[None, :] < active[:, None].to(torch.int64)
        full = {k: sum(wi * m.full[k] for m, wi in agg) for k in first.full}
        return [UpdateMessage(first.fingerprint, first.seed, first.dist, first.num_bases, first.block_size, active,
                              dense[mask], full, 1.0, first.round, "server", first.wire_dtype)]
