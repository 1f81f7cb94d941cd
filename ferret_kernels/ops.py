"""The op surface: torch.ops.ferret.{project, reconstruct, reconstruct_, philox}.

Schemas are defined once here (and usable without the compiled library). Each public op
has one implementation that validates its arguments and forwards to the selected backend
(ferret_kernels/backends.py); the C++/CUDA kernels register the same signatures under
ferret::_cpu_* / ferret::_cuda_*, and the Triton kernels are triton_ops. Fake kernels make
the ops traceable by torch.compile, and project / reconstruct are each other's backward.
"""

from __future__ import annotations

import math

import torch

from . import backends

RNG_VERSION = 1
DISTS = ("rademacher", "uniform", "gaussian")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)

SCHEMAS = {
    "project": "(Tensor x, Tensor? y, int seed, int num_bases, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, Tensor? active=None) -> Tensor',
    "reconstruct": "(Tensor coeffs, int seed, int numel, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, ScalarType? dtype=None, Tensor? active=None) -> Tensor',
    "reconstruct_": "(Tensor(a!) out, Tensor coeffs, int seed, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, float alpha=1.0, Tensor? active=None) -> ()',
    "philox": "(Tensor counter, int seed) -> Tensor",
}

_lib = torch.library.Library("ferret", "DEF")
for _name, _sig in SCHEMAS.items():
    _lib.define(_name + _sig)
    for _prefix in ("cpu", "cuda"):
        _lib.define(f"_{_prefix}_{_name}{_sig}")
_lib.define('_cpu_isa(str name="") -> str')

_native_error: str | None = None
try:
    from . import _C  # noqa: F401  (registers the native kernels)
except ImportError as e:  # pragma: no cover - exercised when the extension is not built
    _native_error = str(e)


def native_load_error() -> str | None:
    """Why ferret_kernels._C did not load (None when it did)."""
    return _native_error


# ----------------------------------------------------------------------------- validation
def num_blocks(numel: int, block_size: int) -> int:
    return (numel + block_size - 1) // block_size


def _is_int(v) -> bool:
    return isinstance(v, (int, torch.SymInt)) and not isinstance(v, bool)


def _check_plan(numel: int, num_bases: int, block_size: int, block_offset: int, dist: str) -> None:
    if not _is_int(num_bases) or num_bases <= 0:
        raise ValueError(f"ferret: num_bases must be a positive int, got {num_bases!r}")
    if num_bases >= 2**31:
        raise ValueError(f"ferret: num_bases must be < 2^31, got {num_bases}")
    if not _is_int(block_size) or block_size <= 0:
        raise ValueError(f"ferret: block_size must be a positive int, got {block_size!r}")
    if block_size > 2**33:
        raise ValueError(f"ferret: block_size must be <= 2^33, got {block_size}")
    if block_offset < 0:
        raise ValueError(f"ferret: block_offset must be >= 0, got {block_offset}")
    if block_offset + num_blocks(numel, block_size) > 2**32:
        raise ValueError("ferret: global block indices must stay below 2^32 (block_offset + num_blocks)")
    if dist not in DISTS:
        raise ValueError(f"ferret: unknown dist {dist!r}; expected one of {', '.join(DISTS)}")


def _check_active(active, nb: int, num_bases: int, device, values: bool = True) -> None:
    if active is None:
        return
    if not isinstance(active, torch.Tensor) or active.dtype not in (torch.int32, torch.int64):
        raise TypeError(f"ferret: active must be an int32/int64 tensor, got {getattr(active, 'dtype', type(active))}")
    if active.device != device:
        raise ValueError(f"ferret: active must be on {device}, got {active.device}")
    if tuple(active.shape) != (nb,):
        raise ValueError(f"ferret: active must have shape [{nb}] (one count per block), got {list(active.shape)}")
    # the range is checked for CPU tensors only: on a GPU it would cost two device-to-host copies per
    # call (and break CUDA graph capture); the GPU kernels clamp counts to [0, num_bases] instead
    if values and nb and active.device.type == "cpu" and (int(active.min()) < 0 or int(active.max()) > num_bases):
        raise ValueError(f"ferret: active counts must be in [0, num_bases={num_bases}]")


