"""Triton backend: the ops for GPUs (NVIDIA, AMD), and for CPU tensors under TRITON_INTERPRET=1.

Implements docs/rng.md exactly (Philox4x32-10, same key and counter layout, same value
formulas and the same float32 polynomial log / sincos as csrc/ferret/core.h). Registered
with torch.library.triton_op + wrap_triton, so torch.compile traces into the kernels.

A chunk of CHUNK consecutive elements of one block is a [ROWS, COLS] tile: COLS = 32 for
rademacher (one Philox output word per row, one bit per element), COLS = 4 for uniform
and gaussian (one Philox call per row). Offsets are int64. Values are computed where they
are produced and then spread over the tile with join + reshape: computed in the tile's own
layout instead, each Philox output would be recomputed by every thread holding a part of it
(for rademacher, 16 threads per output; sm_90 SASS of the rademacher project loop went from
14.8 to 4.9 instructions per element and basis, reconstruct from 55 to 5.4). Rademacher
signs flip the float's sign bit (exact, as x * +-1).

- project: one program per (block, chunk) loads x (- y) once and sweeps all active bases,
  writing per-chunk partial sums; a second kernel adds the partials of each block in a
  fixed order (two passes, no atomics: bit-identical from run to run). The configuration
  is fixed (a different num_warps may change tl.sum's order).
- reconstruct / reconstruct_: one program per (block, chunk) accumulates sum_k c_k v_k in
  float32 registers and writes (or adds into) the output once. Every element's result is
  independent of the launch configuration, so it is autotuned on (K, block_size, dtype).
"""

from __future__ import annotations

import contextlib
import os
from typing import Optional

import numpy as np
import torch
import triton
import triton.language as tl
from torch.library import triton_op, wrap_triton

from . import backends, ops

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Fused multiply-adds, as every GPU run so far was measured and tested with: set on each launch
# because Triton 3.10 turns the default off (3.9 warns), which would change the last bits of
# gaussian and uniform results and slow the kernels.
_FP_FUSION = True
# CUDA grid limit of the x dimension (every launch here is one-dimensional)
_MAX_GRID = 2**31 - 1


def _interpreter_compat() -> None:
    """Triton 3.6's interpreter holds a kernel's scalar arguments as 1-element arrays and turns
    them into range() bounds with int(array), which numpy >= 2.4 refuses ("only 0-dimensional
    arrays can be converted to Python scalars"); triton 3.9 squeezes first. Under the interpreter
    only, the same fix is applied to older versions (their _patch_lang_tensor, wrapped)."""
    from triton.runtime import interpreter as ti

    orig = getattr(ti, "_patch_lang_tensor", None)
    if orig is None or getattr(orig, "_ferret_compat", False):
        return

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._ferret_compat = True
    ti._patch_lang_tensor = patched


if _INTERPRET:
    _interpreter_compat()


def _wrap(kernel):
    """wrap_triton(kernel); under the interpreter, torch before 2.12 refuses the interpreter's
    kernel objects (wrap_triton only works on functions annotated with triton.jit), and there is
    nothing to trace there, so the kernel itself is launched. Under the interpreter (CI) every
    launch is also checked to pass every parameter (_EveryArgument)."""
    if _INTERPRET:
        try:
            return _EveryArgument(kernel, wrap_triton(kernel))
        except RuntimeError:
            return _EveryArgument(kernel, kernel)
    return wrap_triton(kernel)


class _EveryArgument:
    """A launcher that refuses a launch leaving out a parameter (its default would apply): torch
    2.11's inductor compiled _project_kernel, whose PAIR default was not passed, into a launch with
    one argument too few ("launcher() missing 1 required positional argument: '_grid_2'", every
    torch.compile of a Triton project on an H200, 2026-11-27), while eager launches ran. The
    autotuner's own config keys count as passed."""

    def __init__(self, kernel, launcher):
        fn = kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel
        self.name, self.params, self.launcher = fn.__name__, list(fn.arg_names), launcher
        self.tuned = {k for c in getattr(kernel, "configs", []) for k in c.kwargs}

    def __getitem__(self, grid):
        run = self.launcher[grid]

        def launch(*args, **kwargs):
            left = [p for p in self.params[len(args) :] if p not in kwargs and p not in self.tuned]
            if left:
                raise TypeError(f"ferret: {self.name} launched without {left} (pass every parameter)")
            return run(*args, **kwargs)

        return launch


def _on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it the tensor's (cuda:1 while cuda:0 is
    current would otherwise run on the wrong GPU)."""
    if t.device.type == "cuda" and t.device.index is not None:
        return torch.cuda.device(t.device.index)
    return contextlib.nullcontext()


_DIST_ID = {"rademacher": 0, "uniform": 1, "gaussian": 2}

# for jit code, the one gate of every inline PTX (NVIDIA): not under the interpreter (TRITON_INTERPRET=1,
# no PTX to run), nor with a ROCm torch, whose GPUs take AMDGCN (the AMD assembler rejects PTX:
# `and.b32` failed for gfx942); each PTX site has a Triton form (or nothing, for a hint) otherwise
_PTX_OK = tl.constexpr(not _INTERPRET and torch.version.hip is None)
PHILOX_M0 = tl.constexpr(0xD2511F53)
PHILOX_M1 = tl.constexpr(0xCD9E8D57)
PHILOX_W0 = tl.constexpr(0x9E3779B9)
PHILOX_W1 = tl.constexpr(0xBB67AE85)


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors of one shape; k0, k1 the key words (scalars)."""
    k0 = k0.to(tl.uint32)
    k1 = k1.to(tl.uint32)
    for _ in tl.static_range(10):
        a0 = c0
        a2 = c2
        c0 = tl.umulhi(a2, PHILOX_M1) ^ c1 ^ k0
        c2 = tl.umulhi(a0, PHILOX_M0) ^ c3 ^ k1
        c1 = a2 * PHILOX_M1
        c3 = a0 * PHILOX_M0
        k0 = k0 + PHILOX_W0
        k1 = k1 + PHILOX_W1
    return c0, c1, c2, c3


@triton.jit
def _uniform(x):
    # float32(s) * float32(sqrt(3) 2^-24), s = 2 (x >> 8) + 1 - 2^24 (exact), one rounding
    s = ((x >> 8) * 2).to(tl.int32) + (1 - 16777216)
    return s.to(tl.float32) * 1.0323827126512697e-07


@triton.jit
def _open_unit(x):
    return ((x >> 8).to(tl.float32) + 0.5) * 5.9604644775390625e-08


@triton.jit
def _fast_log(x):
    """cephes logf for positive normal floats, as csrc/ferret/core.h fast_logf."""
    bits = x.to(tl.uint32, bitcast=True)
    e = ((bits >> 23) & 0xFF).to(tl.int32) - 126
    m = ((bits & 0x007FFFFF) | 0x3F000000).to(tl.float32, bitcast=True)
    small = m < 0.70710678118654752440
    e = tl.where(small, e - 1, e)
    m = tl.where(small, m + m, m) - 1.0
    z = m * m
    y = 7.0376836292e-2
    y = y * m - 1.1514610310e-1
    y = y * m + 1.1676998740e-1
    y = y * m - 1.2420140846e-1
    y = y * m + 1.4249322787e-1
    y = y * m - 1.6668057665e-1
    y = y * m + 2.0000714765e-1
    y = y * m - 2.4999993993e-1
    y = y * m + 3.3333331174e-1
    y = y * m * z
    fe = e.to(tl.float32)
    y += fe * -2.12194440e-4
    y += -0.5 * z
    return m + y + fe * 0.693359375


@triton.jit
def _gaussian_pair(a, b):
    """Box-Muller on words (a, b): (r cos t, r sin t), r = sqrt(-2 ln u_a), t = 2 pi u_b."""
    r = tl.sqrt_rn(-2.0 * _fast_log(_open_unit(a)))
    u = _open_unit(b)
    qf = (u * 4.0 + 0.5).to(tl.int32)
    q = qf & 3
    t = (u - qf.to(tl.float32) * 0.25) * 6.28318530717958647692
    t2 = t * t
    s = -1.9515295891e-4
    s = s * t2 + 8.3321608736e-3
    s = s * t2 - 1.6666654611e-1
    s = s * t2 * t + t
    c = 2.443315711809948e-5
    c = c * t2 - 1.388731625493765e-3
    c = c * t2 + 4.166664568298827e-2
    c = c * t2 * t2 - 0.5 * t2 + 1.0
    swap = (q & 1) == 1
    ss = tl.where(swap, c, s)
    cc = tl.where(swap, s, c)
    ss = tl.where(q >= 2, -ss, ss)
    cc = tl.where((q == 1) | (q == 2), -cc, cc)
    return r * cc, r * ss


