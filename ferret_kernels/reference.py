"""Pure-PyTorch reference implementation of the ops (the ground truth for tests).

Written from docs/rng.md and docs/ops.md, independently of the C++/CUDA/Triton kernels:
Philox in int64 tensor arithmetic, basis values in float64, reductions in float64. Works
on any device and bounds its memory by processing a block in chunks (`chunk` elements x K
bases at a time), so it never materializes a model-sized basis matrix.
"""

from __future__ import annotations

import math

import torch

M0, M1 = 0xD2511F53, 0xCD9E8D57
W0, W1 = 0x9E3779B9, 0xBB67AE85
_MASK = 0xFFFFFFFF
_UNIFORM_SCALE = torch.tensor(math.sqrt(3.0) * 2.0**-24, dtype=torch.float32).item()
_ELEMS_PER_CHUNK = 1 << 20  # values (elements x bases) materialized at a time


def _mulhilo(a: torch.Tensor, m: int):
    """hi and lo words of a * m for int64 tensors a < 2^32, without int64 overflow."""
    A = a * (m >> 16)
    B = a * (m & 0xFFFF)
    hi = (A + (B >> 16)) >> 16
    lo = (((A & 0xFFFF) << 16) + B) & _MASK
    return hi, lo


def philox(counter: torch.Tensor, seed: int) -> torch.Tensor:
    """Philox4x32-10 on int64 counters [..., 4] (words < 2^32); returns int64 [..., 4]."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    k0, k1 = seed & _MASK, seed >> 32
    c = counter.to(torch.int64)
    c0, c1, c2, c3 = c.unbind(-1)
    for _ in range(10):
        hi0, lo0 = _mulhilo(c0, M0)
        hi1, lo1 = _mulhilo(c2, M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = (k0 + W0) & _MASK
        k1 = (k1 + W1) & _MASK
    return torch.stack([c0, c1, c2, c3], dim=-1)


def basis_values(seed: int, g: int, num_bases: int, start: int, length: int, dist: str, device) -> torch.Tensor:
    """float64 values [num_bases, length] of bases 0..K-1 of global block g, elements start..start+length-1."""
    j = torch.arange(start, start + length, device=device, dtype=torch.int64)
    sh = 7 if dist == "rademacher" else 2
    w = j >> sh
    w0 = int(w[0]) if length else 0
    nw = (int(w[-1]) - w0 + 1) if length else 0
    ks = torch.arange(num_bases, device=device, dtype=torch.int64)
    ctr = torch.zeros(num_bases, nw, 4, dtype=torch.int64, device=device)
    ctr[..., 0] = torch.arange(w0, w0 + nw, device=device)
    ctr[..., 1] = ks[:, None]
    ctr[..., 2] = g
    words = philox(ctr, seed)  # [K, nw, 4]
    if dist == "rademacher":
        word = words[:, w - w0, (j >> 5) & 3]
        bit = (word >> (j & 31)) & 1
        return 1.0 - 2.0 * bit.to(torch.float64)
    if dist == "uniform":
        x = words[:, w - w0, j & 3]
        s = ((x >> 8) * 2 + 1 - 2**24).to(torch.float32)  # exact: |s| < 2^24
        return (s * _UNIFORM_SCALE).to(torch.float64)  # one float32 rounding (docs/rng.md)
    if dist == "gaussian":
        u = ((words >> 8).to(torch.float64) + 0.5) * 2.0**-24  # [K, nw, 4]
        r = torch.sqrt(-2.0 * torch.log(u[..., 0::2]))
        t = 2.0 * math.pi * u[..., 1::2]
        vals = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=-1).reshape(num_bases, nw * 4)
        return vals[:, j - 4 * w0]
    raise ValueError(f"unknown dist {dist!r}")


def _blocks(numel: int, block_size: int):
    for b in range((numel + block_size - 1) // block_size):
        start = b * block_size
        yield b, start, min(block_size, numel - start)


def _chunks(length: int, num_bases: int):
    step = max(128, (_ELEMS_PER_CHUNK // max(num_bases, 1)) // 128 * 128)
    for c in range(0, length, step):
        yield c, min(step, length - c)


def _kb(active, b: int, num_bases: int) -> int:
    # clamped to [0, K] like the GPU kernels (for CPU tensors the op layer rejects counts outside first)
    return num_bases if active is None else min(max(int(active[b]), 0), num_bases)


def project(x, y, seed, num_bases, block_size, block_offset=0, dist="rademacher", scale=1.0, active=None):
    flat = x.reshape(-1)
    yflat = None if y is None else y.reshape(-1)
    nb = (flat.numel() + block_size - 1) // block_size
    out = torch.zeros(nb, num_bases, dtype=torch.float64, device=x.device)
    for b, start, length in _blocks(flat.numel(), block_size):
        kb = _kb(active, b, num_bases)
        if kb == 0:
            continue
        for c, n in _chunks(length, kb):
            seg = flat[start + c : start + c + n].to(torch.float64)
            if yflat is not None:
                seg = seg - yflat[start + c : start + c + n].to(torch.float64)
            v = basis_values(seed, block_offset + b, kb, c, n, dist, x.device)
            out[b, :kb] += v @ seg
    return (out * scale).to(torch.float32)


def _reconstruct64(coeffs, seed, numel, block_size, block_offset, dist, active, device):
    """Yields (start, float64 values) per chunk of the unscaled reconstruction V c."""
    num_bases = coeffs.shape[1]
    c64 = coeffs.to(torch.float64)
    for b, start, length in _blocks(numel, block_size):
        kb = _kb(active, b, num_bases)
        for c, n in _chunks(length, max(kb, 1)):
            if kb == 0:
                yield start + c, torch.zeros(n, dtype=torch.float64, device=device)
                continue
            v = basis_values(seed, block_offset + b, kb, c, n, dist, device)
            yield start + c, c64[b, :kb] @ v


def reconstruct(coeffs, seed, numel, block_size, block_offset=0, dist="rademacher", scale=1.0, dtype=None, active=None):
    out = torch.empty(numel, dtype=dtype or torch.float32, device=coeffs.device)
    for start, vals in _reconstruct64(coeffs, seed, numel, block_size, block_offset, dist, active, coeffs.device):
        out[start : start + vals.numel()] = (vals * scale).to(out.dtype)
    return out


def reconstruct_(out, coeffs, seed, block_size, block_offset=0, dist="rademacher", scale=1.0, alpha=1.0, active=None):
    flat = out.view(-1)
    for start, vals in _reconstruct64(coeffs, seed, out.numel(), block_size, block_offset, dist, active, out.device):
        sl = flat[start : start + vals.numel()]
        # fp32 arithmetic, one rounding into out's dtype (the kernels' contract)
        upd = (sl.to(torch.float32) + (alpha * scale) * vals.to(torch.float32)).to(out.dtype)
        sl.copy_(upd)
