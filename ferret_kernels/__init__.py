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
from .ops import DISTS, RNG_VERSION, jl_scale, native_load_error, num_blocks, seed_to_op

backends.register_lazy("triton", "ferret_kernels.triton_kernels")

__all__ = [
    "project",
    "reconstruct",
    "reconstruct_",
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
        x, y, seed_to_op(seed), num_bases, block_size, block_offset, dist, float(scale), active, start
    )


def reconstruct(
    coeffs, seed, numel, block_size, *, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None, start=0
):
    """out[j] = scale * sum_k coeffs[b, k] * v_{g,k}[j]; a flat tensor of `numel` elements in `dtype`
    (`start` as in project: coeffs has a row per block the elements touch)."""
    return _impl(coeffs.device).reconstruct(
        coeffs, seed_to_op(seed), numel, block_size, block_offset, dist, float(scale), dtype, active, start
    )


def reconstruct_(
    out, coeffs, seed, block_size, *, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None, start=0
):
    """out += alpha * reconstruct(coeffs) in place (fp32 arithmetic, stored in out's dtype); returns out."""
    _impl(out.device).reconstruct_(
        out, coeffs, seed_to_op(seed), block_size, block_offset, dist, float(scale), float(alpha), active, start
    )
    return out


def philox(counter, seed):
    """Raw Philox4x32-10 words for int64 counters [N, 4] under the 64-bit seed's key (int64 [N, 4])."""
    return _impl(counter.device).philox(counter, seed_to_op(seed))


def cpu_isa(name: str = "") -> str:
    """The CPU kernels' instruction set in use; pass a name (auto, generic, avx2, avx512) to switch."""
    if native_load_error() is not None:
        raise RuntimeError(f"ferret_kernels._C is not available: {native_load_error()}")
    return torch.ops.ferret._cpu_isa(name)
