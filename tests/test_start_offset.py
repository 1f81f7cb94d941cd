"""Element offsets (`start`): x[0] is element `start` of the global element stream.

Against the unsharded call on every backend (CPU kernel, reference, Triton in the interpreter
or on a GPU, CUDA on a GPU): a vector cut anywhere (odd offsets and sizes, block edges) and
projected piece by piece gives the unsharded coefficients once the pieces' rows of a shared
block are added (float32 rounding), and reconstruct / reconstruct_ of a piece equal the
unsharded call's slice bit for bit. The contract's bases do not change (NumPy mirror)."""

import numpy as np
import pytest
import torch

import ferret_kernels as fk
from ferret_kernels import rng_numpy

from conftest import assert_project_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
CUTS = [1, 127, 1023, 1024, 1025, 3000]  # odd offsets, both sides of a block edge, the last block


def _backends():
    out = []
    for name in ("cpu", "reference", "triton", "cuda"):
        dev = "cpu" if name in ("cpu", "reference") else DEV
        why = fk.backends.unavailable_reason(name, torch.device(dev))
        out.append(pytest.param(name, marks=pytest.mark.skip(reason=why)) if why else name)
    return out


@pytest.fixture(params=_backends())
def be(request):
    dev = "cpu" if request.param in ("cpu", "reference") else DEV
    with fk.use_backend(request.param):
        yield request.param, dev


def _assemble(pieces, nb_full, K):
    """Coefficients of the whole vector from its pieces' rows, added in piece order."""
    g = torch.zeros(nb_full, K)
    for first_block, rows in pieces:
        g[first_block : first_block + rows.shape[0]] += rows.cpu()
    return g