@triton.jit
def _rademacher_signs(ROWS: tl.constexpr, cstart, k, g, k0, k1):
    """Sign masks [ROWS, 32] (0 or 0x80000000) of basis k for the chunk at cstart: row r is
    word r of the chunk. The ROWS / 4 Philox outputs are computed once each and laid out
    word by word with join + reshape (a layout change the compiler does through shared
    memory), instead of every thread that holds a row recomputing that row's output."""
    R4: tl.constexpr = ROWS // 4
    zero = tl.zeros([R4], dtype=tl.uint32)
    w = ((cstart >> 7) + tl.arange(0, R4)).to(tl.uint32)
    r0, r1, r2, r3 = _philox(w, zero + k, zero + g, zero, k0, k1)
    words = tl.reshape(tl.join(tl.join(r0, r2), tl.join(r1, r3)), [ROWS])  # [r, m, n] -> word 2m + n of row r
    shift = (31 - tl.arange(0, 32)).to(tl.uint32)
    return (words[:, None] << shift[None, :]) & 0x80000000


@triton.jit
def _rademacher_words2(ROWS: tl.constexpr, cstart, k, g, k0, k1):
    """The sign words [ROWS] of bases k and k + 1 for the chunk at cstart (word r: the chunk's
    elements 32 r .. 32 r + 31, bit i set where the basis is -1), from one Philox tensor of ROWS / 2
    outputs. A program's ROWS / 4 outputs of one basis are fewer than its threads (CHUNK 8192, 4
    warps: 64 for 128 threads), so each was computed twice; two bases fill the threads once each.
    The Philox tensor is [output, basis]: one flat index over both (i % R4, i // R4) took 7
    instructions more in the negsum K = 4 chunk loop (sm_90, triton 3.9: 946 -> 939), the same words."""
    R4: tl.constexpr = ROWS // 4
    zero = tl.zeros([R4, 2], dtype=tl.uint32)
    w = ((cstart >> 7) + tl.arange(0, R4)).to(tl.uint32)[:, None] + zero  # [output, basis]
    r0, r1, r2, r3 = _philox(w, zero + k + tl.arange(0, 2).to(tl.uint32)[None, :], zero + g, zero, k0, k1)
    words = tl.join(tl.join(r0, r2), tl.join(r1, r3))  # [q, basis, m, n] -> word 2m + n of output q
    return tl.split(tl.reshape(tl.permute(words, (0, 2, 3, 1)), [ROWS, 2]))  # row 4q + 2m + n, basis


@triton.jit
def _rademacher_signs2(ROWS: tl.constexpr, cstart, k, g, k0, k1):
    """_rademacher_signs of bases k and k + 1 (_rademacher_words2)."""
    wa, wb = _rademacher_words2(ROWS, cstart, k, g, k0, k1)
    shift = (31 - tl.arange(0, 32)).to(tl.uint32)
    return (wa[:, None] << shift[None, :]) & 0x80000000, (wb[:, None] << shift[None, :]) & 0x80000000


@triton.jit
def _basis_tile(DIST: tl.constexpr, ROWS: tl.constexpr, cstart, k, g, k0, k1):
    """Values [ROWS, 4] of basis k of block g (uniform: DIST 1, gaussian: DIST 2) for the
    chunk starting at element cstart; rademacher goes through _rademacher_signs."""
    rows = tl.arange(0, ROWS)
    zero = tl.zeros([ROWS], dtype=tl.uint32)
    ku = zero + k  # uint32 + int32 -> uint32 (k is a Python int in the interpreter)
    gu = zero + g
    w = ((cstart >> 2) + rows).to(tl.uint32)
    r0, r1, r2, r3 = _philox(w, ku, gu, zero, k0, k1)
    if DIST == 1:
        v0 = _uniform(r0)
        v1 = _uniform(r1)
        v2 = _uniform(r2)
        v3 = _uniform(r3)
    else:
        v0, v1 = _gaussian_pair(r0, r1)
        v2, v3 = _gaussian_pair(r2, r3)
    return tl.reshape(tl.join(tl.join(v0, v2), tl.join(v1, v3)), [ROWS, 4])  # [r, m, n] -> column 2m + n


@triton.jit
def _basis_dot(DIST: tl.constexpr, ROWS: tl.constexpr, xv, cstart, k, g, k0, k1):
    """sum over the chunk of v_k * x, x a [ROWS, COLS] tile; rademacher flips x's sign bit where
    v_k = -1 (exact, as x * +-1). One reduction over the whole tile: each thread sums its own
    elements, then one shuffle tree. Summing the rows first (tl.sum(axis=1), then axis=0) cost a
    shuffle tree per row where a warp's lanes hold one column each, the layout the list kernel and
    unaligned inputs get: sm_90 rademacher loop 928 -> 298 instructions (14.5 -> 4.66 per element
    and basis, 322 -> 7 SHFL), and 314 -> 286 (4.91 -> 4.47) for aligned inputs
    (benchmarks/sass_cost.py, triton 3.9)."""
    if DIST == 0:
        sx = (xv.to(tl.uint32, bitcast=True) ^ _rademacher_signs(ROWS, cstart, k, g, k0, k1)).to(
            tl.float32, bitcast=True
        )
        d = tl.sum(sx)
    else:
        d = tl.sum(xv * _basis_tile(DIST, ROWS, cstart, k, g, k0, k1))
    return d


@triton.jit
def _rademacher_dot2(ROWS: tl.constexpr, xb, cstart, k, g, k0, k1):
    """The dots of bases k and k + 1 with x (xb: x's bits, a [ROWS, 32] tile): each the
    one-basis tile sum of _basis_dot, the signs of both from _rademacher_signs2."""
    sa, sb = _rademacher_signs2(ROWS, cstart, k, g, k0, k1)
    return tl.sum((xb ^ sa).to(tl.float32, bitcast=True)), tl.sum((xb ^ sb).to(tl.float32, bitcast=True))


# The negsum dot (_project_loop_kernel's NEGSUM; what fk.project runs there since an H200 timed it,
# _project_choice; benchmarks/tune_triton_project.py times it): a basis' dot with x as total - 2 * negsum, negsum the sum of the elements whose sign
# bit is set, added by predicated adds, as the CUDA kernels do (kernels.cuh rademacher_negsum).
# Why: the sign flip costs a shift, a logic op and an add per element and basis, two of them on
# the integer pipe, which issues at half the rate of the float adds; Triton writes no predicated
# add (tl.where + add compiles to a test, a select and an add: sm_90 K = 4 chunk loop 1289 -> 1346
# instructions), so eight of them go in inline PTX: a shift, 8 bit tests that ptxas packs into an
# R2P and a LOP3, a select of x_0 or -0.0 and 7 adds. sm_90 chunk loop at K = 4, CHUNK 8192, 4 warps,
# triton 3.9: 1289 -> 1000 instructions (5.04 -> 3.91 per element and basis), integer-pipe ones
# (LOP3, SHF, R2P) 560 -> 189; groups of 4 took 1071, all 32 bits of a word in one thread 968 but 54
# barriers (a layout change through shared memory) against 22. Starting from a select rather than
# adding x_0 to -0.0 (the same value) took 1000 -> 992 (ptxas had kept an FADD -RZ, x per x_0: 16).
# With the 32-bit chunk offsets (_chunk_input), the [output, basis] Philox tensor, one reduction per
# pair and the bf16 unpack (_to_f32): 899 (3.51 per element and basis; K = 8: 1602 -> 1520).
# Other bits than the sign flip's (other roundings): within float32 rounding of it. H200, bf16
# n = 2^28, K = 4: 0.186 ms against the sign flip's 0.225 (2026-11-27).
# (Inline PTX here is written on one line, without backslash escapes: torch 2.11's inductor pastes a
# kernel's source and its constexpr globals into a string literal without escaping backslashes, so a
# "\n" became a newline inside a string and every torch.compile of a Triton op failed to import:
# "unterminated string literal", H200, 2026-11-27; torch 2.13 escapes them.)
_NEGSUM8_PTX = tl.constexpr(
    "{ .reg .pred p<7>; .reg .b32 m; .reg .b32 t; shr.b32 t, $9, $10; "
    + "and.b32 m, t, 1; setp.ne.b32 p0, m, 0; selp.f32 $0, $1, 0f80000000, p0; "
    + "".join(
        f"and.b32 m, t, {1 << i}; setp.ne.b32 p{i % 7}, m, 0; @p{i % 7} add.rn.f32 $0, $0, ${i + 1}; "
        for i in range(1, 8)
    )
    + "}"
)


