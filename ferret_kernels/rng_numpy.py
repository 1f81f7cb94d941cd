"""NumPy mirror of the shared-randomness contract (docs/rng.md, version 1).

Independent of torch and of the compiled kernels: the tests use it as a second, separately
written implementation of the stream. Exact for the uint32 stream, rademacher and uniform;
gaussian is computed in float64 (the kernels agree within docs/rng.md's tolerance).
"""

from __future__ import annotations

import numpy as np

RNG_VERSION = 1
M0, M1 = np.uint64(0xD2511F53), np.uint64(0xCD9E8D57)
W0, W1 = 0x9E3779B9, 0xBB67AE85
MASK32 = np.uint64(0xFFFFFFFF)
DISTS = ("rademacher", "uniform", "gaussian")
UNIFORM_SCALE = np.float32(np.sqrt(3.0) * 2.0**-24)


def philox4x32_10(counter, key):
    """Philox4x32-10. counter: (..., 4) integers < 2^32; key: (k0, k1). Returns uint32 (..., 4)."""
    c = np.asarray(counter, dtype=np.uint64)
    c0, c1, c2, c3 = (c[..., i].copy() for i in range(4))
    k0, k1 = int(key[0]) & 0xFFFFFFFF, int(key[1]) & 0xFFFFFFFF
    for _ in range(10):
        p0 = M0 * c0  # < 2^64: exact in uint64
        p1 = M1 * c2
        hi0, lo0 = p0 >> np.uint64(32), p0 & MASK32
        hi1, lo1 = p1 >> np.uint64(32), p1 & MASK32
        c0, c1, c2, c3 = hi1 ^ c1 ^ np.uint64(k0), lo1, hi0 ^ c3 ^ np.uint64(k1), lo0
        k0 = (k0 + W0) & 0xFFFFFFFF
        k1 = (k1 + W1) & 0xFFFFFFFF
    return np.stack([c0, c1, c2, c3], axis=-1).astype(np.uint32)


def seed_key(seed: int):
    seed = int(seed)
    if not 0 <= seed < 2**64:
        raise ValueError(f"seed must be in [0, 2^64), got {seed}")
    return seed & 0xFFFFFFFF, seed >> 32


def basis(seed: int, block: int, k: int, length: int, dist: str = "rademacher", start: int = 0) -> np.ndarray:
    """Values of basis k of global block `block`, elements start..start+length-1 of the block, as float32."""
    if dist not in DISTS:
        raise ValueError(f"unknown dist {dist!r}")
    j = np.arange(start, start + length, dtype=np.uint64)
    sh = 7 if dist == "rademacher" else 2
    w0 = start >> sh
    w = (j >> np.uint64(sh)) - np.uint64(w0)
    nw = int(w[-1]) + 1 if length else 0
    ctr = np.zeros((nw, 4), dtype=np.uint64)
    ctr[:, 0] = np.arange(w0, w0 + nw, dtype=np.uint64)
    ctr[:, 1] = k
    ctr[:, 2] = block
    words = philox4x32_10(ctr, seed_key(seed)).astype(np.uint64)
    if dist == "rademacher":
        word = words[w, (j >> np.uint64(5)) & np.uint64(3)]
        bit = (word >> (j & np.uint64(31))) & np.uint64(1)
        return np.where(bit == 1, -1.0, 1.0).astype(np.float32)
    if dist == "uniform":
        x = words[w, j & np.uint64(3)]
        # sqrt(3) (2u - 1) as the contract fixes it in float32: float(s) * float(sqrt(3) 2^-24),
        # s = 2 (x >> 8) + 1 - 2^24 (exact in float32), one rounding.
        s = ((x >> np.uint64(8)).astype(np.int64) * 2 + 1 - 2**24).astype(np.float32)
        return s * UNIFORM_SCALE
    pair = words.reshape(-1, 2, 2)  # (group, pair, [a, b])
    ua = ((pair[..., 0] >> np.uint64(8)).astype(np.float64) + 0.5) * 2.0**-24
    ub = ((pair[..., 1] >> np.uint64(8)).astype(np.float64) + 0.5) * 2.0**-24
    r = np.sqrt(-2.0 * np.log(ua))
    t = 2.0 * np.pi * ub
    vals = np.stack([r * np.cos(t), r * np.sin(t)], axis=-1).reshape(-1)  # element order 0,1,2,3 of each group
    first = start - 4 * w0
    return vals[first : first + length].astype(np.float32)
