"""Ferret on sharded parameters (FSDP2 / DTensor, dim-0 shards): project and apply without a gather.

Contract:
- A parameter may be a DTensor on a 1-D device mesh, sharded on dim 0 (FSDP2's fully_shard,
  or ``distribute_tensor(..., [Shard(0)])``; uneven last shard as ``torch.chunk`` cuts it) or
  replicated, or a plain tensor (the whole parameter on every rank).
- :func:`project_sharded`: each rank projects its local shard with the global element
  numbering (the ops' ``start``), so its rows are partial sums of the blocks the shard
  touches; the ranks' contributions are all-gathered and added in rank order, so every rank
  gets the same coefficients, bit for bit, on every run (one collective of world x K x
  blocks floats, the size of an update). A replicated parameter is counted once (rank 0's).
- :func:`apply_sharded`: each rank reconstructs into its own shard in place (``reconstruct_``
  with the shard's element offset); every shard ends bit-identical to the matching slice of
  the unsharded apply. No parameter is gathered and no model-sized temporary is made.
- Coefficients, scales and block numbering are those of :class:`ferret_kernels.fl.UpdateCodec`
  for the same layout and config, so a sharded client's update is an ordinary update message
  and a sharded server applies ordinary messages.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .. import project_multi, reconstruct_multi_
from ..ops import num_blocks
from .layout import ParamLayout


def _dtensor_types():
    try:
        from torch.distributed.tensor import DTensor, Replicate, Shard
    except ImportError:  # pragma: no cover - torch without DTensor
        return None, None, None
    return DTensor, Replicate, Shard


def shard_extent(t: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """(this rank's elements as a flat tensor, their offset in the full flat tensor, whether this
    rank contributes them to sums: False for a replica other than rank 0's)."""
    DTensor, Replicate, Shard = _dtensor_types()
    if DTensor is None or not isinstance(t, DTensor):
        return t.reshape(-1), 0, True
    mesh = t.device_mesh
    if mesh.ndim != 1 or len(t.placements) != 1:
        raise ValueError(f"ferret: sharded parameters must live on a 1-D device mesh, got placements {t.placements}")
    pl = t.placements[0]
    local = t.to_local()
    if isinstance(pl, Replicate):
        return local.reshape(-1), 0, mesh.get_local_rank() == 0
    if not (isinstance(pl, Shard) and pl.dim == 0):
        raise ValueError(f"ferret: only dim-0 shards are supported, got {pl}")
    dim0, world, rank = t.shape[0], mesh.size(), mesh.get_local_rank()
    chunk = -(-dim0 // world)
    r0 = min(rank * chunk, dim0)
    rows = max(0, min(chunk, dim0 - r0))
    if local.shape[0] != rows:
        raise ValueError(f"ferret: rank {rank}'s shard has {local.shape[0]} rows, torch.chunk gives {rows}")
    row_numel = t.numel() // dim0 if dim0 else 0
    return local.reshape(-1), r0 * row_numel, True


def _rows_of(spec, block_size: int, start: int, numel: int) -> tuple[int, int]:
    """(first global block, number of blocks) that `numel` elements from element `start` of the
    tensor `spec` touch."""
    first = spec.block_offset + (spec.lead + start) // block_size
    return first, num_blocks(numel, block_size, spec.lead + start)


def _local_pieces(layout: ParamLayout, old: dict, new: dict):
    """For each projected tensor this rank contributes: (spec, local old, local new, element
    offset of the shard in the tensor, first global block, number of blocks)."""
    for s in layout.projected:
        a, start, mine = shard_extent(old[s.name])
        b, _, _ = shard_extent(new[s.name])
        if mine and a.numel():
            yield (s, a, b, start, *_rows_of(s, layout.block_size, start, a.numel()))


def _gather_sum(part: torch.Tensor, group) -> torch.Tensor:
    """sum over ranks of `part`, added in rank order (identical on every rank and every run)."""
    if not dist.is_initialized():
        return part
    world = dist.get_world_size(group)
    bufs = [torch.empty_like(part) for _ in range(world)]
    dist.all_gather(bufs, part.contiguous(), group=group)
    out = bufs[0].clone()
    for b in bufs[1:]:
        out += b
    return out


@torch.no_grad()
def block_sq_norms_sharded(layout: ParamLayout, old: dict, new: dict, group=None) -> torch.Tensor:
    """||delta_b||^2 of every block (float64 [total_blocks]) from sharded tensors."""
    bs = layout.block_size
    part = torch.zeros(layout.total_blocks, dtype=torch.float64)
    for s, a, b, start, first, nb in _local_pieces(layout, old, new):
        lead = (s.lead + start) % bs
        d = torch.zeros(lead + a.numel(), dtype=torch.float64, device=a.device)
        d[lead:] = a.double() - b.double()
        pad = nb * bs - d.numel()
        sq = torch.nn.functional.pad(d, (0, pad)).view(nb, bs).square().sum(1)
        part[first : first + nb] += sq.cpu()
    return _gather_sum(part, group)


@torch.no_grad()
def project_sharded(
    codec, old: dict, new: dict, seed: int, *, weight: float = 1.0, round: int = 0, client: str = "", group=None
):
    """The update message of `old - new` (name -> parameter, sharded or not) under `seed`, the
    same on every rank: what ``codec.compress`` gives for the unsharded tensors (float32
    rounding apart: a block split between ranks is summed in another order)."""

    cfg, layout = codec.config, codec.layout
    bs = layout.block_size
    if cfg.adaptive:
        norms = block_sq_norms_sharded(layout, old, new, group).sqrt()
    else:
        norms = torch.ones(layout.total_blocks, dtype=torch.float64)
    active = codec.active_counts(norms)
    kop = cfg.max_bases
    part = torch.zeros(layout.total_blocks, kop, dtype=torch.float32)
    groups: dict = {}  # this rank's pieces by device: one project_multi call each
    for piece in _local_pieces(layout, old, new):
        groups.setdefault(piece[1].device, []).append(piece)
    for dev, pieces in groups.items():
        rows = torch.cat([torch.arange(first, first + nb) for *_, first, nb in pieces])
        g = project_multi(
            [a.detach() for _, a, *_ in pieces],
            seed,
            kop,
            bs,
            ys=[b.detach() for _, _, b, *_ in pieces],
            block_offsets=[s.block_offset for s, *_ in pieces],
            starts=[s.lead + start for s, _, _, start, _, _ in pieces],
            dist=cfg.dist,
            active=active[rows].to(dev),
        )
        part.index_add_(0, rows, g.cpu())
    full = {s.name: _full_delta(old[s.name], new[s.name], group) for s in layout.full}
    return codec.message(_gather_sum(part, group), active, full, seed, weight=weight, round=round, client=client)


def _full_delta(old: torch.Tensor, new: torch.Tensor, group) -> torch.Tensor:
    """old - new of a tensor sent in full, assembled from the shards (small tensors only)."""
    DTensor, _, _ = _dtensor_types()
    if DTensor is not None and isinstance(old, DTensor):
        return (old.full_tensor().float() - new.full_tensor().float()).cpu()
    return (old.detach().float() - new.detach().float()).cpu()


@torch.no_grad()
def apply_sharded(
    layout: ParamLayout,
    params: dict,
    coeffs: torch.Tensor,
    seed: int,
    dist_name: str,
    lr: float,
    active: torch.Tensor | None = None,
) -> None:
    """w <- w - lr * V coeffs on every rank's shard, in place: coeffs are dense, already scaled
    [total_blocks, K] (what UpdateCodec.apply_coefficients takes)."""
    bs = layout.block_size
    groups: dict = {}  # this rank's shards by device: one reconstruct_multi_ call each
    for s in layout.projected:
        local, start, _ = shard_extent(params[s.name])
        if local.numel() == 0:
            continue
        if not local.is_contiguous():
            raise ValueError(f"ferret: the local shard of {s.name} is not contiguous")
        groups.setdefault(local.device, []).append((s, local, start, *_rows_of(s, bs, start, local.numel())))
    for dev, shards in groups.items():  # every shard checked above, before the first write
        rows = torch.cat([torch.arange(first, first + nb) for *_, first, nb in shards])
        reconstruct_multi_(
            [local for _, local, *_ in shards],
            coeffs[rows].to(dev),
            seed,
            bs,
            block_offsets=[s.block_offset for s, *_ in shards],
            starts=[s.lead + start for s, _, start, _, _ in shards],
            dist=dist_name,
            alpha=-lr,
            active=None if active is None else active[rows].to(torch.int32).to(dev),
        )
