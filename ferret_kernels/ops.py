"""The op surface: torch.ops.ferret.{project, reconstruct, reconstruct_, philox}.

One schema per op (csrc/ops_schema.cpp; restated in SCHEMAS for builds without the extension)
and kernels per dispatch key: the C++ CPU kernel (CPU) and the CUDA kernel (CUDA) come from
ferret_kernels._C, loaded here and nowhere else. This module adds what only Python can: fake
kernels (torch.compile, FakeTensor), autograd (project and reconstruct are each other's
backward), and a CompositeExplicitAutograd kernel for devices without a native one (Triton on
a GPU when the CUDA kernels are not built, else the pure-PyTorch reference), which is also the
whole implementation when the extension is absent. It registers the "native" and "reference"
implementations into the backend registry (backends.py); triton_kernels.py registers "triton".

Validation: the native kernels validate in C++ (binding_common.h), once; the Python validators
below, with the same rules and words, serve the fake kernels and the Triton / reference paths.
"""

from __future__ import annotations

import math
import operator

import torch

from . import backends

RNG_VERSION = 1
DISTS = ("rademacher", "uniform", "gaussian")
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
OPS = ("project", "reconstruct", "reconstruct_", "project_multi", "reconstruct_multi_", "philox")

SCHEMAS = {
    "project": "(Tensor x, Tensor? y, int seed, int num_bases, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, Tensor? active=None, int start=0) -> Tensor',
    "reconstruct": "(Tensor coeffs, int seed, int numel, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, ScalarType? dtype=None, Tensor? active=None, int start=0) -> Tensor',
    "reconstruct_": "(Tensor(a!) out, Tensor coeffs, int seed, int block_size, int block_offset=0, "
    'str dist="rademacher", float scale=1.0, float alpha=1.0, Tensor? active=None, int start=0) -> ()',
    "project_multi": "(Tensor[] xs, Tensor[] ys, int seed, int num_bases, int block_size, int[] block_offsets, "
    'str dist="rademacher", float scale=1.0, Tensor? active=None, int[] starts=[]) -> Tensor',
    "reconstruct_multi_": "(Tensor(a!)[] outs, Tensor coeffs, int seed, int block_size, int[] block_offsets, "
    'str dist="rademacher", float scale=1.0, float alpha=1.0, Tensor? active=None, int[] starts=[]) -> ()',
    "philox": "(Tensor counter, int seed) -> Tensor",
}

_native_error: str | None = None
try:
    from . import _C  # noqa: F401  (defines the ops and registers the native kernels)
except ImportError as e:  # pragma: no cover - exercised when the extension is not built
    _native_error = str(e)


