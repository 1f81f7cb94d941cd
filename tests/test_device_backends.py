"""The device backends (Triton, CUDA) against the contract, the reference and the CPU kernel.

Without a GPU the Triton backend runs in Triton's interpreter on CPU tensors (small grids)
and the CUDA backend is skipped; with a CUDA device both run on it, and the GPU's bases are
compared bit for bit with the CPU kernel's.
"""

import importlib.util

import numpy as np
import pytest
import torch

import ferret_kernels as fk
from ferret_kernels import rng_numpy

from conftest import DISTS, DTYPES, assert_project_close, assert_recon_close, cuda_rademacher_project_order

DEV = "cuda" if torch.cuda.is_available() else "cpu"


def _params():
    out = []
    for name in ("triton", "cuda"):
        why = fk.backends.unavailable_reason(name, torch.device(DEV))
        out.append(pytest.param(name, marks=pytest.mark.skip(reason=why)) if why else name)
    return out


if (
    importlib.util.find_spec("triton") is not None
    and fk.backends.unavailable_reason("triton", torch.device(DEV)) is None
):
    import triton
    import triton.language as tl

    from ferret_kernels import triton_kernels  # registers ferret::_triton_*

    # (not specialized: on a GPU an int argument equal to 1 becomes a Python constant, which has no .to;
    # the shipped kernels compute pid and cpb in the kernel)
    @triton.jit(do_not_specialize=("pid", "live", "cpb", "numel", "block_size"))
    def _chunk_place_kernel(info_ptr, pid, live, cpb, numel, block_size, CHUNK: tl.constexpr):
        """triton_kernels._chunk_place of chunk pid into info (reads nothing)."""
        b, cstart, at, nval = triton_kernels._chunk_place(pid, live != 0, cpb, numel, block_size, CHUNK)
        tl.store(info_ptr, b)
        tl.store(info_ptr + 1, cstart)
        tl.store(info_ptr + 2, at)
        tl.store(info_ptr + 3, nval.to(tl.int64))

    @triton.jit(do_not_specialize=("pid", "cpb", "numel", "block_size"))
    def _chunk_input_kernel(x_ptr, o_ptr, info_ptr, pid, cpb, numel, block_size, CHUNK: tl.constexpr):
        """triton_kernels._chunk_input of live chunk pid (rademacher tile, block offset 7, K 4): the
        tile into o, the chunk's block index g into info."""
        xv, cstart, kb, g = triton_kernels._chunk_input(
            x_ptr, x_ptr, info_ptr, pid, True, cpb, numel, block_size, 7, 4, False, False, 0, CHUNK
        )
        tl.store(o_ptr + tl.arange(0, CHUNK), tl.reshape(xv, [CHUNK]))
        tl.store(info_ptr, g.to(tl.int64))

    @triton.jit
    def _to_f32_kernel(x_ptr, o_ptr, BLOCK: tl.constexpr):
        """o = triton_kernels._to_f32(x), BLOCK elements a program."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(o_ptr + i, triton_kernels._to_f32(tl.load(x_ptr + i)))


BS = 512
SIZES = [1, 127, 509, BS - 1, BS, BS + 1, 3 * BS + 17]


@pytest.fixture(autouse=True, params=_params())
def gb(request):
    with fk.use_backend(request.param):
        yield request.param


def raw_ops(gb):
    """The ops a backend runs, called without the Python layer: the dispatcher's native CUDA
    kernels (torch.ops.ferret.*) or the Triton ops."""
    ns = torch.ops.ferret
    return (ns.project, ns.reconstruct) if gb == "cuda" else (ns._triton_project, ns._triton_reconstruct)


def ref(fn, *args, **kw):
    with fk.use_backend("reference"):
        return fn(
            *[a.cpu() if isinstance(a, torch.Tensor) else a for a in args],
            **{k: (v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in kw.items()},
        )


def test_philox_known_answers_and_stream():
    ctr = np.random.default_rng(3).integers(0, 2**32, size=(300, 4), dtype=np.uint64)
    ctr[0] = 0
    seed = 2**64 - 2
    got = fk.philox(torch.from_numpy(ctr.astype(np.int64)).to(DEV), seed).cpu().numpy()
    assert np.array_equal(got, rng_numpy.philox4x32_10(ctr, rng_numpy.seed_key(seed)).astype(np.int64))
    kat = fk.philox(
        torch.tensor([[0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]], device=DEV), 0xA4093822 | (0x299F31D0 << 32)
    )
    assert kat[0].tolist() == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("dist", DISTS)
def test_basis_values_match_contract(dist):
    seed, g, k, n = 12345, 9, 2, 1500
    c = torch.zeros(1, 3, device=DEV)
    c[0, k] = 1.0
    got = fk.reconstruct(c, seed, n, n, block_offset=g, dist=dist).cpu()
    want = torch.from_numpy(rng_numpy.basis(seed, g, k, n, dist))
    if dist == "gaussian":
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 + 4e-6 * want.abs().max().item())
        if "cpu" in fk.available_backends("cpu"):
            with fk.use_backend("cpu"):
                cpu = fk.reconstruct(c.cpu(), seed, n, n, block_offset=g, dist=dist)
            torch.testing.assert_close(got, cpu, rtol=0, atol=1e-6 * cpu.abs().max().item())
    else:
        assert torch.equal(got, want)  # bit for bit, on the GPU too
        if "cpu" in fk.available_backends("cpu"):
            with fk.use_backend("cpu"):
                assert torch.equal(got, fk.reconstruct(c.cpu(), seed, n, n, block_offset=g, dist=dist))


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n", SIZES)
def test_project_and_reconstruct_vs_reference(dist, n):
    x = torch.randn(n)
    got = fk.project(x.to(DEV), 77, 5, BS, dist=dist, block_offset=3, scale=0.5).cpu()
    assert_project_close(got, ref(fk.project, x, 77, 5, BS, dist=dist, block_offset=3, scale=0.5), x * 0.5, BS, dist)
    c = torch.randn(fk.num_blocks(n, BS), 4)
    got = fk.reconstruct(c.to(DEV), 2**63 + 5, n, BS, dist=dist, scale=2.0).cpu()
    assert_recon_close(got, ref(fk.reconstruct, c, 2**63 + 5, n, BS, dist=dist, scale=2.0), 2 * c, BS, dist)


@pytest.mark.parametrize("dist", DISTS)
def test_blocks_spanning_several_programs(dist):
    """Blocks longer than a program's chunk (Triton: up to 8192 elements, CUDA: 4096 / 8192):
    per-chunk partial sums added in order by the second pass, and a partial last chunk."""
    n, bs, K = 2 * 20000 + 123, 20000, 6
    x = torch.randn(n)
    got = fk.project(x.to(DEV), 5, K, bs, dist=dist, block_offset=7).cpu()
    assert_project_close(got, ref(fk.project, x, 5, K, bs, dist=dist, block_offset=7), x, bs, dist)
    c = torch.randn(3, K)
    got = fk.reconstruct(c.to(DEV), 5, n, bs, dist=dist, block_offset=7).cpu()
    assert_recon_close(got, ref(fk.reconstruct, c, 5, n, bs, dist=dist, block_offset=7), c, bs, dist)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dist", DISTS)
def test_dtypes_difference_and_inplace(dtype, dist):
    n, bs = 1300, 1024
    x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    d = x.float() - y.float()
    got = fk.project(x.to(DEV), 4, 3, bs, y=y.to(DEV), dist=dist).cpu()
    assert_project_close(got, ref(fk.project, d, 4, 3, bs, dist=dist), d, bs, dist)
    c = torch.randn(2, 3)
    base = torch.randn(n).to(dtype)
    out = base.clone().to(DEV)
    fk.reconstruct_(out, c.to(DEV), 4, bs, dist=dist, scale=0.5, alpha=3.0)
    want = (base.float() + 1.5 * ref(fk.reconstruct, c, 4, n, bs, dist=dist)).to(dtype)
    assert_recon_close(out.cpu(), want, 1.5 * c, bs, dist, dtype=dtype, base=base)
    r = fk.reconstruct(c.to(DEV), 4, n, bs, dist=dist, dtype=dtype).cpu()
    assert r.dtype == dtype
    assert_recon_close(r, ref(fk.reconstruct, c, 4, n, bs, dist=dist), c, bs, dist, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K", [4, 5, 8, 9])
def test_16bit_rademacher_project_without_y(gb, dtype, K):
    """A 16-bit x without y at K <= 8 takes Triton's small-K kernel (8 chunks a program,
    pipelined, bases in pairs; an odd K's last basis alone, _basis_dot), K = 9 the one-chunk
    kernel: against the reference, and on CUDA bit for bit the fp32 kernel's result for the same
    values (partial chunks, active counts one past K; on a GPU also many CTAs)."""
    if DEV != "cuda" and (dtype != torch.bfloat16 or K == 8):
        pytest.skip("under the interpreter bf16 at K = 4, 5 and 9 check the paths; a GPU checks all")
    sizes = [(4 * (2 * 8192 + 100) + 5000, 2 * 8192 + 100)]
    if DEV == "cuda":
        sizes.append(((1 << 22) + 12345, 1 << 20))
    for n, bs in sizes:
        x = torch.randn(n, device=DEV).to(dtype)
        nb = fk.num_blocks(n, bs)
        active = (torch.arange(nb, device=DEV) % (K + 2)).to(torch.int32)
        for act in (None, active):
            kw = dict(dist="rademacher", block_offset=5, scale=0.5, active=act)
            got = fk.project(x, 2**40 + 3, K, bs, **kw)
            want = ref(
                fk.project, x.float(), 2**40 + 3, K, bs, **dict(kw, active=None if act is None else act.clamp(0, K))
            )
            assert_project_close(got.cpu(), want, 0.5 * x.float().cpu(), bs, "rademacher")
            if gb == "cuda":
                assert torch.equal(got, fk.project(x.float(), 2**40 + 3, K, bs, **kw))


def test_triton_bf16_load_conversion_is_exact_for_every_bf16(gb):
    """_to_f32, through which the Triton project kernels read bf16 (on a GPU, inline PTX: a shift
    and a mask of two values packed in a register), against torch's conversion bit for bit for all
    65536 bf16 bit patterns (a NaN as a NaN): which of the packed pair is which, and the unpacking.
    Under the interpreter this checks _to_f32's Triton form of the shift (the interpreter's own
    conversion is inexact for subnormals); only a GPU runs the PTX (emulated in the test below)."""
    if gb != "triton":
        pytest.skip("the Triton kernels' conversion")
    bits = torch.arange(1 << 16, dtype=torch.int32).to(torch.int16)  # wraps: every 16-bit pattern
    x = bits.view(torch.bfloat16).to(DEV)
    out = torch.empty(1 << 16, dtype=torch.float32, device=DEV)
    _to_f32_kernel[((1 << 16) // 1024,)](x, out, BLOCK=1024)
    want = x.float()
    same = (out.view(torch.int32) == want.view(torch.int32)) | (out.isnan() & want.isnan())
    assert same.all(), f"{(~same).sum().item()} differ; first at bits {int(bits[(~same).nonzero()[0]]) & 0xFFFF:#06x}"


@pytest.mark.skipif(DEV != "cpu", reason="the check runs under the interpreter (CI)")
def test_triton_launches_pass_every_parameter():
    """Under the interpreter every Triton launch of the ops is checked to pass every kernel
    parameter: torch 2.11's inductor compiled a launch that left _project_kernel's PAIR to its
    default into a call with one argument too few (H200, 2026-11-27). The check refuses such a
    launch; the ops' own launches (every interpreter test) pass it."""
    from ferret_kernels import triton_kernels as tk

    if fk.backends.unavailable_reason("triton", torch.device("cpu")):
        pytest.skip("Triton cannot run here")
    x, part = torch.randn(256), torch.zeros(2, 4)
    common = dict(HAS_Y=False, HAS_ACT=False, DIST=0, CHUNK=128)
    with pytest.raises(TypeError, match="_project_kernel launched without \\['PAIR'\\]"):
        tk._wrap(tk._project_kernel)[(2,)](x, x, part, part, 256, 256, 0, 4, 1, 2, **common)
    tk._wrap(tk._project_kernel)[(2,)](x, x, part, part, 256, 256, 0, 4, 1, 2, PAIR=True, **common)
    assert part.abs().sum() > 0


