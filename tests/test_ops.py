"""Every op against the pure-PyTorch reference: dists, dtypes, odd sizes, block edges."""

import pytest
import torch

import ferret_kernels as fk
from ferret_kernels import reference, rng_numpy

from conftest import DISTS, DTYPES, assert_project_close, assert_recon_close

BS = 512
# sizes: 1, 127, primes, block edges, multi-block
SIZES = [1, 127, 509, BS - 1, BS, BS + 1, 3 * BS + 17, 10007]


def ref_project(x, seed, K, bs, **kw):
    with fk.use_backend("reference"):
        return fk.project(x, seed, K, bs, **kw)


def ref_reconstruct(c, seed, n, bs, **kw):
    with fk.use_backend("reference"):
        return fk.reconstruct(c, seed, n, bs, **kw)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n", SIZES)
def test_project_matches_reference(backend, dist, n):
    x = torch.randn(n)
    got = fk.project(x, 42, 7, BS, dist=dist, block_offset=5, scale=0.5)
    ref = ref_project(x, 42, 7, BS, dist=dist, block_offset=5, scale=0.5)
    assert got.shape == ((n + BS - 1) // BS, 7) and got.dtype == torch.float32
    assert_project_close(got, ref, x * 0.5, BS, dist)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n", SIZES)
def test_reconstruct_matches_reference(backend, dist, n):
    nb = (n + BS - 1) // BS
    c = torch.randn(nb, 6)
    got = fk.reconstruct(c, 2**64 - 1, n, BS, dist=dist, block_offset=1, scale=0.25)
    ref = ref_reconstruct(c, 2**64 - 1, n, BS, dist=dist, block_offset=1, scale=0.25)
    assert got.shape == (n,)
    assert_recon_close(got, ref, c * 0.25, BS, dist)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dist", DISTS)
def test_dtypes_and_fused_difference(backend, dtype, dist):
    n, bs = 3001, 1024
    x = torch.randn(n).to(dtype)
    y = torch.randn(n).to(dtype)
    got = fk.project(x, 7, 9, bs, y=y, dist=dist)
    ref = ref_project(x.float() - y.float(), 7, 9, bs, dist=dist)  # exact: 16-bit -> fp32 difference
    assert_project_close(got, ref, x.float() - y.float(), bs, dist)
    c = torch.randn(got.shape)
    out = fk.reconstruct(c, 7, n, bs, dist=dist, dtype=dtype)
    assert out.dtype == dtype
    ref = ref_reconstruct(c, 7, n, bs, dist=dist, dtype=torch.float32)
    assert_recon_close(out, ref, c, bs, dist, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dist", DISTS)
def test_inplace_accumulate(backend, dtype, dist):
    n, bs = 2500, 1000
    base = torch.randn(n).to(dtype)
    c = torch.randn(3, 5)
    out = base.clone()
    ret = fk.reconstruct_(out, c, 11, bs, dist=dist, scale=0.3, alpha=-2.0)
    assert ret is out and out.dtype == dtype
    full = ref_reconstruct(c, 11, n, bs, dist=dist, scale=0.3)
    ref = (base.float() - 2.0 * full).to(dtype)
    assert_recon_close(out, ref, c * 0.6, bs, dist, dtype=dtype, base=base)


def test_inplace_on_a_parameter_view_of_2d(backend):
    w = torch.randn(33, 65)
    before = w.clone()
    c = torch.randn(fk.num_blocks(w.numel(), 256), 4)
    fk.reconstruct_(w, c, 3, 256, alpha=0.1)
    delta = fk.reconstruct(c, 3, w.numel(), 256)
    torch.testing.assert_close(w.reshape(-1), before.reshape(-1) + 0.1 * delta, rtol=0, atol=1e-6)


def test_non_contiguous_input(backend):
    x = torch.randn(40, 70).t()  # non-contiguous, projected in logical (row-major) order
    assert not x.is_contiguous()
    got = fk.project(x, 5, 4, 300)
    ref = fk.project(x.contiguous(), 5, 4, 300)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("dist", DISTS)
def test_active_counts(backend, dist):
    n, bs, K = 5000, 1024, 8
    x = torch.randn(n)
    active = torch.tensor([8, 0, 3, 1, 5], dtype=torch.int32)
    full = fk.project(x, 9, K, bs, dist=dist)
    part = fk.project(x, 9, K, bs, dist=dist, active=active)
    mask = torch.arange(K)[None, :] < active[:, None]
    assert torch.equal(part[~mask], torch.zeros(int((~mask).sum())))
    assert torch.equal(part[mask], full[mask])
    c = torch.randn(5, K)
    got = fk.reconstruct(c, 9, n, bs, dist=dist, active=active)
    ref = fk.reconstruct(c * mask, 9, n, bs, dist=dist)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-6)
    with fk.use_backend("reference"):
        assert_recon_close(got, reference.reconstruct(c, 9, n, bs, 0, dist, 1.0, None, active), c * mask, bs, dist)


@pytest.mark.parametrize("dist", DISTS)
def test_block_offset_composition(backend, dist):
    """Projecting a concatenation == stacking the parts' projections with block offsets."""
    bs, K = 256, 5
    a, b = torch.randn(3 * bs), torch.randn(2 * bs + 7)
    whole = fk.project(torch.cat([a, b]), 1, K, bs, dist=dist, block_offset=10)
    parts = torch.cat(
        [fk.project(a, 1, K, bs, dist=dist, block_offset=10), fk.project(b, 1, K, bs, dist=dist, block_offset=13)]
    )
    assert torch.equal(whole, parts)
    c = torch.randn(6, K)
    whole = fk.reconstruct(c, 1, a.numel() + b.numel(), bs, dist=dist, block_offset=10)
    parts = torch.cat(
        [
            fk.reconstruct(c[:3], 1, a.numel(), bs, dist=dist, block_offset=10),
            fk.reconstruct(c[3:], 1, b.numel(), bs, dist=dist, block_offset=13),
        ]
    )
    assert torch.equal(whole, parts)


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n,bs", [(1, 1), (1000, 77), (4099, 4096), (9000, 2048)])
def test_adjoint_identity(backend, dist, n, bs):
    x = torch.randn(n, dtype=torch.float64).float()
    K = 6
    c = torch.randn(fk.num_blocks(n, bs), K)
    lhs = (fk.project(x, 123, K, bs, dist=dist, scale=0.7).double() * c.double()).sum()
    rhs = (x.double() * fk.reconstruct(c, 123, n, bs, dist=dist, scale=0.7).double()).sum()
    scale = (x.double().abs().sum() * c.double().abs().max() * 6).item()
    assert abs(lhs - rhs).item() <= 1e-6 * scale + 1e-9, (lhs.item(), rhs.item())


def test_autograd_is_the_adjoint(backend):
    n, bs, K = 1500, 512, 4
    x = torch.randn(n, requires_grad=True)
    y = torch.randn(n, requires_grad=True)
    c = torch.randn(3, K)
    (fk.project(x, 5, K, bs, y=y, dist="uniform", scale=0.5) * c).sum().backward()
    want = fk.reconstruct(c, 5, n, bs, dist="uniform", scale=0.5)
    assert torch.equal(x.grad, want) and torch.equal(y.grad, -want)
    coeffs = torch.randn(3, K, requires_grad=True)
    r = torch.randn(n)
    (fk.reconstruct(coeffs, 5, n, bs, dist="gaussian") * r).sum().backward()
    assert torch.equal(coeffs.grad, fk.project(r, 5, K, bs, dist="gaussian"))


EVERY_CPU_BACKEND = fk.available_backends("cpu")  # the C++ kernels, the reference, Triton's interpreter


@pytest.mark.parametrize("be", EVERY_CPU_BACKEND)
def test_autograd_gives_y_its_own_shape(be):
    """y needs only x's element count; its gradient has y's shape (it had x's: backward failed)."""
    x = torch.randn(20, requires_grad=True)
    y = torch.randn(4, 5, requires_grad=True)
    c = torch.randn(3, 4)
    with fk.use_backend(be):
        (fk.project(x, 5, 4, 8, y=y) * c).sum().backward()
    assert y.grad.shape == (4, 5) and torch.equal(y.grad, -x.grad.reshape(4, 5))
    with fk.use_backend(be):
        assert torch.equal(x.grad, fk.reconstruct(c, 5, 20, 8))


@pytest.mark.parametrize("be", EVERY_CPU_BACKEND)
@pytest.mark.parametrize("multi", [False, True])
def test_inplace_updates_bump_the_autograd_version(be, multi):
    """reconstruct_ and reconstruct_multi_ tell autograd that they wrote (as torch's in-place ops
    do): a backward through a tensor saved before the update fails instead of silently using the
    updated values. A tensor that requires grad is updated only under no_grad: otherwise a
    ValueError, and nothing written."""
    with fk.use_backend(be):
        w = torch.randn(16, requires_grad=True)
        loss = (w * w).sum()  # saves w
        before = w._version
        with torch.no_grad():
            if multi:
                fk.reconstruct_multi_([w], torch.randn(2, 4), 1, 8)
            else:
                fk.reconstruct_(w, torch.randn(2, 4), 1, 8)
        assert w._version > before
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            loss.backward()
        w0 = w.detach().clone()
        what = "outs\\[0\\]" if multi else "out"
        with pytest.raises(ValueError, match=f"{what} requires grad: update it under torch.no_grad"):
            if multi:
                fk.reconstruct_multi_([w], torch.randn(2, 4), 1, 8)
            else:
                fk.reconstruct_(w, torch.randn(2, 4), 1, 8)
        assert torch.equal(w.detach(), w0)


@pytest.mark.parametrize("be", EVERY_CPU_BACKEND)
def test_integer_arguments_are_ints_on_every_backend(be):
    """numpy / torch integer scalars are ints to every backend (the Python paths refused what the
    C++ one took); a bool or a float is refused, not truncated."""
    import numpy as np

    with fk.use_backend(be):
        x = torch.randn(50)
        want = fk.project(x, 3, 4, 8, block_offset=2, start=3)
        got = fk.project(x, 3, np.int64(4), np.int32(8), block_offset=np.int64(2), start=np.int64(3))
        assert torch.equal(got, want)
        assert torch.equal(
            fk.reconstruct(want, 3, np.int64(50), 8, start=torch.tensor(3)), fk.reconstruct(want, 3, 50, 8, start=3)
        )
        for kw, msg in (
            (dict(block_size=True), "block_size must be an int, got a bool"),
            (dict(block_offset=1.5), "block_offset must be an int, got float"),
            (dict(num_bases=np.float64(4)), "num_bases must be an int, got float64"),
            (dict(start="3"), "start must be an int, got str"),
        ):
            args = {"num_bases": 4, "block_size": 8, **kw}
            with pytest.raises(TypeError, match=msg):
                fk.project(x, 3, args.pop("num_bases"), args.pop("block_size"), **args)


def test_same_output_for_one_and_two_threads_and_repeated_runs(backend):
    n, bs, K = 300_000, 100_000, 16
    x = torch.randn(n)
    old = torch.get_num_threads()
    try:
        outs = []
        for t in (1, 2, 1, 2):
            torch.set_num_threads(t)
            for dist in DISTS:
                g = fk.project(x, 3, K, bs, dist=dist)
                outs.append((t, dist, g, fk.reconstruct(g, 3, n, bs, dist=dist)))
    finally:
        torch.set_num_threads(old)
    first = {d: (g, r) for t, d, g, r in outs[:3]}
    for t, d, g, r in outs:
        assert torch.equal(g, first[d][0]) and torch.equal(r, first[d][1]), (t, d)


@pytest.mark.parametrize("dist", DISTS)
def test_instruction_sets_agree(dist):
    if "cpu" not in fk.available_backends("cpu"):
        pytest.skip("no native backend")
    best = fk.cpu_isa()
    isas = [i for i in ("generic", "avx2", "avx512") if _isa_ok(i)]
    n, bs, K = 20000, 4096, 5
    x = torch.randn(n)
    c = torch.randn(fk.num_blocks(n, bs), K)
    one_hot = torch.zeros(1, 3)
    one_hot[0, 2] = 1
    res = {}
    try:
        with fk.use_backend("cpu"):
            for isa in isas:
                fk.cpu_isa(isa)
                res[isa] = (
                    fk.project(x, 4, K, bs, dist=dist),
                    fk.reconstruct(c, 4, n, bs, dist=dist),
                    fk.reconstruct(one_hot, 4, 5000, 5000, dist=dist),
                )
    finally:
        fk.cpu_isa(best)
    g0, r0, v0 = res["generic"]
    for isa, (g, r, v) in res.items():
        assert_project_close(g, g0, x, bs, dist)
        assert_recon_close(r, r0, c, bs, dist)
        if dist != "gaussian":
            assert torch.equal(v, v0), isa  # the basis values themselves: bit for bit


def _isa_ok(name):
    try:
        prev = fk.cpu_isa()
        fk.cpu_isa(name)
        fk.cpu_isa(prev)
        return True
    except RuntimeError:
        return False


def test_large_seed_and_block_offset_edges(backend):
    x = torch.randn(700)
    for seed in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        got = fk.project(x, seed, 3, 256, block_offset=2**32 - 3)
        ref = ref_project(x, seed, 3, 256, block_offset=2**32 - 3)
        assert_project_close(got, ref, x, 256, "rademacher")


def test_empty_tensor(backend):
    assert fk.project(torch.empty(0), 1, 4, 16).shape == (0, 4)
    assert fk.reconstruct(torch.empty(0, 4), 1, 0, 16).shape == (0,)


def test_cpu_kernel_adds_a_blocks_chunks_in_float64_exactly():
    """The CPU kernel sums a chunk (2048 elements) in float32 and a block's chunks in float64
    (docs/ops.md). Exact known answer: one element of 2^23 in the first chunk and one of 0.25 in
    each of 39 other chunks, all aligned with basis 0's signs: 2^23 + 9.75, rounded once to
    float32, is 8388618. Adding the chunks in float32 would lose every 0.25 (8388608)."""
    if "cpu" not in fk.available_backends("cpu"):
        pytest.skip("ferret_kernels._C not built")
    chunk, nchunks, seed = 2048, 40, 31
    bs = chunk * nchunks
    v = torch.from_numpy(rng_numpy.basis(seed, 0, 0, bs, "rademacher"))
    x = torch.zeros(bs)
    x[0] = 2.0**23 * v[0]
    for c in range(1, nchunks):
        x[c * chunk + 5] = 0.25 * v[c * chunk + 5]
    with fk.use_backend("cpu"):
        g = fk.project(x, seed, 1, bs)
    assert g.item() == 8388618.0
    with fk.use_backend("reference"):
        assert fk.project(x, seed, 1, bs).item() == 8388618.0