@triton.jit
def _negsum8(x0, x1, x2, x3, x4, x5, x6, x7, w, sh, PTX: tl.constexpr):
    """x_0 where bit sh of w is set, else -0.0, plus, in order i = 1 .. 7, x_i where bit sh + i is
    set (elementwise; float32 x_i, uint32 w and sh < 25). PTX (where _PTX_OK): a select and
    predicated adds in inline PTX; else the same in Triton operations (adding -0.0 changes no sum:
    the same bits), which the interpreter runs."""
    if PTX and _PTX_OK:
        return tl.inline_asm_elementwise(
            _NEGSUM8_PTX,
            "=f,f,f,f,f,f,f,f,f,r,r",
            [x0, x1, x2, x3, x4, x5, x6, x7, w, sh],
            dtype=tl.float32,
            is_pure=True,
            pack=1,
        )
    t = w >> sh
    nz = tl.full(x0.shape, 0x80000000, tl.uint32).to(tl.float32, bitcast=True)  # -0.0
    s = tl.where((t & 1) != 0, x0, nz)
    s += tl.where((t & 2) != 0, x1, nz)
    s += tl.where((t & 4) != 0, x2, nz)
    s += tl.where((t & 8) != 0, x3, nz)
    s += tl.where((t & 16) != 0, x4, nz)
    s += tl.where((t & 32) != 0, x5, nz)
    s += tl.where((t & 64) != 0, x6, nz)
    s += tl.where((t & 128) != 0, x7, nz)
    return s


@triton.jit
def _rademacher_negdot2(ROWS: tl.constexpr, xv, tot, cstart, k, g, k0, k1, PTX: tl.constexpr):
    """The dots of bases k and k + 1 with x (xv: a [ROWS, 32] float32 tile, tot: its sum) as
    tot - 2 * negsum (2 * negsum is exact: one rounding). The tile's columns go in groups of 8
    (8 j .. 8 j + 7, split out in registers: no layout change), each group's negsum by _negsum8,
    then one reduction of both bases' [ROWS, 4] group sums (joined: [ROWS * 4, 2] summed over its
    rows). A tile sum per basis took a shared-memory round trip each: sm_90 K = 4 chunk loop 939 ->
    931 instructions, 22 -> 18 barriers (triton 3.9)."""
    wa, wb = _rademacher_words2(ROWS, cstart, k, g, k0, k1)
    x8 = tl.reshape(xv, [ROWS, 4, 2, 2, 2])  # [r, j, c2, c1, c0] -> column 8 j + 4 c2 + 2 c1 + c0
    e, o = tl.split(x8)  # c0
    e0, e1 = tl.split(e)  # c1
    o0, o1 = tl.split(o)
    x0, x4 = tl.split(e0)  # c2
    x2, x6 = tl.split(e1)
    x1, x5 = tl.split(o0)
    x3, x7 = tl.split(o1)
    z = tl.zeros([ROWS, 4], dtype=tl.uint32)
    sh = (tl.arange(0, 4) * 8).to(tl.uint32)[None, :] + z
    na = _negsum8(x0, x1, x2, x3, x4, x5, x6, x7, wa[:, None] + z, sh, PTX)
    nb = _negsum8(x0, x1, x2, x3, x4, x5, x6, x7, wb[:, None] + z, sh, PTX)
    n2 = tl.sum(tl.reshape(tl.join(na, nb), [ROWS * 4, 2]), axis=0)
    d = tot - 2.0 * n2
    return tl.split(d)


_PROJECT_BASES_PER_TRIP = 2  # rademacher, _project_bases (read by benchmarks/sass_cost.py)