def test_triton_chunk_place_and_input_at_program_ids_past_2_31(gb):
    """_chunk_place / _chunk_input, through which every Triton one-tensor project finds and reads its
    chunk: at chunk ids up to 2^32 - 1 (the pipelined kernel's last program reaches past 2^31 when a
    launch has nearly 2^31 chunks; those ids are past the data, live False) it reads nothing and
    places the chunk by an unsigned division (a signed one made them negative: a read far outside
    the data); live chunks, a partial last one and one past a short last block included, read
    exactly their elements."""
    if gb != "triton":
        pytest.skip("the Triton kernels' chunk indexing")
    C, n = 128, 512
    for pid, live, cpb, bs in [
        (2**31 + 3, 0, 3, 3 * C),
        (2**31 + 6, 0, 1, C),
        (2**32 - 1, 0, 7, 7 * C),
        (2**31 - 1, 1, 2**31 - 1, 1 << 40),  # block 1 of 2^40-element blocks: past the data
        (4, 1, 3, 3 * C - 5),  # block 1's second chunk: elements 3C - 5 + C ..
        (5, 1, 3, 3 * C - 5),  # block 1's third chunk: past the data
        (2, 1, 3, 3 * C - 5),  # block 0's last chunk: C - 5 elements
    ]:
        info = torch.zeros(4, dtype=torch.int64, device=DEV)
        _chunk_place_kernel[(1,)](info, pid, live, cpb, n, bs, CHUNK=C)
        b, c = divmod(pid, cpb)
        start = b * bs + c * C
        valid = max(0, min(C, min(bs, n - b * bs) - c * C)) if live else 0
        assert info.tolist() == [b, c * C, start, valid], (pid, live, info.tolist())
    x = torch.arange(1, n + 1, dtype=torch.float32, device=DEV)
    for pid, cpb, bs, start, valid in [
        (4, 3, 3 * C - 5, 4 * C - 5, 5),
        (5, 3, 3 * C - 5, 0, 0),
        (2, 3, 3 * C - 5, 2 * C, C - 5),
    ]:
        o = torch.full((C,), -1.0, device=DEV)
        info = torch.zeros(1, dtype=torch.int64, device=DEV)
        _chunk_input_kernel[(1,)](x, o, info, pid, cpb, n, bs, CHUNK=C)
        want = torch.zeros(C)
        want[:valid] = x.cpu()[start : start + valid]
        assert torch.equal(o.cpu(), want) and info.item() == 7 + pid // cpb, (pid, info.item())


