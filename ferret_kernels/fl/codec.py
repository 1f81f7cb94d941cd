"""UpdateCodec: a client's update `w_old - w_new` -> an UpdateMessage, and messages -> the model.

Projection uses the fused difference (no model-sized temporary); applying uses the in-place
op (no model-sized temporary) in each parameter's own dtype. Both take the whole model in one
call per device (project_multi / reconstruct_multi_: on a GPU one launch per dtype, not one
or two per tensor). Per block b with k_b active
bases the coefficients sent are gamma_b = s_b V_b^T delta_b with s_b = 1/sqrt(k_b), and the
reconstruction is s_b V_b gamma_b: an unbiased estimate of delta_b (docs/ops.md).

K per block is either uniform (K everywhere) or adaptive, the paper's rule: k_b proportional
to ||delta_b|| with the same total budget K x num_blocks, capped at k_max.

Contract on the server side: `check(msg)` raises ValueError for any message that does not fit
this layout and K bound (fingerprint, block plan, dist, K, counts, coefficient count, finite
values, full tensors), whether it was decoded or built in code; `apply` checks every message
and weight before its first in-place write, so a refused call leaves the model as it was.
Messages with one seed and different K are summed zero-padded to the largest K (basis k of a
block does not depend on K).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .. import project_multi, reconstruct_multi_
from ..ops import DISTS
from .aggregate import aggregate, block_scale
from .layout import ParamLayout
from .message import WIRE_DTYPES, UpdateMessage


@dataclass
class FerretConfig:
    num_bases: int = 64  # K per block (the average K when adaptive)
    block_size: int = 1 << 20
    dist: str = "rademacher"
    adaptive: bool = False  # k_b proportional to ||delta_b||
    k_max: int | None = None  # cap per block when adaptive (default 4 K)
    full_threshold: int = 0  # tensors with fewer elements travel in full
    wire_dtype: str = "float32"  # coefficients on the wire: float32, bfloat16, float16
    pack: bool = False  # blocks of one virtual vector of all projected tensors (ParamLayout pack=True)

    def __post_init__(self):
        if self.num_bases <= 0:
            raise ValueError(f"num_bases must be positive, got {self.num_bases}")
        if self.block_size <= 0:
            raise ValueError(f"block_size must be positive, got {self.block_size}")
        if self.dist not in DISTS:
            raise ValueError(f"dist must be one of {DISTS}, got {self.dist!r}")
        if self.wire_dtype not in WIRE_DTYPES:
            raise ValueError(f"wire_dtype must be one of {list(WIRE_DTYPES)}, got {self.wire_dtype!r}")
        if self.k_max is None:
            self.k_max = 4 * self.num_bases if self.adaptive else self.num_bases
        if self.k_max < self.num_bases and self.adaptive:
            raise ValueError("k_max must be >= num_bases")

    @property
    def max_bases(self) -> int:
        return self.k_max if self.adaptive else self.num_bases

    def to_fields(self) -> dict:
        """What a server tells its clients each round (Flower's ConfigRecord, FLARE's task meta)."""
        return {
            "num-bases": self.num_bases,
            "block-size": self.block_size,
            "dist": self.dist,
            "adaptive": self.adaptive,
            "full-threshold": self.full_threshold,
            "wire-dtype": self.wire_dtype,
            "pack": self.pack,
        }

    @classmethod
    def from_fields(cls, fields) -> "FerretConfig":
        """The client's side of to_fields (any mapping; "pack" absent: a server from before
        packed layouts). Values are converted and then validated by __post_init__."""
        return cls(
            num_bases=int(fields["num-bases"]),
            block_size=int(fields["block-size"]),
            dist=str(fields["dist"]),
            adaptive=bool(fields["adaptive"]),
            full_threshold=int(fields["full-threshold"]),
            wire_dtype=str(fields["wire-dtype"]),
            pack=bool(fields.get("pack", False)),
        )


def _device_groups(layout: ParamLayout, params: dict):
    """The projected tensors grouped by device (a model split over GPUs), each group with the
    global block of every row the list ops give for it (per-tensor layouts: consecutive;
    packed: a block shared by tensors appears once per tensor)."""
    groups: dict = {}
    for s in layout.projected:
        groups.setdefault(params[s.name].device, []).append(s)
    for dev, specs in groups.items():
        blocks = torch.cat([torch.arange(s.block_offset, s.block_offset + s.num_blocks) for s in specs])
        yield dev, specs, blocks


def _as_params(obj, layout: ParamLayout) -> dict:
    if isinstance(obj, torch.nn.Module):
        return layout.params(obj)
    missing = [s.name for s in layout.specs if s.name not in obj]
    if missing:
        raise KeyError(f"missing tensors {missing[:5]}")
    return obj


class UpdateCodec:
    """Ferret's update codec for one parameter layout and config: the client side encodes
    (block norms, active counts, `compress` = project w_old - w_new onto the round's bases),
    the server side validates (`check`: layout fingerprint, K, shapes, finite values) and
    applies (`apply`: reconstruct in place, weighted, in coefficient space under a shared
    seed). Named for what it does: it compresses, but it also checks and applies."""

    def __init__(self, layout: ParamLayout, config: FerretConfig):
        if layout.block_size != config.block_size:
            raise ValueError(f"layout block size {layout.block_size} != config block size {config.block_size}")
        if layout.pack != config.pack:
            raise ValueError(f"layout pack={layout.pack} != config pack={config.pack}")
        self.layout = layout
        self.config = config

    @classmethod
    def for_module(cls, module: torch.nn.Module, config: FerretConfig) -> "UpdateCodec":
        return cls(ParamLayout.from_module(module, config.block_size, config.full_threshold, config.pack), config)

    # ------------------------------------------------------------------ client side
    @torch.no_grad()
    def block_norms(self, old: dict, new: dict) -> torch.Tensor:
        """||delta_b|| of every block (float64 [total_blocks]). Squared sums are taken on the
        tensors' device a group of whole blocks at a time (at most ~4M elements: bounded
        temporaries) and copied to the host once per tensor: one copy per block before, ~6,500
        device-to-host syncs for a 7B model. Blocks shared by tensors (packed layouts) add up."""
        bs = self.layout.block_size
        sq = torch.zeros(self.layout.total_blocks, dtype=torch.float64)
        group = max(1, (1 << 22) // bs)
        for s in self.layout.projected:
            a, b = old[s.name].detach().reshape(-1), new[s.name].detach().reshape(-1)
            acc = torch.zeros(s.num_blocks, dtype=torch.float64, device=a.device)
            for j0 in range(0, s.num_blocks, group):  # local blocks j0 .. j1 - 1
                j1 = min(s.num_blocks, j0 + group)
                e0, e1 = max(0, j0 * bs - s.lead), min(s.numel, j1 * bs - s.lead)
                d = (a[e0:e1].float() - b[e0:e1].float()).double()
                front = s.lead if j0 == 0 else 0
                d = torch.nn.functional.pad(d, (front, (j1 - j0) * bs - front - d.numel()))
                acc[j0:j1] = d.view(j1 - j0, bs).square().sum(1)
            sq[s.block_offset : s.block_offset + s.num_blocks] += acc.cpu()
        return sq.sqrt()

    def active_counts(self, norms: torch.Tensor) -> torch.Tensor:
        """The paper's adaptive rule: k_b proportional to ||delta_b||, budget K x num_blocks."""
        cfg = self.config
        nb = norms.numel()
        if not cfg.adaptive:
            return torch.full((nb,), cfg.num_bases, dtype=torch.int32)
        total = norms.sum()
        if total <= 0:
            return torch.zeros(nb, dtype=torch.int32)
        k = torch.round(norms / total * (cfg.num_bases * nb)).clamp(0, cfg.k_max)
        k[(norms > 0) & (k == 0)] = 1  # every changed block gets at least one basis
        return k.to(torch.int32)

    @torch.no_grad()
    def compress(self, old, new, seed: int, *, weight: float = 1.0, round: int = 0, client: str = "") -> UpdateMessage:
        """Project `old - new` (modules or name -> tensor dicts) under `seed` into a message."""
        cfg, layout = self.config, self.layout
        old, new = _as_params(old, layout), _as_params(new, layout)
        norms = self.block_norms(old, new) if cfg.adaptive else torch.ones(layout.total_blocks, dtype=torch.float64)
        active = self.active_counts(norms)
        kop = cfg.max_bases
        dense = torch.zeros(layout.total_blocks, kop)
        for dev, specs, blocks in _device_groups(layout, old):  # a block shared by tensors (packed) sums their rows
            g = project_multi(
                [old[s.name].detach() for s in specs],
                seed,
                kop,
                cfg.block_size,
                ys=[new[s.name].detach() for s in specs],
                block_offsets=[s.block_offset for s in specs],
                starts=[s.lead for s in specs],
                dist=cfg.dist,
                active=active[blocks].to(dev),
            )
            dense.index_add_(0, blocks, g.cpu())
        full = {s.name: (old[s.name].detach().float() - new[s.name].detach().float()).cpu() for s in layout.full}
        return self.message(dense, active, full, seed, weight=weight, round=round, client=client)

    def message(
        self, dense: torch.Tensor, active: torch.Tensor, full: dict, seed: int, *, weight=1.0, round=0, client=""
    ) -> UpdateMessage:
        """The message of unscaled projections `dense` [total_blocks, max_bases] (rows past a
        block's active count ignored): each block's row scaled by 1/sqrt(k_b), the active
        entries kept, with the tensors that travel in full."""
        cfg = self.config
        dense = dense * block_scale(active)[:, None]
        mask = torch.arange(cfg.max_bases)[None, :] < active[:, None].to(torch.int64)
        return UpdateMessage(
            self.layout.fingerprint,
            seed,
            cfg.dist,
            cfg.max_bases,
            cfg.block_size,
            active,
            dense[mask],
            full,
            float(weight),
            round,
            client,
            cfg.wire_dtype,
        )

    # ------------------------------------------------------------------ server side
    def check(self, msg: UpdateMessage) -> None:
        """Raises ValueError if `msg` does not fit this codec (before anything is applied).

        Checks everything apply() relies on, so a message built in code (not decoded) is held
        to the same bounds as one that came over the wire."""
        if not isinstance(msg, UpdateMessage):
            raise ValueError(f"an update is an UpdateMessage, got {type(msg).__name__}")
        if msg.fingerprint != self.layout.fingerprint:
            raise ValueError("update was made for another model or block plan (fingerprint differs)")
        if msg.block_size != self.layout.block_size or msg.active.numel() != self.layout.total_blocks:
            raise ValueError("update block plan differs from the layout's")
        if msg.dist not in DISTS:
            raise ValueError(f"update has unknown dist {msg.dist!r}")
        if not 1 <= msg.num_bases <= self.config.max_bases:
            raise ValueError(
                f"update has K={msg.num_bases}, outside [1, {self.config.max_bases}] (this server's maximum)"
            )
        if msg.active.dim() != 1 or msg.active.dtype not in (torch.uint8, torch.int16, torch.int32, torch.int64):
            raise ValueError("update active counts must be an integer vector")
        if msg.active.numel() and (int(msg.active.min()) < 0 or int(msg.active.max()) > msg.num_bases):
            raise ValueError(f"update active counts must be in [0, K={msg.num_bases}]")
        if msg.coeffs.dim() != 1 or int(msg.active.sum()) != msg.coeffs.numel():
            raise ValueError("update coefficient count does not match its active counts")
        if not torch.isfinite(msg.coeffs).all():
            raise ValueError("update has NaN or Inf coefficients")
        if set(msg.full) != {s.name for s in self.layout.full}:
            raise ValueError("update's full tensors do not match the layout")
        for s in self.layout.full:
            t = msg.full[s.name]
            if tuple(t.shape) != s.shape or not torch.isfinite(t).all():
                raise ValueError(f"update's full tensor {s.name} has the wrong shape or NaN/Inf values")

    @torch.no_grad()
    def apply(
        self, module, messages: list[UpdateMessage], lr: float = 1.0, weights=None, *, normalize: bool = True
    ) -> None:
        """w <- w - lr * sum_c weight_c * reconstruct(update_c), in place, in each parameter's dtype.

        Messages sharing a seed and dist are aggregated in coefficient space first (zero-padded
        to the largest K among them: basis k of a block does not depend on K) and
        reconstructed once; others are reconstructed one by one (each a fused in-place pass).
        Weights default to the messages' weights; with `normalize` they are scaled to sum to
        1, otherwise used as given (a server's capped shares may sum to less). Every message
        and weight is checked before the model is touched."""
        if not messages:
            return
        for m in messages:
            self.check(m)
        params = _as_params(module, self.layout)
        w = torch.tensor(
            [m.weight for m in messages] if weights is None else [float(x) for x in weights], dtype=torch.float64
        )
        if w.numel() != len(messages) or not torch.isfinite(w).all() or (w < 0).any() or (normalize and w.sum() <= 0):
            raise ValueError("weights must be finite and non-negative, one per message, with a positive sum")
        if not math.isfinite(lr):
            raise ValueError(f"lr must be finite, got {lr}")
        if normalize:
            w = w / w.sum()
        w = w.tolist()
        groups: dict = {}
        for m, wi in zip(messages, w):
            groups.setdefault((m.seed, m.dist), []).append((m, wi))
        for (seed, dist), members in groups.items():
            agg, active, _, _ = aggregate(members)
            self.apply_coefficients(params, agg, seed, dist, active, lr)
        full = aggregate(list(zip(messages, w)))[2] if self.layout.full else {}
        for s in self.layout.full:
            p = params[s.name]
            p.copy_((p.float() - lr * full[s.name].to(p.device).view(p.shape)).to(p.dtype))

    @torch.no_grad()
    def apply_coefficients(self, params: dict, coeffs: torch.Tensor, seed: int, dist: str, active, lr: float) -> None:
        """w <- w - lr * V coeffs for already scaled, dense [total_blocks, K] coefficients."""
        bs = self.layout.block_size
        for dev, specs, blocks in _device_groups(self.layout, params):
            reconstruct_multi_(
                [params[s.name].data for s in specs],
                coeffs[blocks].to(dev),
                seed,
                bs,
                block_offsets=[s.block_offset for s in specs],
                starts=[s.lead for s in specs],
                dist=dist,
                alpha=-lr,
                active=None if active is None else active[blocks].to(dev),
            )


def fedavg_bytes(layout: ParamLayout) -> int:
    """Bytes of a full update at the parameters' own dtypes (what FedAvg uploads)."""
    return sum(s.numel * torch.tensor([], dtype=s.dtype).element_size() for s in layout.specs)


# the earlier name (ferret_kernels < 0.2); the codec also validates and applies, so it was renamed
Compressor = UpdateCodec