@triton.jit
def _project_bases(DIST: tl.constexpr, ROWS: tl.constexpr, xv, cstart, kb, g, k0, k1, row_ptr, PAIR: tl.constexpr):
    """row_ptr[k] = _basis_dot of basis k, k < kb. Rademacher goes two bases at a time
    (_rademacher_signs2; an odd kb computes one basis more and does not store it): sm_90 loop
    286 -> 505 instructions for twice the bases, 4.47 -> 3.95 per element and basis (triton 3.9,
    CHUNK 8192, 4 warps; H100, K = 64: 3.30 -> 2.80 ms). Each basis' sum is the one-basis tile
    sum: the same bits. PAIR False: one basis at a time (benchmarks/tune_triton_project.py times
    both)."""
    if DIST == 0 and PAIR:
        xb = xv.to(tl.uint32, bitcast=True)
        for p in range(0, kb // 2 + kb % 2):  # pairs counted, not k stepped by 2: k + 2 would wrap at kb = 2^31 - 1
            k = 2 * p
            da, db = _rademacher_dot2(ROWS, xb, cstart, k, g, k0, k1)
            tl.store(row_ptr + k, da)
            tl.store(row_ptr + k + 1, db, mask=k + 1 < kb)
    else:
        for k in range(0, kb):
            tl.store(row_ptr + k, _basis_dot(DIST, ROWS, xv, cstart, k, g, k0, k1))


_RECONSTRUCT_BASES_PER_TRIP = 2  # rademacher, _reconstruct_bases (read by benchmarks/sass_cost.py)


@triton.jit
def _reconstruct_bases(DIST: tl.constexpr, ROWS: tl.constexpr, acc, c_row, cstart, kb, g, k0, k1):
    """acc + sum over bases k < kb of c_row[k] * v_k, the bases added in order k = 0, 1, ...
    Rademacher goes two bases a trip (_rademacher_signs2, as _project_bases): the chunk's Philox
    outputs of one basis are fewer than the program's threads (CHUNK 8192 at 4 warps: 64 for 128;
    the list kernel's 2048: 16), so each was computed 2 (8) times. sm_90 per-basis loop, per element
    and basis (benchmarks/sass_cost.py, triton 3.9): CHUNK 8192 at 4 warps 4.36 -> 3.85, 4096 at 4
    5.31 -> 4.52, the list kernel 7.63 -> 5.56; not yet timed on a GPU (the same change to project
    measured 3.30 -> 2.80 ms at K = 64 for 4.47 -> 3.95). The same adds in the same order: the
    same bits. An odd kb's extra basis adds +-0.0 (its coefficient loads as 0), which leaves every
    accumulator as it was: one that starts at +0.0 never becomes -0.0 under round to nearest
    without flush to zero (the adds compile without .ftz; with it a negative subnormal sum would
    flush to -0.0, and + 0.0 would make it +0.0). NaN + 0 and inf + 0 keep their bits."""
    if DIST == 0:
        for p in range(0, kb // 2 + kb % 2):  # pairs counted: k + 2 would wrap at kb = 2^31 - 1
            k = 2 * p
            sa, sb = _rademacher_signs2(ROWS, cstart, k, g, k0, k1)
            ga = tl.load(c_row + k).to(tl.uint32, bitcast=True)
            gb = tl.load(c_row + k + 1, mask=k + 1 < kb, other=0.0).to(tl.uint32, bitcast=True)
            acc += (ga ^ sa).to(tl.float32, bitcast=True)
            acc += (gb ^ sb).to(tl.float32, bitcast=True)
    else:
        for k in range(0, kb):
            acc += tl.load(c_row + k) * _basis_tile(DIST, ROWS, cstart, k, g, k0, k1)
    return acc


@triton.jit
def _tile_offsets(DIST: tl.constexpr, ROWS: tl.constexpr):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    return tl.arange(0, ROWS)[:, None] * COLS + tl.arange(0, COLS)[None, :]


# two bf16 in a register ($2: the first in the low half) -> their float32 bits ($0 the first, $1 the second)
_BF16X2_PTX = tl.constexpr("shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000;")


@triton.jit
def _to_f32(v):
    """v as float32 (exact from bf16, fp16 and float32). bf16 on a GPU: each 32-bit register of two
    values (the first in the low half, as inline_asm_elementwise packs them) unpacked by a shift and
    a mask in inline PTX, where ptxas's code for the conversion takes a PRMT and a shift for the high
    one: 3 instructions a pair -> 2. sm_90, triton 3.9, K = 4 chunk loop of _project_loop_kernel:
    1243 -> 1211 instructions, the negsum candidate's 931 -> 899. The same values (the float32 of a
    bf16 is its bits shifted up 16), so the same sums. Under the interpreter the same shift in
    Triton operations: its own conversion is inexact for subnormal bf16 (0x007f gave the float32
    0x007e0000, triton 3.9), which a GPU's is not. With a ROCm torch (AMD GPUs) the shift too."""
    if v.dtype == tl.bfloat16:
        if _PTX_OK:
            return tl.inline_asm_elementwise(
                _BF16X2_PTX,
                "=r,=r,r",
                [v],
                dtype=tl.float32,
                is_pure=True,
                pack=2,
            )
        return (v.to(tl.uint16, bitcast=True).to(tl.uint32) << 16).to(tl.float32, bitcast=True)
    return v.to(tl.float32)


@triton.jit
def _chunk_place(pid, live, cpb, numel, block_size, CHUNK: tl.constexpr):
    """Where chunk pid of the one-tensor project is (cpb chunks a block): (its block's index, its
    start in the block, its first element in the data, how many elements it reads: 0 .. CHUNK, 0
    when live is False). pid < 2^32 (the host keeps grids under 2^31 programs, _check_grid; the
    pipelined kernel's ids run up to 7 past them), so the division is unsigned 32-bit: signed, the
    ids past 2^31 of the last program's dead chunks came out negative and read outside the data."""
    q = pid.to(tl.uint32)
    c = cpb.to(tl.uint32)
    b = (q // c).to(tl.int64)
    cstart = (q % c).to(tl.int64) * CHUNK
    blk_start = b * block_size
    blk_len = tl.where(live, tl.minimum(block_size, numel - blk_start), 0)
    nval = tl.minimum(tl.maximum(blk_len - cstart, 0), CHUNK).to(tl.int32)  # (max: may be < -2^31)
    return b, cstart, blk_start + cstart, nval


@triton.jit
def _chunk_input(
    x_ptr,
    y_ptr,
    act_ptr,
    pid,
    live,
    cpb,
    numel,
    block_size,
    block_offset,
    K,
    HAS_Y: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
):
    """Chunk pid of the one-tensor project (cpb chunks a block; live False: past the last chunk,
    nothing read): (x - y over the chunk as a float32 tile, zero outside the block; the chunk's
    start in its block; the block's active count, clamped to [0, K] so it never reaches past the
    row of part: counts are not checked on the host for GPU tensors; the block's index g).
    The offsets in the chunk and the mask are 32-bit, and the chunk's block and offset come from a
    32-bit division (_chunk_place): with 64-bit offsets, compares and division the K = 4 chunk loop
    of _project_loop_kernel took 1289 instructions, now 1251 (the negsum candidate's 1000 -> 954;
    sm_90, triton 3.9). The same elements are read: the same bits (the float operations and their
    layouts are unchanged in the TTGIR of every project variant)."""
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    b, cstart, at, nval = _chunk_place(pid, live, cpb, numel, block_size, CHUNK)
    j = _tile_offsets(DIST, CHUNK // COLS)
    mask = j < nval
    xv = _to_f32(tl.load(x_ptr + at + j, mask=mask, other=0.0))
    if HAS_Y:
        xv -= _to_f32(tl.load(y_ptr + at + j, mask=mask, other=0.0))
    kb = K
    if HAS_ACT:
        kb = tl.minimum(tl.maximum(tl.load(act_ptr + b, mask=live, other=0).to(tl.int32), 0), K)
    return xv, cstart, kb, (block_offset + b).to(tl.uint32)


@triton.jit
def _prefetch_range(base, q, num_chunks, cpb, numel, block_size, ELEM_BYTES: tl.constexpr, CHUNK: tl.constexpr):
    """(address, bytes) of the whole 16-byte units of chunk q of a flat input at address base (an
    int64) holding numel elements of ELEM_BYTES bytes, cpb chunks a block: what _prefetch_l2 may
    ask for (bytes 0 past the last chunk, for a chunk wholly past the data, or one holding no whole
    unit, or q < 0). The range never leaves the chunk: it is kernels.cuh's prefetch_chunk_l2 and
    prefetch_l2, with its size limit (sm_90 SASS encodes 16 bits of 16-byte units)."""
    tl.static_assert(CHUNK * ELEM_BYTES <= (1 << 20) - 16, "a chunk must fit one bulk prefetch")
    b = q // cpb
    cs = (q % cpb) * CHUNK
    ln = tl.minimum(CHUNK, tl.minimum(block_size, numel - b * block_size) - cs)
    start = base + (b * block_size + cs) * ELEM_BYTES
    a = (start + 15) & -16
    e = (start + ln * ELEM_BYTES) & -16
    return a, tl.where((q >= 0) & (q < num_chunks) & (ln > 0) & (e > a), e - a, 0)


@triton.jit
def _prefetch_l2(addr, nbytes):
    """A hint that leaves every result as it was: thread 0 of the program asks the TMA unit to bring
    nbytes bytes at addr into L2 (sm_90 cp.async.bulk.prefetch.L2, as kernels.cuh's prefetch_l2; addr
    16-byte aligned, nbytes a multiple of 16, 0 for nothing). Inline PTX with a side effect (kept
    though its result, 0, is unused): GPUs of sm_90 and later only. Where no PTX runs (_PTX_OK: the
    interpreter, AMD GPUs) it does nothing (so the kernels around it still run there)."""
    if not _PTX_OK:
        return 0
    return tl.inline_asm_elementwise(
        "{ .reg .pred p; .reg .b32 t; mov.u32 t, %tid.x; setp.eq.u32 p, t, 0; "
        "setp.ne.and.u32 p, $2, 0, p; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r",
        [addr, nbytes.to(tl.uint32)],
        dtype=tl.int32,
        is_pure=False,
        pack=1,
    )


# Runtime integers that vary from call to call (seed words, block offsets) are not specialized:
# Triton would otherwise compile a new variant when one equals 1 (made a constexpr, which the
# seed arithmetic then cannot .to()-convert: seen on an H100 with seed 1) or changes its
# divisibility by 16, 0.3-0.6 s per compile. The seed words are passed as signed 32-bit values
# (_key), so every seed runs one compiled variant.
_NO_SPEC = ("block_offset", "k0", "k1")


@triton.jit(do_not_specialize=_NO_SPEC)
def _project_kernel(
    x_ptr,
    y_ptr,
    act_ptr,
    part_ptr,
    numel,
    block_size,
    block_offset,
    K,
    k0,
    k1,
    HAS_Y: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
    PAIR: tl.constexpr = True,
):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    ROWS: tl.constexpr = CHUNK // COLS
    pid = tl.program_id(0).to(tl.int64)
    cpb = (block_size + tl.zeros([], dtype=tl.int64) + CHUNK - 1) // CHUNK  # 64-bit: block_size may be near 2^31
    xv, cstart, kb, g = _chunk_input(
        x_ptr, y_ptr, act_ptr, pid, True, cpb, numel, block_size, block_offset, K, HAS_Y, HAS_ACT, DIST, CHUNK
    )
    _project_bases(DIST, ROWS, xv, cstart, kb, g, k0, k1, part_ptr + pid * K, PAIR)


# Rademacher project at small K (K <= _LOOP_MAX_BASES), the memory-bound end: a program sums
# CHUNKS consecutive chunks, and with K a constexpr (the bases unrolled, no loop nested in the
# chunk loop) Triton software-pipelines the chunk loop: the next chunks' loads go to shared memory
# with cp.async while the current one is summed (triton 3.9, sm_90: 20 cp.async and 17 KB of
# shared memory at STAGES = 2; with the bases in a runtime loop it pipelines nothing). Inactive
# bases are computed and not stored. Each chunk's sums are the one-chunk kernel's, bit for bit
# (H100, with and without y and active counts). H100, bf16 n = 2^28, K = 4
# (results/triton_project_tune.csv, 2026-11-27): 0.2743 ms at CHUNKS 8, STAGES 3 against 0.2946
# for _project_kernel (0.65 / 0.61 of the copy bandwidth); CHUNKS 4: 0.2753, STAGES 2: 0.28-0.29.
# Shipped where it was timed: 16-bit x without y. Its staged loads take shared memory, per program
# (sm_90, triton 3.9, CHUNKS 8, STAGES 3): 33 KB for 16-bit x, 66 KB for fp32, 132 KB for fp32
# with y (one program per SM); with y it has not been timed. One compiled variant per K (a
# constexpr): at most _LOOP_MAX_BASES of them per dtype. Rademacher bases go in pairs here too
# (_rademacher_signs2; not yet timed on a GPU): sm_90 chunk loop at K = 4 1414 -> 1288
# instructions (22.1 -> 20.1 per element), K = 8 2526 -> 2282 (triton 3.9; 3.6 alike).
#
# PREFETCH (a candidate, not what fk.project runs by default; slower on an H200): before
# its loads, the program asks for the chunks of the program `ahead` on to be brought into L2
# (_prefetch_l2: one bulk prefetch a chunk, thread 0, no registers held). Why: CUDA's first pass on
# the H100 read at the pace of a read kernel with one 16-byte load in flight per thread (0.854 of
# copy) where one with four reached 0.99; Triton's is slower still. The sums are the same (the same
# bits).
#
# NEGSUM (rademacher): 0 the sign-flip dots above; 1 the negsum dots (_rademacher_negdot2, what
# fk.project runs by default), predicated adds in inline PTX; 2 the same dots in Triton operations
# (the same bits as 1: what a GPU run compares 1 with; the interpreter runs 2's form for 1).
@triton.jit(do_not_specialize=_NO_SPEC + ("num_chunks", "ahead"))
def _project_loop_kernel(
    x_ptr,
    y_ptr,
    act_ptr,
    part_ptr,
    numel,
    block_size,
    block_offset,
    k0,
    k1,
    num_chunks,
    K: tl.constexpr,
    HAS_Y: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
    CHUNKS: tl.constexpr,
    STAGES: tl.constexpr,
    ahead=0,
    PREFETCH: tl.constexpr = False,
    NEGSUM: tl.constexpr = 0,
):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    ROWS: tl.constexpr = CHUNK // COLS
    cpb = (block_size + tl.zeros([], dtype=tl.int64) + CHUNK - 1) // CHUNK
    if PREFETCH:
        ELEM: tl.constexpr = x_ptr.dtype.element_ty.primitive_bitwidth // 8
        # (sm_90 SASS, triton 3.9 and 3.6: the bulk prefetches come before the first load; making the
        # loads depend on them, through numel, stopped Triton pipelining the chunk loop)
        for i in tl.static_range(CHUNKS):
            q = (tl.program_id(0).to(tl.int64) + ahead) * CHUNKS + i
            a, nbytes = _prefetch_range(x_ptr.to(tl.int64), q, num_chunks, cpb, numel, block_size, ELEM, CHUNK)
            _prefetch_l2(a, nbytes)
            if HAS_Y:
                a, nbytes = _prefetch_range(y_ptr.to(tl.int64), q, num_chunks, cpb, numel, block_size, ELEM, CHUNK)
                _prefetch_l2(a, nbytes)
    for i in tl.range(0, CHUNKS, num_stages=STAGES):
        pid = tl.program_id(0).to(tl.int64) * CHUNKS + i
        live = pid < num_chunks
        xv, cstart, kb, g = _chunk_input(
            x_ptr, y_ptr, act_ptr, pid, live, cpb, numel, block_size, block_offset, K, HAS_Y, HAS_ACT, DIST, CHUNK
        )
        if DIST == 0 and NEGSUM > 0:  # the negsum dots: pairs of bases, an odd K's extra one not stored
            tot = tl.sum(xv)
            for k in tl.static_range(0, K, 2):
                da, db = _rademacher_negdot2(ROWS, xv, tot, cstart, k, g, k0, k1, NEGSUM == 1)
                tl.store(part_ptr + pid * K + k, da, mask=live & (kb > k))
                if k + 1 < K:
                    tl.store(part_ptr + pid * K + k + 1, db, mask=live & (kb > k + 1))
        elif DIST == 0:  # two bases at a time (_project_bases), the last one alone for an odd K
            xb = xv.to(tl.uint32, bitcast=True)
            for k in tl.static_range(0, K - 1, 2):
                da, db = _rademacher_dot2(ROWS, xb, cstart, k, g, k0, k1)
                tl.store(part_ptr + pid * K + k, da, mask=live & (kb > k))
                tl.store(part_ptr + pid * K + k + 1, db, mask=live & (kb > k + 1))
            if K % 2 == 1:
                d = _basis_dot(DIST, ROWS, xv, cstart, K - 1, g, k0, k1)
                tl.store(part_ptr + pid * K + K - 1, d, mask=live & (kb > K - 1))
        else:
            for k in tl.static_range(K):
                d = _basis_dot(DIST, ROWS, xv, cstart, k, g, k0, k1)
                tl.store(part_ptr + pid * K + k, d, mask=live & (kb > k))


_LOOP_MAX_BASES, _LOOP_CHUNKS, _LOOP_STAGES = 8, 8, 3
_PROJECT_CHOICES = ("negsum", "signflip", "negsum_prefetch[:m]", "signflip_prefetch[:m]")
_PROJECT_FORMS = ("",) + tuple(c.split("[")[0] for c in _PROJECT_CHOICES)  # "": unset


def _project_choice(device: torch.device) -> tuple[int, bool, float]:
    """FERRET_TRITON_PROJECT, read at every call: which form of the pipelined project kernel
    (rademacher 16-bit x without y, K <= 8) runs, as (NEGSUM, PREFETCH, m). Unset or "negsum" (what
    ships): the negsum dots; "signflip": the sign-flip dots that shipped before (other bits, within
    float32 rounding); "..._prefetch[:m]": each program first asks L2 for the chunks of the program
    m x the SM count on (m defaults to 4; the same bits; sm_90 or later, a no-op under the
    interpreter). Measured on an H200 (bf16, n = 2^28, K = 4, 2026-11-27): negsum 0.186 ms, sign
    flip 0.225 ms; the prefetch slowed both (0.237 / 0.252 ms). Other projects run as before, but a
    bad value raises ValueError naming it in every Triton project."""
    v = os.environ.get("FERRET_TRITON_PROJECT", "")
    name, colon, m_text = v.partition(":")
    m = 4.0
    ok = name in _PROJECT_FORMS
    prefetch = name.endswith("prefetch")
    if ok and colon:
        try:
            m = float(m_text)
        except ValueError:
            ok = False
        ok = ok and prefetch and 0 < m <= 64
    if not ok:
        raise ValueError(
            f"ferret: FERRET_TRITON_PROJECT={v!r} is not one of {', '.join(_PROJECT_CHOICES)} "
            "(m: a number in (0, 64], default 4)"
        )
    if prefetch and not _INTERPRET and torch.cuda.get_device_capability(device) < (9, 0):
        raise ValueError(
            f"ferret: FERRET_TRITON_PROJECT={v!r} needs a GPU of compute capability 9.0 or later "
            f"(bulk prefetch into L2); {device} has {torch.cuda.get_device_capability(device)}"
        )
    return int(not name.startswith("signflip")), prefetch, m


@triton.jit
def _reduce_kernel(part_ptr, out_ptr, cpb, K, scale, KT: tl.constexpr, CB: tl.constexpr):
    """out[b, k] = scale * the sum over the chunks c of block b of part[b * cpb + c, k]. Grid:
    num_blocks * ceil(K / KT), one-dimensional (a second grid dimension caps at 65535). CB chunks
    at a time as one [CB, KT] tile summed over its rows, the tiles in order: the same order on
    every launch. (One chunk at a time, a chain of cpb dependent loads and adds at a few active
    lanes: CUDA's equivalent cost 17.5 us of a 0.23 ms K = 4 project on an H100; this one is not
    yet timed on a GPU.)"""
    pid = tl.program_id(0).to(tl.int64)
    nt = (K - 1) // KT + 1  # K >= 1; K + KT - 1 would wrap int32 near 2^31
    b = pid // nt
    kk = (pid % nt) * KT + tl.arange(0, KT)
    m = kk < K
    acc = tl.zeros([KT], dtype=tl.float32)
    for c0 in range(0, cpb, CB):  # fixed order
        c = c0 + tl.arange(0, CB)
        t = tl.load(
            part_ptr + (b * cpb + c)[:, None] * K + kk[None, :], mask=(c < cpb)[:, None] & m[None, :], other=0.0
        )
        acc += tl.sum(t, axis=0)
    tl.store(out_ptr + b * K + kk, acc * scale, mask=m)


def _reduce_tiles(num_bases: int):
    """(KT, CB, tiles of KT bases) of _reduce_kernel: up to 64 bases a program, 2048-element
    tiles; its grid is num_blocks * tiles."""
    kt = min(64, triton.next_power_of_2(num_bases))
    return kt, 2048 // kt, triton.cdiv(num_bases, kt)


def _recon_configs(gpu: bool = not _INTERPRET):
    """The reconstruct kernel's autotuning configs (the interpreter runs one; tests read the GPU's)."""
    if not gpu:
        return [triton.Config({"CHUNK": 2048}, num_warps=4)]
    return [
        triton.Config({"CHUNK": c}, num_warps=w)
        for c in (1024, 2048, 4096, 8192, 16384)
        for w in (4, 8)
        if c // (32 * w) <= 64
    ]  # at most 64 fp32 accumulators per thread (more than 32: rademacher only, _recon_prune)


def _accumulators(cfg) -> int:
    return cfg.kwargs["CHUNK"] // (32 * cfg.num_warps)


def _recon_prune(configs, named_args, **kwargs):
    """The autotuner's candidates for one call.
    - Gaussian with 16 accumulators per thread at 8 warps (CHUNK 4096) spills 8 bytes on sm_80 /
      sm_90 for unaligned tensors (tests/triton_aot.py, ptxas): not a candidate there.
    - 64 accumulators per thread (CHUNK 8192 at 4 warps, 16384 at 8): rademacher only, and only
      when block_size is a multiple of 16. Its per-basis loop then takes 4.36 instructions per
      element and basis on sm_90 against 5.31 at 32 (CHUNK 4096, 4 warps; Philox and the
      reduction spread over twice the elements), 102 registers for bf16, no spills; with an odd
      block_size it takes 255 registers and spills 344 bytes (sm_90, triton 3.9; uniform and
      gaussian gain nothing and take 224 / 255 registers). Not yet timed on a GPU: the
      autotuner picks it only where it measures faster."""
    dist = kwargs.get("DIST", named_args.get("DIST"))
    block_size = named_args.get("block_size", kwargs.get("block_size"))
    wide_ok = dist == 0 and isinstance(block_size, int) and block_size % 16 == 0

    def wide(c):  # where it is a candidate: rademacher, block_size % 16 == 0, one chunk fits a block
        return wide_ok and c.kwargs["CHUNK"] <= block_size

    keep = [
        c
        for c in configs
        if not (dist == 2 and c.kwargs["CHUNK"] == 4096 and c.num_warps == 8) and (_accumulators(c) <= 32 or wide(c))
    ]
    return keep or configs


# restore_value: benchmarking configs must not accumulate into `out` more than once (a guard:
# _tune_on_scratch tunes every key on a scratch output before the caller's tensor is used)
@triton.autotune(
    configs=_recon_configs(),
    key=["K", "block_size", "DIST", "ACCUM"],
    restore_value=["out_ptr"],
    prune_configs_by={"early_config_prune": _recon_prune},
)
@triton.jit(do_not_specialize=_NO_SPEC)
def _reconstruct_kernel(
    c_ptr,
    out_ptr,
    act_ptr,
    numel,
    block_size,
    block_offset,
    K,
    k0,
    k1,
    factor,
    ACCUM: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    ROWS: tl.constexpr = CHUNK // COLS
    pid = tl.program_id(0).to(tl.int64)
    cpb = (block_size + tl.zeros([], dtype=tl.int64) + CHUNK - 1) // CHUNK  # 64-bit: block_size may be near 2^31
    b = pid // cpb
    cstart = (pid % cpb) * CHUNK
    blk_start = b * block_size
    blk_len = tl.minimum(block_size, numel - blk_start)
    kb = K
    if HAS_ACT:  # clamped to [0, K]: never past the row of coeffs
        kb = tl.minimum(tl.maximum(tl.load(act_ptr + b).to(tl.int32), 0), K)
    g = (block_offset + b).to(tl.uint32)
    acc = tl.zeros([ROWS, COLS], dtype=tl.float32)
    if cstart < blk_len:
        acc = _reconstruct_bases(DIST, ROWS, acc, c_ptr + b * K, cstart, kb, g, k0, k1)
        j = cstart + _tile_offsets(DIST, ROWS)
        mask = j < blk_len
        ptrs = out_ptr + blk_start + j
        res = acc * factor
        if ACCUM:
            res = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) + res
        tl.store(ptrs, res.to(out_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------- lists of tensors
# project_multi / reconstruct_multi_: one launch per dtype for a list of tensors. A table of int64
# rows (_SEG_FIELDS per tensor) says where each tensor's blocks are; a program finds its tensor by
# binary search over launch_row (log2 of the tensor count scalar loads) and then works exactly as
# the one-tensor kernels do on one chunk of one block, reading and writing only elements of the
# tensor (element e = j * block_size + position - lead). Every row has the same number of chunks,
# so the partial sums reduce with _reduce_kernel.
_SEG_FIELDS = 8  # launch_row, row, numel, lead, first block, x address, y address, (pad)


@triton.jit
def _find_segment(tab_ptr, S, lr):
    lo = tl.zeros([], dtype=tl.int64)
    hi = lo + S
    while hi - lo > 1:
        mid = (lo + hi) // 2
        below = tl.load(tab_ptr + mid * 8) <= lr
        lo = tl.where(below, mid, lo)
        hi = tl.where(below, hi, mid)
    return tab_ptr + lo * 8


@triton.jit
def _segment_chunk(tab_ptr, S, block_size, CHUNK: tl.constexpr):
    """This program's chunk of a list launch: (pid, its segment's table row, block j of the
    tensor, the output row, the tensor's numel and lead, the chunk's start in the block)."""
    pid = tl.program_id(0).to(tl.int64)
    cpb = (block_size + tl.zeros([], dtype=tl.int64) + CHUNK - 1) // CHUNK
    lr = pid // cpb
    seg = _find_segment(tab_ptr, S, lr)
    j = lr - tl.load(seg)
    return pid, seg, j, tl.load(seg + 1) + j, tl.load(seg + 2), tl.load(seg + 3), (pid % cpb) * CHUNK


@triton.jit
def _chunk_span(DIST: tl.constexpr, ROWS: tl.constexpr, CHUNK: tl.constexpr, j, block_size, cstart, lead, numel):
    """The chunk's elements of its tensor: (tensor element e0 of the chunk's first position, the
    tile offsets, the mask of offsets in [lo, hi)). A scalar base and int32 offsets: per-element
    64-bit addresses took 254 registers on sm_90. The bounds are clamped to [0, CHUNK] in int64
    before the int32 cast (in blocks past 2^31 elements they wrapped and read outside the tensor)."""
    e0 = j * block_size + cstart - lead
    lo = tl.minimum(tl.maximum(-e0, 0), CHUNK).to(tl.int32)
    hi = tl.maximum(tl.minimum(tl.minimum(numel - e0, block_size - cstart), CHUNK), 0).to(tl.int32)
    offs = _tile_offsets(DIST, ROWS)
    return e0, offs, (offs >= lo) & (offs < hi)


@triton.jit(do_not_specialize=("k0", "k1"))
def _project_multi_kernel(
    tab_ptr,
    S,
    act_ptr,
    part_ptr,
    block_size,
    K,
    k0,
    k1,
    XT: tl.constexpr,
    HAS_Y: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
    PAIR: tl.constexpr,
):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    ROWS: tl.constexpr = CHUNK // COLS
    pid, seg, j, row, numel, lead, cstart = _segment_chunk(tab_ptr, S, block_size, CHUNK)
    e0, offs, mask = _chunk_span(DIST, ROWS, CHUNK, j, block_size, cstart, lead, numel)
    x_ptr = tl.load(seg + 5).to(tl.pointer_type(XT)) + e0
    xv = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_Y:
        y_ptr = tl.load(seg + 6).to(tl.pointer_type(XT)) + e0
        xv -= tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    kb = K
    if HAS_ACT:  # clamped to [0, K]: never past the row of part
        kb = tl.minimum(tl.maximum(tl.load(act_ptr + row).to(tl.int32), 0), K)
    g = (tl.load(seg + 4) + j).to(tl.uint32)
    _project_bases(DIST, ROWS, xv, cstart, kb, g, k0, k1, part_ptr + pid * K, PAIR)


@triton.jit(do_not_specialize=("k0", "k1"))
def _reconstruct_multi_kernel(
    tab_ptr,
    S,
    c_ptr,
    act_ptr,
    block_size,
    K,
    k0,
    k1,
    factor,
    XT: tl.constexpr,
    HAS_ACT: tl.constexpr,
    DIST: tl.constexpr,
    CHUNK: tl.constexpr,
):
    COLS: tl.constexpr = 32 if DIST == 0 else 4
    ROWS: tl.constexpr = CHUNK // COLS
    pid, seg, j, row, numel, lead, cstart = _segment_chunk(tab_ptr, S, block_size, CHUNK)
    blo = tl.where(j == 0, lead, 0)
    bhi = tl.minimum(block_size, lead + numel - j * block_size)
    if (cstart < bhi) & (cstart + CHUNK > blo):  # else the chunk is outside the tensor
        out_ptr = tl.load(seg + 5).to(tl.pointer_type(XT))
        kb = K
        if HAS_ACT:
            kb = tl.minimum(tl.maximum(tl.load(act_ptr + row).to(tl.int32), 0), K)
        g = (tl.load(seg + 4) + j).to(tl.uint32)
        acc = _reconstruct_bases(
            DIST, ROWS, tl.zeros([ROWS, COLS], dtype=tl.float32), c_ptr + row * K, cstart, kb, g, k0, k1
        )
        e0, offs, mask = _chunk_span(DIST, ROWS, CHUNK, j, block_size, cstart, lead, numel)
        ptrs = out_ptr + e0 + offs
        res = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32) + acc * factor
        tl.store(ptrs, res.to(XT), mask=mask)


@triton.jit(do_not_specialize=("k0", "k1"))
def _philox_kernel(c_ptr, o_ptr, n, k0, k1, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    m = i < n
    c0 = tl.load(c_ptr + 4 * i, mask=m, other=0).to(tl.uint32)
    c1 = tl.load(c_ptr + 4 * i + 1, mask=m, other=0).to(tl.uint32)
    c2 = tl.load(c_ptr + 4 * i + 2, mask=m, other=0).to(tl.uint32)
    c3 = tl.load(c_ptr + 4 * i + 3, mask=m, other=0).to(tl.uint32)
    r0, r1, r2, r3 = _philox(c0, c1, c2, c3, k0, k1)
    tl.store(o_ptr + 4 * i, r0.to(tl.int64), mask=m)
    tl.store(o_ptr + 4 * i + 1, r1.to(tl.int64), mask=m)
    tl.store(o_ptr + 4 * i + 2, r2.to(tl.int64), mask=m)
    tl.store(o_ptr + 4 * i + 3, r3.to(tl.int64), mask=m)


def _aot_signatures(dtype: str, ints: str = "i64") -> dict:
    """Triton types of the project and reconstruct kernels' runtime arguments, kept beside the
    kernels for the ahead-of-time compiles of tests/triton_aot.py and benchmarks/sass_cost.py:
    `dtype` is the element type of x / y / out ("fp32", "bf16", "fp16"), `ints` the type the
    launcher's Python ints get ("i32" when small, "i64"). The list kernels read their tensors'
    addresses and sizes from an int64 table, so their signatures hold no dtype (it is XT). The
    pipelined project (project_loop) takes K as a constexpr, and the chunk count and the prefetch
    distance (m x the SM count: a Python int below 2^31)."""
    project = {
        "x_ptr": f"*{dtype}",
        "y_ptr": f"*{dtype}",
        "act_ptr": "*i32",
        "part_ptr": "*fp32",
        "numel": ints,
        "block_size": ints,
        "block_offset": ints,
        "K": "i32",
        "k0": "i32",
        "k1": "i32",
    }
    loop = {k: v for k, v in project.items() if k != "K"}
    loop.update(num_chunks="i64", ahead="i32")
    table = {
        "tab_ptr": "*i64",
        "S": "i32",
        "act_ptr": "*i32",
        "block_size": "i64",
        "K": "i32",
        "k0": "i32",
        "k1": "i32",
    }
    return {
        "project_multi": dict(table, part_ptr="*fp32"),
        "reconstruct_multi": dict(table, c_ptr="*fp32", factor="fp32"),
        "project": project,
        "project_loop": loop,
        "reconstruct": {
            "c_ptr": "*fp32",
            "out_ptr": f"*{dtype}",
            "act_ptr": "*i32",
            "numel": ints,
            "block_size": ints,
            "block_offset": ints,
            "K": "i32",
            "k0": "i32",
            "k1": "i32",
            "factor": "fp32",
        },
    }


def _key(seed: int):
    """The seed's two key words as signed 32-bit ints (always Triton type i32, one compiled
    variant for every seed); the kernels reinterpret them as uint32."""
    s = int(seed) & 0xFFFFFFFFFFFFFFFF
    return tuple(w - (1 << 32) if w >= 1 << 31 else w for w in (s & 0xFFFFFFFF, s >> 32))


def _project_chunk(block_size: int, dist: str) -> int:
    """Elements per program: fixed per shape (determinism), smaller for small blocks. With 4
    warps, rademacher takes 64 elements per thread, which amortizes the per-basis Philox
    output and CTA reduction over more elements (sm_90 SASS, rows summed then columns: 4.9
    instructions per element and basis against 9.2 at 2048; 4.47 since the whole-tile sum); the
    others stay at 16 (their cost is per element)."""
    return max(128, min(8192 if dist == "rademacher" else 2048, triton.next_power_of_2(block_size)))


def _check_grid(programs: int, what: str) -> None:
    if programs > _MAX_GRID:
        raise ValueError(
            f"ferret: the Triton launch needs {programs} programs ({what}), over the GPU's limit of "
            f"2^31 - 1; use a larger block_size"
        )


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """t, or an aligned copy of it when its pointer is not 16-byte aligned (a view at an odd
    offset). Triton specializes kernels on pointer alignment: an unaligned pointer gets a
    variant with narrower loads and so another reduction order, and the last bits of a
    projection would depend on where the data sits (seen on an H100, 2026-11-26). One copy for
    such views only (the allocator's tensors are 256-byte aligned) keeps results a function of
    the data, as in the CUDA kernels."""
    return t if not _real(t) or t.data_ptr() % 16 == 0 else t.clone()


_real = ops._real


def _active32(active, num_bases):
    """Counts as int32 for the kernels (which clamp them to [0, K]); int64 counts are clamped to
    [-1, K + 1] first so that 2^32 + 2 cannot wrap to 2."""
    if active is None:
        return None
    if active.dtype == torch.int64:
        active = active.clamp(-1, num_bases + 1)
    return active.to(torch.int32).contiguous()


@triton_op("ferret::_triton_project", mutates_args=())
def project(
    x: torch.Tensor,
    y: Optional[torch.Tensor],
    seed: int,
    num_bases: int,
    block_size: int,
    block_offset: int,
    dist: str,
    scale: float,
    active: Optional[torch.Tensor],
) -> torch.Tensor:
    n = x.numel()
    nb = (n + block_size - 1) // block_size
    if nb == 0:
        return torch.zeros(nb, num_bases, device=x.device, dtype=torch.float32)
    chunk = _project_chunk(block_size, dist)
    cpb = (block_size + chunk - 1) // chunk
    kt, cb, nt = _reduce_tiles(num_bases)
    _check_grid(nb * cpb, f"{nb} blocks x {cpb} chunks of {chunk}")
    _check_grid(nb * nt, f"{nb} blocks x {nt} tiles of {kt} bases")
    out = torch.empty(nb, num_bases, device=x.device, dtype=torch.float32)  # every entry is written
    act = _active32(active, num_bases)
    # partial sums past a block's active count are not written: zeros then; else every entry is written
    part = (torch.zeros if act is not None else torch.empty)(nb * cpb, num_bases, device=x.device, dtype=torch.float32)
    xc = _aligned(x.reshape(-1).contiguous())
    yc = _aligned(y.reshape(-1).contiguous()) if y is not None else xc
    k0, k1 = _key(seed)
    common = dict(HAS_Y=y is not None, HAS_ACT=act is not None, DIST=_DIST_ID[dist], CHUNK=chunk, num_warps=4)
    head = (xc, yc, act if act is not None else out, part, n, block_size, block_offset)
    negsum, prefetch, m = _project_choice(x.device)  # checked at every call, whichever kernel runs
    with _on_device(x):
        if dist == "rademacher" and num_bases <= _LOOP_MAX_BASES and y is None and x.element_size() == 2:
            sms = 1 if _INTERPRET else torch.cuda.get_device_properties(x.device).multi_processor_count
            _wrap(_project_loop_kernel)[(triton.cdiv(nb * cpb, _LOOP_CHUNKS),)](
                *head,
                k0,
                k1,
                nb * cpb,
                K=num_bases,
                CHUNKS=_LOOP_CHUNKS,
                STAGES=_LOOP_STAGES,
                ahead=max(1, int(m * sms)) if prefetch else 0,
                PREFETCH=prefetch,
                NEGSUM=negsum,
                enable_fp_fusion=_FP_FUSION,
                **common,
            )
        else:
            _wrap(_project_kernel)[(nb * cpb,)](
                *head, num_bases, k0, k1, PAIR=True, enable_fp_fusion=_FP_FUSION, **common
            )
        _wrap(_reduce_kernel)[(nb * nt,)](part, out, cpb, num_bases, scale, KT=kt, CB=cb, enable_fp_fusion=_FP_FUSION)
    return out


# (K, block_size, dist, accumulate, out dtype, with active counts, device): the autotuner's key
# for _reconstruct_kernel (its key arguments plus the dtypes of its tensor arguments: coefficients
# are always float32, the active pointer's dtype follows HAS_ACT) and the device
_TUNED: set = set()
_SCRATCH_ELEMS = 1 << 26  # enough blocks to fill an H100 (132 SMs) at every block size


def _tune_on_scratch(out, c, act, block_size, dist, accum) -> None:
    """Autotune the reconstruct kernel on a scratch output the first time a key is seen, so the
    caller's tensor is never the benchmark's: with restore_value alone, tuning an in-place
    reconstruct_ copies the output (a full-size clone in peak memory) and restores it inside
    every timed run (the copy is timed with the kernel). The scratch is at most 2^26 elements,
    once per key; the real launch then finds the key cached (restore_value stays as a guard)."""
    if _INTERPRET or not _real(out):
        return
    key = (c.shape[1], block_size, dist, accum, out.dtype, act is not None, out.device)
    if key in _TUNED:
        return
    n = out.numel()
    m = min(n, max(block_size, _SCRATCH_ELEMS // block_size * block_size))
    nbm = triton.cdiv(m, block_size)
    scratch = torch.zeros(m, device=out.device, dtype=out.dtype)
    acts = act[:nbm].contiguous() if act is not None else None
    _run_reconstruct(scratch, c[:nbm].contiguous(), acts, block_size, 0, 1, 2, 1.0, accum, dist)
    _TUNED.add(key)


def _launch_reconstruct(out, coeffs, seed, block_size, block_offset, dist, factor, accum, active):
    nb = coeffs.shape[0]
    if nb == 0:
        return
    min_chunk = min(cfg.kwargs["CHUNK"] for cfg in _reconstruct_kernel.configs)
    _check_grid(nb * triton.cdiv(block_size, min_chunk), f"{nb} blocks x chunks of {min_chunk}")
    c = coeffs.to(torch.float32).contiguous()
    act = _active32(active, coeffs.shape[1])
    k0, k1 = _key(seed)
    with _on_device(out):
        _tune_on_scratch(out, c, act, block_size, dist, accum)
        _run_reconstruct(out, c, act, block_size, block_offset, k0, k1, factor, accum, dist)


def _run_reconstruct(out, c, act, block_size, block_offset, k0, k1, factor, accum, dist) -> None:
    """One launch of the (autotuned) reconstruct kernel over c's blocks into out."""
    nb = c.shape[0]
    _wrap(_reconstruct_kernel)[lambda meta: (nb * triton.cdiv(block_size, meta["CHUNK"]),)](
        c,
        out,
        act if act is not None else c,
        out.numel(),
        block_size,
        block_offset,
        c.shape[1],
        k0,
        k1,
        factor,
        ACCUM=accum,
        HAS_ACT=act is not None,
        DIST=_DIST_ID[dist],
        enable_fp_fusion=_FP_FUSION,
    )


@triton_op("ferret::_triton_reconstruct", mutates_args=())
def reconstruct(
    coeffs: torch.Tensor,
    seed: int,
    numel: int,
    block_size: int,
    block_offset: int,
    dist: str,
    scale: float,
    dtype: Optional[torch.dtype],
    active: Optional[torch.Tensor],
) -> torch.Tensor:
    out = torch.empty(numel, device=coeffs.device, dtype=dtype or torch.float32)
    _launch_reconstruct(out, coeffs, seed, block_size, block_offset, dist, scale, False, active)
    return out


@triton_op("ferret::_triton_reconstruct_", mutates_args={"out"})
def reconstruct_(
    out: torch.Tensor,
    coeffs: torch.Tensor,
    seed: int,
    block_size: int,
    block_offset: int,
    dist: str,
    scale: float,
    alpha: float,
    active: Optional[torch.Tensor],
) -> None:
    _launch_reconstruct(out, coeffs, seed, block_size, block_offset, dist, alpha * scale, True, active)


@triton_op("ferret::_triton_philox", mutates_args=())
def philox(counter: torch.Tensor, seed: int) -> torch.Tensor:
    c = counter.to(torch.int64).contiguous()
    out = torch.empty_like(c)
    n = c.shape[0]
    k0, k1 = _key(seed)
    if n:
        _check_grid(triton.cdiv(n, 256), f"{n} counters")
        with _on_device(c):
            _wrap(_philox_kernel)[(triton.cdiv(n, 256),)](c, out, n, k0, k1, BLOCK=256, enable_fp_fusion=_FP_FUSION)
    return out


_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_RECON_MULTI_CHUNK = 2048  # fixed (not autotuned): one compiled variant per dist and dtype


def _segment_groups(ts, ys, spans, block_size, block_offsets, starts):
    """[(dtype, int64 table [S, 8] on the device, launch rows, [(row, launch row, blocks)])], one
    per dtype present; `keep` holds the contiguous inputs alive for the launch. No aligned copies
    (as _aligned makes for the one-tensor kernels): an address read from the table tells the
    compiler nothing about alignment, so every tensor gets the same code and results depend on
    the data only; outputs are written where they are."""
    groups, keep = {}, []
    for i, (t, (row, nb)) in enumerate(zip(ts, spans)):
        if not nb:
            continue
        start = starts[i] if starts else 0
        x = t.reshape(-1).contiguous()  # outs are contiguous (checked): the caller's memory
        y = ys[i].reshape(-1).contiguous() if ys else None
        keep += [x] + ([y] if y is not None else [])
        g = groups.setdefault(t.dtype, {"rows": [], "spans": [], "n": 0})
        lead, first = start % block_size, block_offsets[i] + start // block_size
        g["rows"].append([g["n"], row, t.numel(), lead, first, x.data_ptr(), y.data_ptr() if y is not None else 0, 0])
        g["spans"].append((row, g["n"], nb))
        g["n"] += nb
    out = []
    for dtype, g in groups.items():
        tab = torch.tensor(g["rows"], dtype=torch.int64).pin_memory() if ts[0].is_cuda else torch.tensor(g["rows"])
        out.append((dtype, tab.to(ts[0].device, non_blocking=True), g["n"], g["spans"]))
    return out, keep


def _project_multi(xs, ys, seed, num_bases, block_size, block_offsets, dist, scale, active, starts):
    rows, spans = ops.plan_multi(
        "xs", xs, ys, num_bases, block_size, block_offsets, starts, dist, active, not xs[0].is_cuda
    )
    out = torch.empty(rows, num_bases, device=xs[0].device, dtype=torch.float32)
    chunk = _project_chunk(block_size, dist)
    cpb = triton.cdiv(block_size, chunk)
    kt, cb, nt = _reduce_tiles(num_bases)
    groups, keep = _segment_groups(xs, ys, spans, block_size, block_offsets, starts)
    for _, _, n, _ in groups:
        _check_grid(n * cpb, f"{n} blocks x {cpb} chunks of {chunk}")
        _check_grid(n * nt, f"{n} blocks x {nt} tiles of {kt} bases")
    act = _active32(active, num_bases)
    k0, k1 = _key(seed)
    with _on_device(xs[0]):
        for dtype, tab, n, gspans in groups:
            part = (torch.zeros if act is not None else torch.empty)(
                n * cpb, num_bases, device=out.device, dtype=torch.float32
            )
            dst = out if len(groups) == 1 else torch.empty(n, num_bases, device=out.device, dtype=torch.float32)
            _project_multi_kernel[(n * cpb,)](
                tab,
                tab.shape[0],
                act if act is not None else part,
                part,
                block_size,
                num_bases,
                k0,
                k1,
                XT=_TL_DTYPE[dtype],
                HAS_Y=bool(ys),
                HAS_ACT=act is not None,
                DIST=_DIST_ID[dist],
                CHUNK=chunk,
                # bases in pairs at large K only: on an H100 (K = 4, LLaMA2-7B-shaped list) pairs
                # took 9.43 ms against 8.78 one basis at a time, where the one-tensor kernel gained
                PAIR=num_bases > _LOOP_MAX_BASES,
                num_warps=4,
                enable_fp_fusion=_FP_FUSION,
            )
            _reduce_kernel[(n * nt,)](part, dst, cpb, num_bases, scale, KT=kt, CB=cb, enable_fp_fusion=_FP_FUSION)
            if dst is not out:
                for row, lrow, nb in gspans:
                    out[row : row + nb] = dst[lrow : lrow + nb]
    del keep
    return out


def _reconstruct_multi_(outs, coeffs, seed, block_size, block_offsets, dist, scale, alpha, active, starts):
    rows, spans = ops.validate_reconstruct_multi_(
        outs, coeffs, block_size, block_offsets, dist, active, starts, not coeffs.is_cuda
    )
    c = coeffs.to(torch.float32).contiguous()
    num_bases = c.shape[1]
    cpb = triton.cdiv(block_size, _RECON_MULTI_CHUNK)
    groups, keep = _segment_groups(outs, [], spans, block_size, block_offsets, starts)
    for _, _, n, _ in groups:
        _check_grid(n * cpb, f"{n} blocks x {cpb} chunks of {_RECON_MULTI_CHUNK}")
    act = _active32(active, num_bases)
    k0, k1 = _key(seed)
    with _on_device(coeffs):
        for dtype, tab, n, _ in groups:
            _reconstruct_multi_kernel[(n * cpb,)](
                tab,
                tab.shape[0],
                c,
                act if act is not None else c,
                block_size,
                num_bases,
                k0,
                k1,
                alpha * scale,
                XT=_TL_DTYPE[dtype],
                HAS_ACT=act is not None,
                DIST=_DIST_ID[dist],
                CHUNK=_RECON_MULTI_CHUNK,
                num_warps=4,
                enable_fp_fusion=_FP_FUSION,
            )
    del keep


ops.register_adjoint_autograd("ferret::_triton_project", "ferret::_triton_reconstruct")
backends.register(
    "triton",
    lambda: ops.checked(
        "triton",
        torch.ops.ferret._triton_project,
        torch.ops.ferret._triton_reconstruct,
        torch.ops.ferret._triton_reconstruct_,
        torch.ops.ferret._triton_philox,
        project_multi=_project_multi,
        reconstruct_multi_=_reconstruct_multi_,
    ),
)