def test_triton_bf16_unpack_ptx_gives_each_of_a_packed_pair_its_own_float32(gb):
    """_BF16X2_PTX, the inline PTX that _to_f32 runs on an NVIDIA GPU, executed by an emulator of
    its instructions for every bf16 as the first and as the second of a pair: $2 holds the pair as
    inline_asm_elementwise packs it (the first in the low half; its docstring's example unpacks a
    register low part first), $0 must be the first's float32 bits and $1 the second's. The
    interpreter runs the Triton form of the shift, so without this a swap passes every CPU test."""
    if gb != "triton":
        pytest.skip("the Triton kernels' conversion")
    from ferret_kernels import triton_kernels as tk

    lo = np.arange(1 << 16, dtype=np.uint64)
    hi = np.random.default_rng(3).permutation(lo)
    reg = {"$2": lo | (hi << 16)}
    for ln in [t for t in tk._BF16X2_PTX.value.split(";") if t.strip()]:
        op, args = ln.strip().split(None, 1)
        a = [t.strip() for t in args.split(",")]
        if op == "shl.b32":
            reg[a[0]] = (reg[a[1]] << int(a[2])) & 0xFFFFFFFF
        elif op == "and.b32":
            reg[a[0]] = reg[a[1]] & int(a[2], 0)
        else:
            raise AssertionError(f"instruction not emulated: {ln!r}")

    def f32_bits(b):
        t = torch.from_numpy(b.astype(np.int32)).to(torch.int16).view(torch.bfloat16).float()
        return t.view(torch.int32).numpy().view(np.uint32).astype(np.uint64)

    assert (reg["$0"] == f32_bits(lo)).all() and (reg["$1"] == f32_bits(hi)).all()