def _check_float(t: torch.Tensor, what: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"ferret: {what} must be float32, bfloat16 or float16, got {t.dtype}")


def validate_project(x, y, num_bases, block_size, block_offset, dist, active, values=True) -> None:
    """Raises a clear error for bad project arguments; `values=False` skips data-dependent checks (fake tensors)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ferret: x must be a tensor, got {type(x).__name__}")
    _check_float(x, "x")
    if y is not None:
        if y.dtype != x.dtype:
            raise TypeError(f"ferret: y must have x's dtype {x.dtype}, got {y.dtype}")
        if y.device != x.device:
            raise ValueError(f"ferret: y must be on x's device {x.device}, got {y.device}")
        if y.numel() != x.numel():
            raise ValueError(f"ferret: y must have as many elements as x ({x.numel()}), got {y.numel()}")
    _check_plan(x.numel(), num_bases, block_size, block_offset, dist)
    _check_active(active, num_blocks(x.numel(), block_size), num_bases, x.device, values)


def validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active, values=True) -> None:
    if not isinstance(coeffs, torch.Tensor):
        raise TypeError(f"ferret: coeffs must be a tensor, got {type(coeffs).__name__}")
    _check_float(coeffs, "coeffs")
    if coeffs.dim() != 2:
        raise ValueError(f"ferret: coeffs must be 2-D [num_blocks, num_bases], got shape {list(coeffs.shape)}")
    if numel < 0:
        raise ValueError(f"ferret: numel must be >= 0, got {numel}")
    num_bases = coeffs.shape[1]
    _check_plan(numel, num_bases, block_size, block_offset, dist)
    nb = num_blocks(numel, block_size)
    if coeffs.shape[0] != nb:
        raise ValueError(
            f"ferret: coeffs must have {nb} rows (blocks of {block_size} in {numel} elements), got shape {list(coeffs.shape)}"
        )
    _check_active(active, nb, num_bases, coeffs.device, values)


# ----------------------------------------------------------------------------- implementations
@torch.library.impl(_lib, "project", "CompositeExplicitAutograd")
def _project(x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None):
    validate_project(x, y, num_bases, block_size, block_offset, dist, active)
    return backends.resolve(x.device).project(x, y, seed, num_bases, block_size, block_offset, dist, scale, active)


@torch.library.impl(_lib, "reconstruct", "CompositeExplicitAutograd")
def _reconstruct(coeffs, seed, numel, block_size, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None):
    validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active)
    _check_out_dtype(dtype)
    return backends.resolve(coeffs.device).reconstruct(
        coeffs, seed, numel, block_size, block_offset, dist, scale, dtype, active
    )


def validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active, values=True) -> None:
    _check_float(out, "out")
    if coeffs.device != out.device:
        raise ValueError(f"ferret: coeffs must be on out's device {out.device}, got {coeffs.device}")
    if not out.is_contiguous():
        raise ValueError("ferret: reconstruct_ needs a contiguous out tensor")
    validate_reconstruct(coeffs, out.numel(), block_size, block_offset, dist, active, values)


def _check_out_dtype(dtype) -> None:
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"ferret: dtype must be float32, bfloat16 or float16, got {dtype}")


@torch.library.impl(_lib, "reconstruct_", "CompositeExplicitAutograd")
def _reconstruct_(out, coeffs, seed, block_size, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None):
    validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active)
    backends.resolve(out.device).reconstruct_(out, coeffs, seed, block_size, block_offset, dist, scale, alpha, active)


@torch.library.impl(_lib, "philox", "CompositeExplicitAutograd")
def _philox(counter, seed):
    if counter.dim() != 2 or counter.shape[1] != 4:
        raise ValueError(f"ferret: counter must have shape [N, 4], got {list(counter.shape)}")
    return backends.resolve(counter.device).philox(counter, seed)


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("ferret::project")
def _project_fake(x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None):
    validate_project(x, y, num_bases, block_size, block_offset, dist, active, values=False)
    return x.new_empty((num_blocks(x.numel(), block_size), num_bases), dtype=torch.float32)


@torch.library.register_fake("ferret::reconstruct")
def _reconstruct_fake(coeffs, seed, numel, block_size, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None):
    validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active, values=False)
    _check_out_dtype(dtype)
    return coeffs.new_empty((numel,), dtype=dtype or torch.float32)


@torch.library.register_fake("ferret::reconstruct_")
def _reconstruct__fake(out, coeffs, seed, block_size, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None):
    validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active, values=False)
    return None


@torch.library.register_fake("ferret::philox")
def _philox_fake(counter, seed):
    return counter.new_empty(counter.shape, dtype=torch.int64)


for _name in SCHEMAS:
    for _prefix in ("cpu", "cuda"):
        torch.library.register_fake(f"ferret::_{_prefix}_{_name}")(
            {"project": _project_fake, "reconstruct": _reconstruct_fake, "reconstruct_": _reconstruct__fake, "philox": _philox_fake}[_name]
        )


# ----------------------------------------------------------------------------- autograd
# project and reconstruct are adjoint: d<project(x), c>/dx = reconstruct(c), and
# d<reconstruct(c), r>/dc = project(r). Each is the other's backward.
def _project_setup(ctx, inputs, output):
    x, y, seed, num_bases, block_size, block_offset, dist, scale, active = inputs
    ctx.args = (seed, x.numel(), block_size, block_offset, dist, scale)
    ctx.shape, ctx.dtype, ctx.has_y = x.shape, x.dtype, y is not None
    ctx.save_for_backward(active)


def _project_backward(ctx, grad):
    (active,) = ctx.saved_tensors
    seed, numel, block_size, block_offset, dist, scale = ctx.args
    gx = torch.ops.ferret.reconstruct(
        grad.contiguous(), seed, numel, block_size, block_offset, dist, scale, ctx.dtype, active
    ).reshape(ctx.shape)
    return gx, (-gx if ctx.has_y else None), None, None, None, None, None, None, None


def _reconstruct_setup(ctx, inputs, output):
    coeffs, seed, numel, block_size, block_offset, dist, scale, dtype, active = inputs
    ctx.args = (seed, coeffs.shape[1], block_size, block_offset, dist, scale)
    ctx.coeff_dtype = coeffs.dtype
    ctx.save_for_backward(active)


def _reconstruct_backward(ctx, grad):
    (active,) = ctx.saved_tensors
    seed, num_bases, block_size, block_offset, dist, scale = ctx.args
    gc = torch.ops.ferret.project(grad.contiguous(), None, seed, num_bases, block_size, block_offset, dist, scale, active)
    return gc.to(ctx.coeff_dtype), None, None, None, None, None, None, None, None


torch.library.register_autograd("ferret::project", _project_backward, setup_context=_project_setup)
torch.library.register_autograd("ferret::reconstruct", _reconstruct_backward, setup_context=_reconstruct_setup)


def seed_to_op(seed: int) -> int:
    """A seed in [0, 2^64) as the int64 the op schemas carry (two's complement)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"ferret: seed must be an int, got {type(seed).__name__}")
    if not 0 <= seed < 2**64:
        raise ValueError(f"ferret: seed must be in [0, 2^64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def jl_scale(num_bases: int) -> float:
    """1/sqrt(K): with it on both sides, reconstruct(project(x)) is an unbiased estimate of x."""
    return 1.0 / math.sqrt(num_bases)