@pytest.mark.parametrize("dist", fk.DISTS)
def test_pieces_add_up_to_the_unsharded_projection(be, dist):
    name, dev = be
    n, bs, K = 3100, 512, 5
    x = torch.randn(n)
    y = torch.randn(n)
    full = fk.project(x.to(dev), 9, K, bs, y=y.to(dev), block_offset=4, dist=dist).cpu()
    for cuts in ([1000], [1, 513, 2047], [127, 128, 3000]):
        edges = [0, *cuts, n]
        pieces = []
        for a, b in zip(edges, edges[1:]):
            rows = fk.project(x[a:b].to(dev), 9, K, bs, y=y[a:b].to(dev), block_offset=4, dist=dist, start=a)
            assert rows.shape == (fk.num_blocks(b - a, bs, a), K)
            pieces.append((a // bs, rows))
        assert_project_close(_assemble(pieces, full.shape[0], K), full, x - y, bs, dist, extra=1e-6 * len(cuts))


@pytest.mark.parametrize("dist", fk.DISTS)
@pytest.mark.parametrize("s", CUTS)
def test_reconstruct_of_a_piece_is_the_slice_bit_for_bit(be, dist, s):
    name, dev = be
    n, bs, K = 3100, 1024, 4
    c = torch.randn(fk.num_blocks(n, bs), K).to(dev)
    full = fk.reconstruct(c, 2**63 + 11, n, bs, block_offset=1, dist=dist, scale=0.7)
    first = s // bs
    part = fk.reconstruct(c[first:], 2**63 + 11, n - s, bs, block_offset=1, dist=dist, scale=0.7, start=s)
    assert torch.equal(part, full[s:])
    for dtype in (torch.float32, torch.bfloat16):
        base = (torch.arange(n, dtype=torch.float32) * 1e-3).to(dtype).to(dev)
        want = fk.reconstruct_(base.clone(), c, 2**63 + 11, bs, block_offset=1, dist=dist, scale=0.7, alpha=-2.0)
        got = base.clone()
        fk.reconstruct_(got[s:], c[first:], 2**63 + 11, bs, block_offset=1, dist=dist, scale=0.7, alpha=-2.0, start=s)
        assert torch.equal(got[s:], want[s:]) and torch.equal(got[:s], base[:s])  # before s: untouched


def test_active_counts_and_start_together(be):
    name, dev = be
    n, bs, K, s = 2500, 512, 6, 700
    x = torch.randn(n).to(dev)
    act_full = torch.tensor([6, 0, 3, 5, 2], dtype=torch.int32)
    full = fk.project(x, 1, K, bs, active=act_full.to(dev)).cpu()
    part = fk.project(x[s:], 1, K, bs, active=act_full[s // bs :].to(dev), start=s).cpu()
    mask = torch.arange(K)[None, :] < act_full[s // bs :, None]
    assert torch.equal(part[~mask], torch.zeros_like(part[~mask]))
    torch.testing.assert_close(part[1:], full[2:], rtol=0, atol=1e-5)  # whole blocks: same sums, same order
    c = torch.randn(5, K).to(dev)
    rec = fk.reconstruct(c, 1, n, bs, active=act_full.to(dev))
    assert torch.equal(fk.reconstruct(c[1:], 1, n - s, bs, active=act_full[1:].to(dev), start=s), rec[s:])


def test_adjoint_identity_and_autograd_with_start():
    n, bs, K, s = 1800, 256, 3, 333
    x = torch.randn(n, dtype=torch.float64).float().requires_grad_()
    c = torch.randn(fk.num_blocks(n, bs, s), K)
    g = torch.ops.ferret.project(x, None, 4, K, bs, 0, "gaussian", 1.0, None, s)
    (g * c).sum().backward()
    want = fk.reconstruct(c, 4, n, bs, dist="gaussian", start=s)
    torch.testing.assert_close(x.grad, want, rtol=0, atol=1e-6)
    lhs = (g.double() * c.double()).sum()
    rhs = (x.detach().double() * want.double()).sum()
    assert abs(lhs - rhs).item() <= 1e-5 * (x.abs().sum() * c.abs().max()).item()


def test_numpy_mirror_and_contract_with_start():
    """The kernel's bases at an offset are the contract's values at those positions."""
    bs, s, n = 4096, 1234, 2000
    for dist in fk.DISTS:
        c = torch.zeros(1, 3)
        c[0, 2] = 1.0
        got = fk.reconstruct(c, 77, n, bs, block_offset=5, dist=dist, start=s).numpy()
        want = rng_numpy.basis(77, 5, 2, n, dist, start=s)
        if dist == "gaussian":
            np.testing.assert_allclose(got, want, rtol=0, atol=2e-5 + 4e-6 * np.abs(want).max())
        else:
            assert np.array_equal(got, want)
        assert np.array_equal(rng_numpy.basis(77, 5, 2, n, dist, start=s), rng_numpy.basis(77, 5, 2, s + n, dist)[s:])


def test_start_errors_and_fake_shapes():
    x = torch.randn(100)
    with pytest.raises(ValueError, match="start must be >= 0"):
        fk.project(x, 1, 2, 64, start=-1)
    with pytest.raises(ValueError, match=r"coeffs must have 3 rows \(blocks of 64 in 100 elements from element 50\)"):
        fk.reconstruct(torch.randn(2, 2), 1, 100, 64, start=50)
    with pytest.raises(ValueError, match=r"2\^32"):
        fk.project(x, 1, 2, 64, block_offset=2**32 - 2, start=64 * 2)
    with pytest.raises(ValueError, match=r"active must have shape \[3\]"):
        fk.project(x, 1, 2, 64, start=50, active=torch.tensor([1, 2], dtype=torch.int32))
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        g = torch.ops.ferret.project(torch.empty(100), None, 1, 2, 64, 0, "rademacher", 1.0, None, 50)
        assert g.shape == (3, 2)
        r = torch.ops.ferret.reconstruct(torch.empty(3, 2), 1, 100, 64, 0, "rademacher", 1.0, None, None, 50)
        assert r.shape == (100,)


def test_start_with_a_multi_dimensional_tensor(be):
    """A parameter is any shape: its elements in row-major order (a 2-D out with an offset
    failed in the head copy before this test)."""
    name, dev = be
    bs, s = 64, 50
    w = torch.randn(7, 13).to(dev)
    c = torch.randn(fk.num_blocks(91, bs, s), 3).to(dev)
    flat = w.reshape(-1).clone()
    fk.reconstruct_(flat, c, 5, bs, start=s, alpha=0.3)
    fk.reconstruct_(w, c, 5, bs, start=s, alpha=0.3)
    assert torch.equal(w.reshape(-1), flat)
    torch.testing.assert_close(
        fk.project(w, 5, 3, bs, start=s), fk.project(w.reshape(-1), 5, 3, bs, start=s), rtol=0, atol=0
    )
