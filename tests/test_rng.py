"""The shared-randomness contract (docs/rng.md): known answers and bit-identical streams."""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import ferret_kernels as fk
from ferret_kernels import reference, rng_numpy

from conftest import DISTS

# Random123's Philox4x32-10 known-answer vectors: (counter, key) -> output
KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF, 0xFFFFFFFF), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    (
        (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
        (0xA4093822, 0x299F31D0),
        (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
    ),
]


def key_to_seed(key):
    return key[0] | (key[1] << 32)


@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers_numpy(ctr, key, want):
    assert tuple(int(v) for v in rng_numpy.philox4x32_10(np.array(ctr), key)) == want


@pytest.mark.parametrize("backend_name", ["reference", "cpu"])
@pytest.mark.parametrize("ctr,key,want", KAT)
def test_philox_known_answers_backends(backend_name, ctr, key, want):
    if backend_name not in fk.available_backends("cpu"):
        pytest.skip(f"{backend_name} backend unavailable")
    with fk.use_backend(backend_name):
        got = fk.philox(torch.tensor([ctr]), key_to_seed(key))
    assert tuple(got[0].tolist()) == want


def test_stream_bit_identical_numpy_reference_cpu():
    gen = np.random.default_rng(7)
    ctr = gen.integers(0, 2**32, size=(4096, 4), dtype=np.uint64)
    seed = int(gen.integers(0, 2**63)) * 2 + 1  # > 2^63: exercises the high key word
    want = rng_numpy.philox4x32_10(ctr, rng_numpy.seed_key(seed)).astype(np.int64)
    t = torch.from_numpy(ctr.astype(np.int64))
    for name in fk.available_backends("cpu"):
        if name == "triton":
            continue  # covered in test_triton.py with a small grid
        with fk.use_backend(name):
            assert np.array_equal(fk.philox(t, seed).numpy(), want), name


def _basis_via_op(seed, g, k, length, dist, num_bases=None):
    """v_{g,k}[0:length] read back through reconstruct with a one-hot coefficient (scale 1):
    exact, because acc = 0 + 1 * v."""
    K = num_bases or (k + 1)
    c = torch.zeros(1, K)
    c[0, k] = 1.0
    return fk.reconstruct(c, seed, length, length, block_offset=g, dist=dist)


@pytest.mark.parametrize("dist", DISTS)
def test_basis_values_numpy_vs_reference_vs_kernel(dist, backend):
    seed, g, k, n = 2**64 - 12345, 77, 5, 1000
    want = torch.from_numpy(rng_numpy.basis(seed, g, k, n, dist))
    ref = reference.basis_values(seed, g, k + 1, 0, n, dist, "cpu")[k].float()
    got = _basis_via_op(seed, g, k, n, dist)
    if dist == "gaussian":
        # libm vs the kernels' polynomial log/sincos: the contract's tolerance (docs/rng.md)
        torch.testing.assert_close(ref, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 + 4e-6 * want.abs().max().item())
    else:
        assert torch.equal(ref, want)
        assert torch.equal(got, want)  # rademacher and uniform: bit for bit


def test_rademacher_layout_by_hand():
    """Element j uses word group j>>7, output word (j>>5)&3, bit j&31; bit 1 means -1."""
    seed, g, k = 99, 3, 2
    got = rng_numpy.basis(seed, g, k, 300, "rademacher")
    for j in (0, 31, 32, 127, 128, 200, 299):
        words = rng_numpy.philox4x32_10(np.array([j >> 7, k, g, 0]), (seed, 0))
        bit = (int(words[(j >> 5) & 3]) >> (j & 31)) & 1
        assert got[j] == (-1.0 if bit else 1.0)


def test_uniform_formula_by_hand():
    seed, g, k = 5, 0, 0
    got = rng_numpy.basis(seed, g, k, 8, "uniform")
    words = rng_numpy.philox4x32_10(np.array([[0, 0, 0, 0], [1, 0, 0, 0]]), (seed, 0)).reshape(-1)
    for j in range(8):
        u = ((int(words[j]) >> 8) + 0.5) * 2.0**-24
        s = 2 * (int(words[j]) >> 8) + 1 - 2**24  # 2u - 1 = s 2^-24, exact in float32
        assert got[j] == np.float32(s) * np.float32(np.sqrt(3.0) * 2.0**-24)
        assert abs(float(got[j]) - np.sqrt(3.0) * (2 * u - 1)) <= 2.0**-23 * np.sqrt(3.0)


def test_seeds_blocks_bases_streams_never_share_counters():
    """Changing any of seed, block, basis changes the stream (different counters / keys)."""
    n = 512
    base = rng_numpy.basis(1, 0, 0, n, "rademacher")
    for other in (
        rng_numpy.basis(2, 0, 0, n, "rademacher"),
        rng_numpy.basis(1, 1, 0, n, "rademacher"),
        rng_numpy.basis(1, 0, 1, n, "rademacher"),
        rng_numpy.basis(1 << 32, 0, 0, n, "rademacher"),
    ):
        assert abs(float(np.mean(base * other))) < 0.25


@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_scalar_basis_value_of_the_core_header_matches_the_numpy_mirror(tmp_path):
    """csrc/ferret/core.h's basis_value, the one-element definition the kernels vectorize,
    against rng_numpy at random (seed, block, basis, element) points of every dist."""
    exe = str(tmp_path / "probe")
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "core_probe", "main.cpp")
    csrc = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc")
    res = subprocess.run(
        ["g++", "-std=c++17", "-O2", "-I", csrc, src, "-o", exe], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rng = np.random.default_rng(5)
    rows = []
    for dist_id, dist in enumerate(("rademacher", "uniform", "gaussian")):
        for _ in range(60):
            rows.append(
                (
                    int(rng.integers(0, 2**64, dtype=np.uint64)),
                    int(rng.integers(0, 2**32)),
                    int(rng.integers(0, 300)),
                    int(rng.integers(0, 1 << 22)),
                    dist_id,
                    dist,
                )
            )
    inp = "".join(f"{s} {g} {k} {j} {d}\n" for s, g, k, j, d, _ in rows)
    out = subprocess.run([exe], input=inp, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    got = [np.uint32(int(h, 16)).view(np.float32) for h in out.stdout.split()]
    assert len(got) == len(rows)
    for (s, g, k, j, _, dist), v in zip(rows, got):
        want = rng_numpy.basis(s, g, k, 1, dist, start=j)[0]
        if dist == "gaussian":
            assert abs(float(v) - float(want)) <= 2e-5 + 4e-6 * abs(float(want)), (s, g, k, j, v, want)
        else:
            assert v == want, (dist, s, g, k, j, v, want)