def _sequential_rademacher(c, seed, n, bs, scale, active, base=None):
    """Reconstruct in numpy float32, one add per basis in order k = 0, 1, ... (each add of
    +-c[b, k] is exact input to one rounding): the bits every device kernel must give."""
    nb, K = c.shape
    out = np.zeros(n, np.float32) if base is None else base.copy()
    for b in range(nb):
        m = min(bs, n - b * bs)
        acc = np.zeros(m, np.float32)
        for k in range(max(0, min(int(active[b]), K))):
            acc = acc + rng_numpy.basis(seed, 7 + b, k, m, "rademacher").astype(np.float32) * np.float32(c[b, k])
        out[b * bs : b * bs + m] += acc * np.float32(scale)
    return out


@pytest.mark.parametrize("K", [1, 4, 5])
def test_rademacher_reconstruct_adds_the_bases_in_order_bit_for_bit(K):
    """Triton adds rademacher bases two a trip and CUDA four: the adds stay in basis order, so
    the result is the sequential float32 sum's, bit for bit (odd K and odd active counts: the
    pair's missing second basis adds nothing), into a new tensor and in place (scale 1: the
    in-place add then rounds once whether or not the GPU fuses it with the scaling)."""
    n, bs = 2 * 8192 + 8192 + 300, 8192 + 77  # blocks of two chunks and a partial one
    nb = fk.num_blocks(n, bs)
    c = torch.randn(nb, K)
    active = torch.tensor([K, min(3, K), 0, K][:nb], dtype=torch.int32)
    want = _sequential_rademacher(c.numpy(), 99, n, bs, 0.75, active)
    kw = dict(dist="rademacher", block_offset=7, scale=0.75, active=active.to(DEV))
    got = fk.reconstruct(c.to(DEV), 99, n, bs, **kw).cpu().numpy()
    assert np.array_equal(got.view(np.int32), want.view(np.int32))
    base = torch.randn(n)
    out = base.clone().to(DEV)
    fk.reconstruct_(out, c.to(DEV), 99, bs, **dict(kw, scale=1.0))  # base + 1 * sum: one rounding, fused or not
    want = _sequential_rademacher(c.numpy(), 99, n, bs, 1.0, active, base.numpy())
    assert np.array_equal(out.cpu().numpy().view(np.int32), want.view(np.int32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_rademacher_project_adds_in_its_documented_order(gb, dtype):
    """The CUDA rademacher project on the GPU gives, bit for bit, conftest's model of its adds (the
    emulator's test of the same name runs the host form; here the inline PTX dots and the four-basis
    shuffle tree run): a block of 34 chunks with a partial last one, a short last block, K = 6,
    active counts, y and an element offset (unaligned loads). Triton adds in another order (not
    pinned: its projections stay within float32 rounding of the reference)."""
    if gb != "cuda":
        pytest.skip("the CUDA kernel's order; Triton's is its own")
    torch.manual_seed(6)
    bs = 33 * 8192 + 333
    n = bs + 2 * 8192 + 40
    x, y = torch.randn(n + 1).to(dtype), torch.randn(n).to(dtype)
    active = torch.tensor([7, 0], dtype=torch.int32)
    xd = x.to(DEV)
    for extra in (dict(), dict(y=y, active=active)):
        dev = {k: v.to(DEV) for k, v in extra.items()}
        for off in (0, 1):  # aligned, then one element on (a view: the element-wise loads)
            want = cuda_rademacher_project_order(
                x[off : off + n], 2**33 + 1, 6, bs, block_offset=9, scale=0.75, **extra
            )
            got = fk.project(xd[off : off + n], 2**33 + 1, 6, bs, block_offset=9, scale=0.75, **dev).cpu()
            assert torch.equal(got, want)


def test_active_counts_adjoint_and_determinism():
    n, bs, K = 2100, 512, 6
    x = torch.randn(n, device=DEV)
    active = torch.tensor([6, 0, 2, 5, 1], dtype=torch.int32, device=DEV)
    g = fk.project(x, 3, K, bs, dist="uniform", active=active)
    full = fk.project(x, 3, K, bs, dist="uniform")
    mask = torch.arange(K, device=DEV)[None, :] < active[:, None]
    assert torch.equal(g[~mask], torch.zeros_like(g[~mask])) and torch.equal(g[mask], full[mask])
    c = torch.randn(5, K, device=DEV)
    r = fk.reconstruct(c, 3, n, bs, dist="uniform", active=active)
    torch.testing.assert_close(r, fk.reconstruct(c * mask, 3, n, bs, dist="uniform"), rtol=0, atol=1e-6)
    lhs = (full.double() * c.double()).sum()
    rhs = (x.double() * fk.reconstruct(c, 3, n, bs, dist="uniform").double()).sum()
    assert abs(lhs - rhs).item() <= 1e-6 * (x.abs().sum() * c.abs().max() * 2).item()
    assert torch.equal(fk.project(x, 3, K, bs, dist="uniform"), full)  # repeatable, bit for bit


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_results_depend_on_the_data_not_on_where_it_sits_in_memory(dist, dtype):
    """A view at an odd element offset (an unaligned pointer) gives the same bits as an aligned
    copy of the same data: on a GPU, Triton compiles another variant for unaligned pointers
    (other vector widths, so another reduction order) unless the wrapper aligns its inputs."""
    if DEV != "cuda" and dist != "rademacher":
        # the interpreter compiles no variants: what it can check, the wrapper's handling of an
        # unaligned view (reconstruct_ written back in place), is the same for every dist (the
        # other two took 30 s of interpreter time)
        pytest.skip("under the interpreter one dist checks the wrapper; a GPU checks all three")
    bs = 4096 if DEV == "cuda" else 512  # small under the interpreter (only a GPU specializes)
    n, K = 4 * bs + 5, 5
    big = torch.randn(n + 3, device=DEV).to(dtype)
    yb = torch.randn(n + 3, device=DEV).to(dtype)
    for off in (1, 3):
        x, y = big[off : off + n], yb[off : off + n]
        assert x.data_ptr() % 16 != 0
        xa, ya = x.clone(), y.clone()
        assert xa.data_ptr() % 16 == 0
        assert torch.equal(fk.project(x, 11, K, bs, dist=dist), fk.project(xa, 11, K, bs, dist=dist))
        assert torch.equal(fk.project(x, 11, K, bs, y=y, dist=dist), fk.project(xa, 11, K, bs, y=ya, dist=dist))
        c = torch.randn(5, K, device=DEV)
        out, outa = big.clone()[off : off + n], x.clone()
        fk.reconstruct_(out, c, 11, bs, dist=dist, alpha=-0.5)
        fk.reconstruct_(outa, c, 11, bs, dist=dist, alpha=-0.5)
        assert torch.equal(out, outa)


def test_ops_registered_for_torch_library(gb):
    x = torch.randn(600, device=DEV)
    if gb == "cuda":
        torch.library.opcheck(torch.ops.ferret.project.default, (x, None, 1, 3, 256, 0, "uniform", 1.0, None))
        torch.library.opcheck(
            torch.ops.ferret.reconstruct_.default,
            (torch.randn(600, device=DEV), torch.randn(3, 3, device=DEV), 1, 256, 0, "gaussian", 1.0, 2.0, None),
        )
        return
    # the interpreter executes kernels even under FakeTensorMode, so fake-tensor checks of the
    # triton_op itself need a GPU; the public op's fake kernel is checked everywhere
    utils = ("test_schema", "test_faketensor") if DEV == "cuda" else ("test_schema",)
    torch.library.opcheck(
        torch.ops.ferret._triton_project.default, (x, None, 1, 3, 256, 0, "rademacher", 1.0, None), test_utils=utils
    )
    torch.library.opcheck(
        torch.ops.ferret.project.default,
        (x, None, 1, 3, 256, 0, "gaussian", 1.0, None),
        test_utils=("test_schema", "test_faketensor", "test_autograd_registration"),
    )


@pytest.mark.skipif(
    DEV != "cuda", reason="torch.compile of device kernels needs a GPU (the interpreter runs eager only)"
)
def test_torch_compile_fullgraph_cuda(gb):
    x = torch.randn(5000, device=DEV)
    ns = raw_ops(gb)

    def f(x):
        g = ns[0](x, None, 9, 8, 1024, 0, "rademacher", 1.0, None)
        r = ns[1](g, 9, x.numel(), 1024, 0, "rademacher", 1.0, None, None)
        return g, r, fk.reconstruct(fk.project(x, 9, 8, 1024), 9, x.numel(), 1024)

    for a, b in zip(torch.compile(f, fullgraph=True)(x), f(x)):
        assert torch.equal(a, b)


@pytest.mark.skipif(DEV != "cuda", reason="needs a CUDA device")
def test_large_tensor_64bit_offsets(gb):
    """More than 2^31 elements: offsets past int32 are computed in 64 bits."""
    free, _ = torch.cuda.mem_get_info()
    if free < 12 * 2**30:
        pytest.skip("needs 12 GiB of free GPU memory")
    n = 2**31 + 4097
    x = torch.zeros(n, dtype=torch.bfloat16, device=DEV)
    x[-3000:] = torch.randn(3000, device=DEV).bfloat16()
    bs = 2**20
    g = fk.project(x, 5, 2, bs)
    tail = x[(fk.num_blocks(n, bs) - 1) * bs :]
    want = ref(fk.project, tail.float(), 5, 2, bs, block_offset=fk.num_blocks(n, bs) - 1)
    torch.testing.assert_close(g[-1:].cpu(), want, rtol=1e-5, atol=1e-4)
    assert torch.equal(g[:-1].cpu(), torch.zeros_like(g[:-1].cpu()))
    del x


def test_active_counts_out_of_range_are_clamped_by_the_device_kernels(gb):
    """GPU tensors' active counts are not range-checked on the host (that would sync); the device
    kernels clamp them to [0, K], so a count above K never reaches past a row of part / coeffs."""
    n, bs, K = 1500, 512, 4
    x = torch.randn(n, device=DEV)
    bad = torch.tensor([9, -3, 2], dtype=torch.int32, device=DEV)
    clamped = bad.clamp(0, K)
    proj, rec = raw_ops(gb)
    for dist in ("rademacher", "gaussian"):
        got = proj(x, None, 11, K, bs, 0, dist, 1.0, bad)
        assert torch.equal(got, proj(x, None, 11, K, bs, 0, dist, 1.0, clamped))
        c = torch.randn(3, K, device=DEV)
        assert torch.equal(rec(c, 11, n, bs, 0, dist, 1.0, None, bad), rec(c, 11, n, bs, 0, dist, 1.0, None, clamped))
    if DEV == "cpu":  # where the op layer can check without a sync, it still refuses
        with pytest.raises(ValueError, match=r"active counts must be in \[0, num_bases=4\]"):
            fk.project(x, 11, K, bs, active=bad)


@pytest.mark.skipif(DEV != "cuda", reason="needs a CUDA device")
def test_cuda_graph_capture_with_active_counts(gb):
    """No host synchronisation in project / reconstruct_ (active counts included): both can be
    captured in a CUDA graph, and replaying it gives the eager results."""
    n, bs, K = 70000, 4096, 8
    x = torch.randn(n, device=DEV)
    out = torch.zeros(n, device=DEV)
    act = torch.randint(0, K + 1, (fk.num_blocks(n, bs),), dtype=torch.int32, device=DEV)
    fk.project(x, 3, K, bs, active=act)  # compile / autotune before capture
    fk.reconstruct_(out, torch.ones(fk.num_blocks(n, bs), K, device=DEV), 3, bs, active=act)
    out.zero_()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        gamma = fk.project(x, 3, K, bs, active=act)
        fk.reconstruct_(out, gamma, 3, bs, active=act, alpha=0.5)
    g.replay()
    torch.cuda.synchronize()
    want_g = fk.project(x, 3, K, bs, active=act)
    want = fk.reconstruct_(torch.zeros(n, device=DEV), want_g, 3, bs, active=act, alpha=0.5)
    assert torch.equal(gamma, want_g) and torch.equal(out, want)


@pytest.mark.skipif(DEV != "cuda", reason="needs a CUDA device")
def test_in_place_reconstruct_is_autotuned_on_scratch_not_on_the_callers_tensor(gb):
    """The first reconstruct_ of a new shape key autotunes on a scratch output (at most 2^26
    elements): no full-size copy of the caller's tensor in peak memory, and its values are
    accumulated into exactly once."""
    if gb != "triton":
        pytest.skip("autotuning is the Triton backend's")
    if torch.cuda.mem_get_info()[0] < 6 << 30:
        pytest.skip("needs 6 GiB of free device memory")
    n, bs, K = 1 << 28, 3 << 15, 3  # 1 GiB of float32; a block size no other test tunes
    nb = fk.num_blocks(n, bs)
    c = torch.randn(nb, K, device=DEV)
    out = torch.full((n,), 0.25, device=DEV)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fk.reconstruct_(out, c, 5, bs, alpha=-1.0)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    # the scratch (<= 256 MiB), restore_value's copy of it and triton's 256 MB cache-flush buffer:
    # 768 MiB on an H100 (2026-11-26); tuning on `out` itself would copy 1 GiB plus the buffer
    assert extra < out.numel() * 4, f"{extra / 2**20:.0f} MiB above the inputs while tuning"
    again = torch.full((n,), 0.25, device=DEV)
    fk.reconstruct_(again, c, 5, bs, alpha=-1.0)  # the tuned config, no benchmarking
    assert torch.equal(out, again)
    first = 0.25 - ref(fk.reconstruct, c[:1], 5, bs, bs)
    torch.testing.assert_close(out[:bs].cpu(), first, rtol=1e-5, atol=1e-5)


def test_launch_over_the_grid_limit_is_refused_with_a_clear_error(gb):
    if gb != "triton":
        pytest.skip("the CUDA binding's check needs a CUDA device with 4 GiB free; see test_errors for its text")
    x = torch.empty(2**31 + 1, dtype=torch.bfloat16, device=DEV)  # never written: no memory is touched on the CPU
    with pytest.raises(
        ValueError, match=r"needs 2147483649 programs .* over the GPU's limit of 2\^31 - 1; use a larger block_size"
    ):
        torch.ops.ferret._triton_project(x, None, 1, 1, 1, 0, "rademacher", 1.0, None)
