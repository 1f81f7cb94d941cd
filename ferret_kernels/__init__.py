"""ferret_kernels: fused projection / reconstruction on seeded random bases for Ferret.

The ops live in the dispatcher as ``torch.ops.ferret.*`` (the native kernel of the device);
the functions here are a thin keyword-friendly layer over them (seeds in [0, 2^64), defaults,
the JL scale) that also honours the backend selection (backends.py: FERRET_BACKEND,
use_backend), calling the Triton or reference implementation when asked to.
"""

from __future__ import annotations

import torch

from . import backends, ops
from ._version import __version__
from .backends import available as available_backends
from .backends import get_backend, set_backend, use_backend
from .ops import DISTS, RNG_VERSION, as_int, jl_scale, native_load_error, num_blocks, seed_to_op

backends.register_lazy("triton", "ferret_kernels.triton_kernels")

__all__ = [
    "project",
    "reconstruct",
    "reconstruct_",
    "project_multi",
    "reconstruct_multi_",
    "philox",
    "jl_scale",
    "num_blocks",
    "set_backend",
    "use_backend",
    "get_backend",
    "available_backends",
    "cpu_isa",
    "native_load_error",
    "RNG_VERSION",
    "DISTS",
    "backends",
    "ops",
    "__version__",
]


def _impl(device: torch.device):
    return backends.implementation(backends.select(device.type))


def project(
    x, seed, num_bases, block_size, *, y=None, block_offset=0, dist="rademacher", scale=1.0, active=None, start=0
):
    """gamma[b, k] = scale * sum_j v_{g,k}[j] * (x - y)[j] over block b of flat x; float32 [num_blocks, K].

    `start`: x[0] is element `start` of the global element stream (a shard, or a tensor in a
    model packed into one vector): element j is in global block block_offset + (start + j) //
    block_size, and the rows are the blocks x touches, the first and last possibly partial."""
    return _impl(x.device).project(
        x,
        y,
        seed_to_op(seed),
        as_int(num_bases, "num_bases"),
        as_int(block_size, "block_size"),
        as_int(block_offset, "block_offset"),
        dist,
        float(scale),
        active,
        as_int(start, "start"),
    )


def reconstruct(
    coeffs, seed, numel, block_size, *, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None, start=0
):
    """out[j] = scale * sum_k coeffs[b, k] * v_{g,k}[j]; a flat tensor of `numel` elements in `dtype`
    (`start` as in project: coeffs has a row per block the elements touch)."""
    return _impl(coeffs.device).reconstruct(
        coeffs,
        seed_to_op(seed),
        as_int(numel, "numel"),
        as_int(block_size, "block_size"),
        as_int(block_offset, "block_offset"),
        dist,
        float(scale),
        dtype,
        active,
        as_int(start, "start"),
    )


def reconstruct_(
    out, coeffs, seed, block_size, *, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None, start=0
):
    """out += alpha * reconstruct(coeffs) in place (fp32 arithmetic, stored in out's dtype); returns out."""
    _impl(out.device).reconstruct_(
        out,
        coeffs,
        seed_to_op(seed),
        as_int(block_size, "block_size"),
        as_int(block_offset, "block_offset"),
        dist,
        float(scale),
        float(alpha),
        active,
        as_int(start, "start"),
    )
    return out


def _ints(values, what: str) -> list[int]:
    """Per-tensor offsets as Python ints (as_int)."""
    return [as_int(v, f"{what}[{i}]") for i, v in enumerate(values)]


def _list_plan(ts, block_size, block_offsets, starts, what="xs"):
    block_size = as_int(block_size, "block_size")
    if isinstance(ts, torch.Tensor):
        raise TypeError(f"ferret: {what} must be a list of tensors, got a tensor (wrap it: [t])")
    ts = list(ts)
    if not ts:
        raise ValueError(f"ferret: {what} must hold at least one tensor")
    for i, t in enumerate(ts):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"ferret: {what}[{i}] must be a tensor, got {type(t).__name__}")
    if starts is not None and block_offsets is None:
        raise ValueError("ferret: give block_offsets with starts (where each tensor's blocks are numbered)")
    if block_offsets is None:  # one tensor after another, each from a block boundary
        block_offsets, b = [], 0
        for t in ts:
            block_offsets.append(b)
            b += num_blocks(t.numel(), block_size) if block_size > 0 else 0
    return ts, block_size, _ints(block_offsets, "block_offsets"), _ints(starts or [], "starts")


def project_multi(
    xs,
    seed,
    num_bases,
    block_size,
    *,
    ys=None,
    block_offsets=None,
    dist="rademacher",
    scale=1.0,
    active=None,
    starts=None,
):
    """project over a list of tensors in one call: float32 [rows, K], the rows of xs[0]'s blocks,
    then xs[1]'s, ... Equal bit for bit to torch.cat of project(xs[i], block_offset=block_offsets[i],
    start=starts[i], active=<its rows of active>) on the CPU and CUDA kernels; on a GPU the CUDA
    kernel makes one launch per dtype present instead of two per tensor.

    `block_offsets` (default: the tensors' blocks one after another from 0) and `starts` (default
    all 0) are per tensor; `active` has one count per row of the result. No autograd (use project)."""
    xs, block_size, offs, starts = _list_plan(xs, block_size, block_offsets, starts)
    ys = [] if ys is None else _list_plan(ys, block_size, offs, None, "ys")[0]
    if torch.is_grad_enabled() and any(t.requires_grad for t in xs + ys):
        raise ValueError(
            "ferret: project_multi has no autograd: call it under torch.no_grad(), or use project for gradients"
        )
    return _impl(xs[0].device).project_multi(
        xs, ys, seed_to_op(seed), as_int(num_bases, "num_bases"), block_size, offs, dist, float(scale), active, starts
    )


def reconstruct_multi_(
    outs,
    coeffs,
    seed,
    block_size,
    *,
    block_offsets=None,
    dist="rademacher",
    scale=1.0,
    alpha=1.0,
    active=None,
    starts=None,
):
    """outs[i] += alpha * reconstruct(<its rows of coeffs>) for every tensor of the list, in one
    call (one launch per dtype on CUDA); rows, block_offsets and starts as in project_multi. The
    outs must be contiguous and must not overlap; everything is checked before any is written.
    Returns outs."""
    outs, block_size, offs, starts = _list_plan(outs, block_size, block_offsets, starts, "outs")
    _impl(outs[0].device).reconstruct_multi_(
        outs, coeffs, seed_to_op(seed), block_size, offs, dist, float(scale), float(alpha), active, starts
    )
    return outs


def philox(counter, seed):
    """Raw Philox4x32-10 words for int64 counters [N, 4] under the 64-bit seed's key (int64 [N, 4])."""
    return _impl(counter.device).philox(counter, seed_to_op(seed))


def cpu_isa(name: str = "") -> str:
    """The CPU kernels' instruction set in use; pass a name (auto, generic, avx2, avx512) to switch."""
    if native_load_error() is not None:
        raise RuntimeError(f"ferret_kernels._C is not available: {native_load_error()}")
    return torch.ops.ferret._cpu_isa(name)