def _has_kernel(op: str, key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(op, key)
    except RuntimeError:
        return False


if _native_error is None:
    _lib = torch.library.Library("ferret", "FRAGMENT")  # the schemas come from _C
else:
    _lib = torch.library.Library("ferret", "DEF")
    for _name, _sig in SCHEMAS.items():
        _lib.define(_name + _sig)

# which devices have a native kernel, read before any Python kernel is registered
NATIVE_KEYS = frozenset(k for k in ("CPU", "CUDA") if _native_error is None and _has_kernel("ferret::project", k))


def native_load_error() -> str | None:
    """Why ferret_kernels._C did not load (None when it did)."""
    return _native_error


# ----------------------------------------------------------------------------- validation
def num_blocks(numel: int, block_size: int, start: int = 0) -> int:
    """Blocks that `numel` elements from element `start` of the stream touch."""
    return (start % block_size + numel + block_size - 1) // block_size


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


def _check_start(start, numel: int, block_size: int, block_offset: int) -> None:
    if not _is_int(start) or start < 0:
        raise ValueError(f"ferret: start must be >= 0, got {start!r}")
    if block_offset + start // block_size + num_blocks(numel, block_size, start) > 2**32:
        raise ValueError("ferret: global block indices must stay below 2^32 (block_offset + num_blocks)")


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


def _check_y(x, y) -> None:
    if y is None:
        return
    if y.dtype != x.dtype:
        raise TypeError(f"ferret: y must have x's dtype {x.dtype}, got {y.dtype}")
    if y.device != x.device:
        raise ValueError(f"ferret: y must be on x's device {x.device}, got {y.device}")
    if y.numel() != x.numel():
        raise ValueError(f"ferret: y must have as many elements as x ({x.numel()}), got {y.numel()}")


def validate_project(x, y, num_bases, block_size, block_offset, dist, active, values=True, start=0) -> None:
    """Raises a clear error for bad project arguments; `values=False` skips data-dependent checks (fake tensors)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"ferret: x must be a tensor, got {type(x).__name__}")
    _check_float(x, "x")
    _check_y(x, y)
    _check_plan(x.numel(), num_bases, block_size, block_offset, dist)
    _check_start(start, x.numel(), block_size, block_offset)
    _check_active(active, num_blocks(x.numel(), block_size, start), num_bases, x.device, values)


def validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active, values=True, start=0) -> None:
    if not isinstance(coeffs, torch.Tensor):
        raise TypeError(f"ferret: coeffs must be a tensor, got {type(coeffs).__name__}")
    _check_float(coeffs, "coeffs")
    if coeffs.dim() != 2:
        raise ValueError(f"ferret: coeffs must be 2-D [num_blocks, num_bases], got shape {list(coeffs.shape)}")
    if numel < 0:
        raise ValueError(f"ferret: numel must be >= 0, got {numel}")
    num_bases = coeffs.shape[1]
    _check_plan(numel, num_bases, block_size, block_offset, dist)
    _check_start(start, numel, block_size, block_offset)
    nb = num_blocks(numel, block_size, start)
    if coeffs.shape[0] != nb:
        where = f" from element {start}" if start % block_size else ""
        raise ValueError(
            f"ferret: coeffs must have {nb} rows (blocks of {block_size} in {numel} elements{where}), "
            f"got shape {list(coeffs.shape)}"
        )
    _check_active(active, nb, num_bases, coeffs.device, values)


def validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active, values=True, start=0) -> None:
    if not isinstance(out, torch.Tensor):
        raise TypeError(f"ferret: out must be a tensor, got {type(out).__name__}")
    _check_float(out, "out")
    if coeffs.device != out.device:
        raise ValueError(f"ferret: coeffs must be on out's device {out.device}, got {coeffs.device}")
    check_inplace(out, coeffs, active)
    if not out.is_contiguous():
        raise ValueError("ferret: reconstruct_ needs a contiguous out tensor")
    check_not_inference(out, "out")
    validate_reconstruct(coeffs, out.numel(), block_size, block_offset, dist, active, values, start)


def _byte_span(t) -> tuple[int, int]:
    """The bytes [first, last + 1) t's elements occupy; (0, 0) for none or no memory (fake tensors)."""
    if not isinstance(t, torch.Tensor) or t.numel() == 0 or not _real(t):
        return 0, 0
    last = sum((n - 1) * st for n, st in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + (last + 1) * t.element_size()


def check_apart(out, out_name: str, t, name: str) -> None:
    """csrc/binding_common.h's check_apart, in the same words: an in-place update's inputs share no
    memory with what it writes (a coeffs that is a view of out gave thread-count-dependent results)."""
    a, b = _byte_span(out), _byte_span(t)
    if a[0] != a[1] and b[0] != b[1] and a[1] > b[0] and b[1] > a[0]:
        raise ValueError(
            f"ferret: {name} and {out_name} overlap in memory ({out_name} is written while {name} is read): "
            f"clone {name} first"
        )


def check_inplace(out, coeffs, active) -> None:
    """reconstruct_'s out (csrc/binding_common.h's check_inplace): no autograd for the in-place op,
    so a tensor that requires grad is updated only under no_grad; no memory shared with coeffs or
    active."""
    if out.requires_grad and torch.is_grad_enabled():
        raise ValueError("ferret: out requires grad: update it under torch.no_grad() (reconstruct_ has no autograd)")
    check_apart(out, "out", coeffs, "coeffs")
    check_apart(out, "out", active, "active")


def check_not_inference(out, what: str) -> None:
    """torch's rule for in-place ops (csrc/binding_common.h's check_not_inference, in the same
    words): an inference tensor is updated only inside torch.inference_mode()."""
    if out.is_inference() and not torch.is_inference_mode_enabled():
        raise ValueError(
            f"ferret: {what} is an inference tensor (made under torch.inference_mode()): update it inside "
            "torch.inference_mode(), or clone it first"
        )


def _check_out_dtype(dtype) -> None:
    if dtype is not None and dtype not in FLOAT_DTYPES:
        raise TypeError(f"ferret: dtype must be float32, bfloat16 or float16, got {dtype}")


def validate_philox(counter, values: bool = True) -> None:
    if counter.dtype.is_floating_point or counter.dtype.is_complex or counter.dtype == torch.bool:
        raise TypeError(f"ferret: counter must be an integer tensor, got {counter.dtype}")
    if counter.dim() != 2 or counter.shape[1] != 4:
        raise ValueError(f"ferret: counter must have shape [N, 4], got {list(counter.shape)}")
    # the range on CPU tensors (as the C++ kernel); on a GPU it would cost a device-to-host copy
    if values and counter.numel() and counter.device.type == "cpu" and _real(counter):
        # as int64: min / max are not implemented for unsigned dtypes (a uint64 past 2^63 wraps: refused)
        c = counter.to(torch.int64)
        if int(c.min()) < 0 or int(c.max()) > 0xFFFFFFFF:
            raise ValueError("ferret: counter words must be in [0, 2^32)")


def _strip(e: Exception) -> str:
    m = str(e)
    return m[len("ferret: ") :] if m.startswith("ferret: ") else m


def plan_multi(what, ts, ys, num_bases, block_size, block_offsets, starts, dist, active, values=True):
    """Checks a list call (as csrc/binding_common.h's plan_multi, in the same words) and returns
    (rows, [(first row, blocks) per tensor]): tensor i owns rows [row_i, row_i + nb_i) of the
    result / coeffs / active, nb_i = num_blocks(numel_i, block_size, starts[i])."""
    n = len(ts)
    if n == 0:
        raise ValueError(f"ferret: {what} must hold at least one tensor")
    if len(block_offsets) != n:
        raise ValueError(f"ferret: block_offsets must have one entry per tensor ({n}), got {len(block_offsets)}")
    if len(starts) not in (0, n):
        raise ValueError(f"ferret: starts must be empty or have one entry per tensor ({n}), got {len(starts)}")
    if len(ys) not in (0, n):
        raise ValueError(f"ferret: ys must be empty or have one tensor per x ({n}), got {len(ys)}")
    if dist not in DISTS:
        raise ValueError(f"ferret: unknown dist {dist!r}; expected one of {', '.join(DISTS)}")
    device = ts[0].device
    rows, spans = 0, []
    for i, t in enumerate(ts):
        try:
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"ferret: must be a tensor, got {type(t).__name__}")
            _check_float(t, "the tensor")
            if t.device != device:
                raise ValueError(f"ferret: must be on {device}, got {t.device}")
            _check_y(t, ys[i] if ys else None)
            start = starts[i] if starts else 0
            _check_plan(t.numel(), num_bases, block_size, block_offsets[i], dist)
            _check_start(start, t.numel(), block_size, block_offsets[i])
        except TypeError as e:
            raise TypeError(f"ferret: {what}[{i}]: {_strip(e)}") from None
        except ValueError as e:
            raise ValueError(f"ferret: {what}[{i}]: {_strip(e)}") from None
        nb = num_blocks(t.numel(), block_size, start)
        spans.append((rows, nb))
        rows += nb
    _check_active(active, rows, num_bases, device, values)
    return rows, spans


def check_outs(outs, coeffs, active) -> None:
    """reconstruct_multi_'s outputs: contiguous, none requiring grad in grad mode, no two sharing an
    element, none sharing memory with coeffs or active."""
    spans = []
    for i, t in enumerate(outs):
        check_apart(t, f"outs[{i}]", coeffs, "coeffs")
        check_apart(t, f"outs[{i}]", active, "active")
        if not t.is_contiguous():
            raise ValueError(f"ferret: outs[{i}]: reconstruct_multi_ needs contiguous tensors")
        check_not_inference(t, f"outs[{i}]")
        if t.requires_grad and torch.is_grad_enabled():  # before any write, not at the first one
            raise ValueError(
                f"ferret: outs[{i}] requires grad: update it under torch.no_grad() (reconstruct_multi_ has no autograd)"
            )
        first, end = _byte_span(t)
        if first != end:
            spans.append((first, end, i))
    spans.sort()
    for (_, end, a), (begin, _, b) in zip(spans, spans[1:]):
        if begin < end:
            raise ValueError(
                f"ferret: outs[{min(a, b)}] and outs[{max(a, b)}] overlap in memory (each element is updated once)"
            )


def check_multi_coeffs(coeffs, rows: int, n: int, device) -> None:
    _check_float(coeffs, "coeffs")
    if coeffs.device != device:
        raise ValueError(f"ferret: coeffs must be on the tensors' device {device}, got {coeffs.device}")
    if coeffs.dim() != 2 or coeffs.shape[0] != rows:
        raise ValueError(
            f"ferret: coeffs must have {rows} rows (the blocks of the {n} tensors), got shape {list(coeffs.shape)}"
        )


def validate_reconstruct_multi_(outs, coeffs, block_size, block_offsets, dist, active, starts, values=True):
    if not outs:
        raise ValueError("ferret: outs must hold at least one tensor")
    if not isinstance(coeffs, torch.Tensor) or coeffs.dim() != 2:
        raise ValueError(
            f"ferret: coeffs must be 2-D [num_blocks, num_bases], got shape {list(getattr(coeffs, 'shape', []))}"
        )
    rows, spans = plan_multi("outs", outs, [], coeffs.shape[1], block_size, block_offsets, starts, dist, active, values)
    check_multi_coeffs(coeffs, rows, len(outs), outs[0].device)
    check_outs(outs, coeffs, active)
    return rows, spans


def _real(t: torch.Tensor) -> bool:
    """A tensor with memory (not a fake / functional one while torch.compile traces an op)."""
    if torch.compiler.is_compiling() or t.device.type == "meta":
        return False
    from torch._subclasses.fake_tensor import is_fake

    if is_fake(t):
        return False
    try:
        t.data_ptr()
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _values(t: torch.Tensor) -> bool:
    """Data-dependent checks (active count ranges) only where they cost no device-to-host copy."""
    return t.device.type == "cpu"


def _rows(active, first, count):
    return None if active is None else active.narrow(0, first, count)


def project_from(aligned, x, y, seed, num_bases, block_size, block_offset, dist, scale, active, start):
    """project with an element offset through `aligned` (a project whose x[0] starts a block),
    as csrc/binding_common.h does it: the head (the rest of the block `start` falls in) on a
    one-block temporary padded with zeros in front, the body from the next block boundary."""
    if start % block_size == 0:
        return aligned(x, y, seed, num_bases, block_size, block_offset + start // block_size, dist, scale, active)
    n, p0, g0 = x.numel(), start % block_size, block_offset + start // block_size
    h, nb = min(n, block_size - p0), num_blocks(n, block_size, start)
    xf = x.reshape(-1)
    xb = x.new_zeros(p0 + h)
    xb[p0:] = xf[:h]
    yb = None
    if y is not None:
        yb = y.new_zeros(p0 + h)
        yb[p0:] = y.reshape(-1)[:h]
    head = aligned(xb, yb, seed, num_bases, block_size, g0, dist, scale, _rows(active, 0, 1))
    if n == h:
        return head
    body = aligned(
        xf[h:],
        None if y is None else y.reshape(-1)[h:],
        seed,
        num_bases,
        block_size,
        g0 + 1,
        dist,
        scale,
        _rows(active, 1, nb - 1),
    )
    return torch.cat([head, body])


def reconstruct_from(aligned_, out, coeffs, seed, block_size, block_offset, dist, scale, alpha, active, start):
    """reconstruct_ with an element offset through `aligned_` (an in-place reconstruct whose
    out[0] starts a block): the head on a one-block temporary holding out's first elements at
    their positions in the block, the body in place; bit-identical to the unsharded call."""
    if start % block_size == 0:
        aligned_(out, coeffs, seed, block_size, block_offset + start // block_size, dist, scale, alpha, active)
        return
    n, p0, g0 = out.numel(), start % block_size, block_offset + start // block_size
    h, nb = min(n, block_size - p0), num_blocks(n, block_size, start)
    flat = out.view(-1)  # contiguous (validated): a view of any shape's elements
    tmp = out.new_zeros(p0 + h)
    tmp[p0:] = flat[:h]
    aligned_(tmp, coeffs[:1], seed, block_size, g0, dist, scale, alpha, _rows(active, 0, 1))
    flat[:h] = tmp[p0:]
    if n > h:
        aligned_(flat[h:], coeffs[1:], seed, block_size, g0 + 1, dist, scale, alpha, _rows(active, 1, nb - 1))


class _Checked:
    """An implementation's four ops behind the Python validators, with element offsets handled
    on top of them (the Triton and reference paths)."""

    def __init__(self, name, project, reconstruct, reconstruct_, philox, project_multi=None, reconstruct_multi_=None):
        self.name, self._p, self._r, self._ri, self._ph = name, project, reconstruct, reconstruct_, philox
        self._pm, self._rm = project_multi, reconstruct_multi_  # list kernels (they validate), else loops

    def project(
        self, x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None, start=0
    ):
        validate_project(x, y, num_bases, block_size, block_offset, dist, active, _values(x), start)
        return project_from(self._p, x, y, seed, num_bases, block_size, block_offset, dist, scale, active, start)

    def reconstruct(
        self,
        coeffs,
        seed,
        numel,
        block_size,
        block_offset=0,
        dist="rademacher",
        scale=1.0,
        dtype=None,
        active=None,
        start=0,
    ):
        validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active, _values(coeffs), start)
        _check_out_dtype(dtype)
        if start % block_size == 0:
            return self._r(
                coeffs, seed, numel, block_size, block_offset + start // block_size, dist, scale, dtype, active
            )
        # head: the block `start` falls in, reconstructed whole and cut; body: from the next block boundary
        p0, g0 = start % block_size, block_offset + start // block_size
        h, nb = min(numel, block_size - p0), num_blocks(numel, block_size, start)
        head = self._r(coeffs[:1], seed, p0 + h, block_size, g0, dist, scale, dtype, _rows(active, 0, 1))[p0:]
        if numel == h:
            return head
        body = self._r(coeffs[1:], seed, numel - h, block_size, g0 + 1, dist, scale, dtype, _rows(active, 1, nb - 1))
        return torch.cat([head, body])

    def reconstruct_(
        self,
        out,
        coeffs,
        seed,
        block_size,
        block_offset=0,
        dist="rademacher",
        scale=1.0,
        alpha=1.0,
        active=None,
        start=0,
    ):
        validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active, _values(out), start)
        reconstruct_from(self._ri, out, coeffs, seed, block_size, block_offset, dist, scale, alpha, active, start)

    def project_multi(
        self, xs, ys, seed, num_bases, block_size, block_offsets, dist="rademacher", scale=1.0, active=None, starts=()
    ):
        """The list op: the implementation's list kernel, else a loop of its project (validated whole first)."""
        if self._pm is not None:
            return self._pm(xs, ys, seed, num_bases, block_size, block_offsets, dist, scale, active, starts)
        rows, spans = plan_multi(
            "xs", xs, ys, num_bases, block_size, block_offsets, starts, dist, active, _values(xs[0])
        )
        out = xs[0].new_empty((rows, num_bases), dtype=torch.float32)
        for i, (r, nb) in enumerate(spans):
            if nb:
                out[r : r + nb] = self.project(
                    xs[i],
                    ys[i] if ys else None,
                    seed,
                    num_bases,
                    block_size,
                    block_offsets[i],
                    dist,
                    scale,
                    _rows(active, r, nb),
                    starts[i] if starts else 0,
                )
        return out

    def reconstruct_multi_(
        self,
        outs,
        coeffs,
        seed,
        block_size,
        block_offsets,
        dist="rademacher",
        scale=1.0,
        alpha=1.0,
        active=None,
        starts=(),
    ):
        _, spans = validate_reconstruct_multi_(
            outs, coeffs, block_size, block_offsets, dist, active, starts, _values(coeffs)
        )
        for i, (r, nb) in enumerate(spans):
            if nb:
                self.reconstruct_(
                    outs[i],
                    coeffs[r : r + nb],
                    seed,
                    block_size,
                    block_offsets[i],
                    dist,
                    scale,
                    alpha,
                    _rows(active, r, nb),
                    starts[i] if starts else 0,
                )

    def philox(self, counter, seed):
        validate_philox(counter)
        return self._ph(counter, seed)


def checked(name, project, reconstruct, reconstruct_, philox, project_multi=None, reconstruct_multi_=None) -> _Checked:
    return _Checked(name, project, reconstruct, reconstruct_, philox, project_multi, reconstruct_multi_)


# ----------------------------------------------------------------------------- implementations
def _reference_impl():
    from . import reference as r

    return checked("reference", r.project, r.reconstruct, r.reconstruct_, r.philox)


backends.set_native(NATIVE_KEYS, _native_error)
backends.register("native", lambda: torch.ops.ferret)  # the dispatcher: native kernel of the device, else the fallback
backends.register("reference", _reference_impl)


# CompositeExplicitAutograd: runs where no native kernel is registered for the device (CPU and
# CUDA have theirs when the extension is built with them).
def _fallback_project(
    x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None, start=0
):
    return backends.fallback(x.device).project(
        x, y, seed, num_bases, block_size, block_offset, dist, scale, active, start
    )


def _fallback_reconstruct(
    coeffs, seed, numel, block_size, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None, start=0
):
    return backends.fallback(coeffs.device).reconstruct(
        coeffs, seed, numel, block_size, block_offset, dist, scale, dtype, active, start
    )


def _fallback_reconstruct_(
    out, coeffs, seed, block_size, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None, start=0
):
    backends.fallback(out.device).reconstruct_(
        out, coeffs, seed, block_size, block_offset, dist, scale, alpha, active, start
    )


def _fallback_project_multi(
    xs, ys, seed, num_bases, block_size, block_offsets, dist="rademacher", scale=1.0, active=None, starts=()
):
    return backends.fallback(xs[0].device).project_multi(
        xs, ys, seed, num_bases, block_size, block_offsets, dist, scale, active, starts
    )


def _fallback_reconstruct_multi_(
    outs, coeffs, seed, block_size, block_offsets, dist="rademacher", scale=1.0, alpha=1.0, active=None, starts=()
):
    backends.fallback(coeffs.device).reconstruct_multi_(
        outs, coeffs, seed, block_size, block_offsets, dist, scale, alpha, active, starts
    )


def _fallback_philox(counter, seed):
    return backends.fallback(counter.device).philox(counter, seed)


for _name, _fn in (
    ("project", _fallback_project),
    ("reconstruct", _fallback_reconstruct),
    ("reconstruct_", _fallback_reconstruct_),
    ("project_multi", _fallback_project_multi),
    ("reconstruct_multi_", _fallback_reconstruct_multi_),
    ("philox", _fallback_philox),
):
    _lib.impl(_name, _fn, "CompositeExplicitAutograd")


# In-place ops bump the autograd version of what they wrote, as torch's own in-place ops do, so that
# a backward through a tensor saved before the update fails instead of silently using the new
# values (the native kernels write through data_ptr, which autograd does not see). torch.library's
# custom_op registers the same kind of kernel for its mutating ops; these schemas come from C++.
def _bump_versions_after(name: str) -> None:
    op = getattr(torch.ops.ferret, name).default
    below = torch._C._after_ADInplaceOrView_keyset

    def impl(keyset, *args, **kwargs):
        result = op.redispatch(keyset & below, *args, **kwargs)
        torch.autograd.graph.increment_version(args[0] if args else kwargs[op._schema.arguments[0].name])
        return result

    _lib.impl(name, impl, "ADInplaceOrView", with_keyset=True)


_bump_versions_after("reconstruct_")
_bump_versions_after("reconstruct_multi_")


# ----------------------------------------------------------------------------- fake kernels
@torch.library.register_fake("ferret::project")
def _project_fake(
    x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None, start=0
):
    validate_project(x, y, num_bases, block_size, block_offset, dist, active, values=False, start=start)
    return x.new_empty((num_blocks(x.numel(), block_size, start), num_bases), dtype=torch.float32)


@torch.library.register_fake("ferret::reconstruct")
def _reconstruct_fake(
    coeffs, seed, numel, block_size, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None, start=0
):
    validate_reconstruct(coeffs, numel, block_size, block_offset, dist, active, values=False, start=start)
    _check_out_dtype(dtype)
    return coeffs.new_empty((numel,), dtype=dtype or torch.float32)


@torch.library.register_fake("ferret::reconstruct_")
def _reconstruct__fake(
    out, coeffs, seed, block_size, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None, start=0
):
    validate_reconstruct_(out, coeffs, block_size, block_offset, dist, active, values=False, start=start)
    return None


@torch.library.register_fake("ferret::project_multi")
def _project_multi_fake(
    xs, ys, seed, num_bases, block_size, block_offsets, dist="rademacher", scale=1.0, active=None, starts=()
):
    rows, _ = plan_multi("xs", xs, ys, num_bases, block_size, block_offsets, starts, dist, active, values=False)
    return xs[0].new_empty((rows, num_bases), dtype=torch.float32)


@torch.library.register_fake("ferret::reconstruct_multi_")
def _reconstruct_multi__fake(
    outs, coeffs, seed, block_size, block_offsets, dist="rademacher", scale=1.0, alpha=1.0, active=None, starts=()
):
    validate_reconstruct_multi_(outs, coeffs, block_size, block_offsets, dist, active, starts, values=False)
    return None


@torch.library.register_fake("ferret::philox")
def _philox_fake(counter, seed):
    validate_philox(counter, values=False)
    return counter.new_empty(counter.shape, dtype=torch.int64)


# ----------------------------------------------------------------------------- autograd
def register_adjoint_autograd(project_op: str, reconstruct_op: str) -> None:
    """project and reconstruct are adjoint: d<project(x), c>/dx = reconstruct(c) and
    d<reconstruct(c), r>/dc = project(r), so each is the other's backward (through the same
    implementation: the public ops here, the Triton ops in triton_kernels.py)."""

    def project_setup(ctx, inputs, output):
        x, y, seed, num_bases, block_size, block_offset, dist, scale, active, *start = inputs
        ctx.args = (seed, x.numel(), block_size, block_offset, dist, scale)
        ctx.start = list(start)  # the public ops take an element offset, the Triton ops do not
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.y_shape = y.shape if y is not None else None  # y needs only x's element count
        ctx.save_for_backward(active)

    def project_backward(ctx, grad):
        (active,) = ctx.saved_tensors
        seed, numel, block_size, block_offset, dist, scale = ctx.args
        rec = getattr(torch.ops.ferret, reconstruct_op.split("::")[1])
        gx = rec(
            grad.contiguous(), seed, numel, block_size, block_offset, dist, scale, ctx.dtype, active, *ctx.start
        ).reshape(ctx.shape)
        gy = None if ctx.y_shape is None else (-gx).reshape(ctx.y_shape)
        return (gx, gy, None, None, None, None, None, None, None) + (None,) * len(ctx.start)

    def reconstruct_setup(ctx, inputs, output):
        coeffs, seed, numel, block_size, block_offset, dist, scale, dtype, active, *start = inputs
        ctx.start = list(start)
        ctx.args = (seed, coeffs.shape[1], block_size, block_offset, dist, scale)
        ctx.coeff_dtype = coeffs.dtype
        ctx.save_for_backward(active)

    def reconstruct_backward(ctx, grad):
        (active,) = ctx.saved_tensors
        seed, num_bases, block_size, block_offset, dist, scale = ctx.args
        proj = getattr(torch.ops.ferret, project_op.split("::")[1])
        gc = proj(grad.contiguous(), None, seed, num_bases, block_size, block_offset, dist, scale, active, *ctx.start)
        return (gc.to(ctx.coeff_dtype), None, None, None, None, None, None, None, None) + (None,) * len(ctx.start)

    torch.library.register_autograd(project_op, project_backward, setup_context=project_setup)
    torch.library.register_autograd(reconstruct_op, reconstruct_backward, setup_context=reconstruct_setup)


register_adjoint_autograd("ferret::project", "ferret::reconstruct")


def _no_backward(ctx, grad):
    raise RuntimeError(
        "ferret: project_multi has no backward; use project per tensor for gradients "
        "(ferret_kernels.project_multi refuses inputs that require grad)"
    )


# Without this the dispatcher's fallback only warns at backward time and the inputs get no
# gradient; the list op is for federated updates, computed under no_grad.
torch.library.register_autograd("ferret::project_multi", _no_backward, setup_context=lambda ctx, inputs, output: None)


def as_int(v, what: str):
    """An int argument of the public functions as a Python int: ints, numpy / torch integer scalars
    (every backend then sees the same value; the Python paths refused numpy ints that the C++ path
    took, and a numpy block_size left project_multi's default block_offsets all 0); a float, bool
    or string is refused (int() would truncate 1.7 to 1). A SymInt (torch.compile) passes as it is."""
    if isinstance(v, torch.SymInt):
        return v
    if isinstance(v, bool) or isinstance(v, torch.Tensor) and v.dtype == torch.bool:
        raise TypeError(f"ferret: {what} must be an int, got a bool")
    try:
        return operator.index(v)
    except TypeError:
        raise TypeError(f"ferret: {what} must be an int, got {type(v).__name__}") from None


def seed_to_op(seed: int) -> int:
    """A seed in [0, 2^64) as the int64 the op schemas carry (two's complement), an int as
    as_int takes it."""
    seed = as_int(seed, "seed")
    if not 0 <= seed < 2**64:
        raise ValueError(f"ferret: seed must be in [0, 2^64), got {seed}")
    return seed - 2**64 if seed >= 2**63 else seed


def jl_scale(num_bases: int) -> float:
    """1/sqrt(K): with it on both sides, reconstruct(project(x)) is an unbiased estimate of x."""
    return 1.0 / math.sqrt(num_bases)
