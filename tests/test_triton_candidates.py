"""Kernel candidates that benchmarks time before one is shipped, and the autotuner's choices:
they must compute what the shipped kernels compute, so that a faster one can replace them.

- Triton `_project_loop_kernel` (CHUNKS chunks a program, bases unrolled, a cp.async pipeline
  on a GPU; fk.project runs it for rademacher 16-bit x without y at K <= 8) against
  `_project_kernel`, with y, active counts, a partial last chunk
  and a grid that does not divide into CHUNKS: bit for bit in Triton's interpreter; on a GPU
  within float32 rounding (the staged loads may give the reduction another order).
- Every autotuning config of the reconstruct kernel (the GPU's list, though the interpreter
  tunes over one) gives the shipped call's bits: the autotuner's choice never shows in a result.
"""

import importlib.util

import pytest
import torch

import ferret_kernels as fk

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("triton") is None
    or fk.backends.unavailable_reason("triton", torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    is not None,
    reason="Triton cannot run here",
)
DEV = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dist", ["rademacher", "uniform", "gaussian"])
@pytest.mark.parametrize("chunks,stages", [(4, 2), (3, 3), (8, 3)])  # (8, 3): what fk.project runs
@pytest.mark.parametrize("K", [4, 5])  # rademacher: bases in pairs, an odd K's last one alone
def test_pipelined_project_candidate_computes_the_shipped_partial_sums(dist, chunks, stages, K):
    import triton

    from ferret_kernels import triton_kernels as tk

    if K % 2 and dist != "rademacher":
        pytest.skip("an odd K changes only rademacher's path (bases in pairs)")
    bs = 1000 if DEV == "cpu" else 100_000
    n = 5 * bs + 77
    chunk = tk._project_chunk(bs, dist)
    cpb = triton.cdiv(bs, chunk)
    nb = triton.cdiv(n, bs)
    g = torch.Generator().manual_seed(3)
    x = torch.randn(n, generator=g).bfloat16().to(DEV)
    y = torch.randn(n, generator=g).bfloat16().to(DEV)
    act = torch.tensor([K, 0, 2, 3, 1, K], dtype=torch.int32, device=DEV)
    k0, k1 = tk._key(2**64 - 3)
    common = dict(HAS_Y=True, HAS_ACT=True, DIST=tk._DIST_ID[dist], CHUNK=chunk, num_warps=4)
    want = torch.zeros(nb * cpb, K, device=DEV)
    tk._project_kernel[(nb * cpb,)](x, y, act, want, n, bs, 7, K, k0, k1, **common)
    got = torch.zeros(nb * cpb, K, device=DEV)  # entries past a block's active count stay zero
    tk._project_loop_kernel[(triton.cdiv(nb * cpb, chunks),)](
        x, y, act, got, n, bs, 7, k0, k1, nb * cpb, K=K, CHUNKS=chunks, STAGES=stages, **common
    )
    if DEV == "cpu":
        assert torch.equal(got, want)
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)
    # the L2 prefetch candidate where it would ship (rademacher, sm_90 and later; the interpreter runs
    # the kernel around it, without the PTX): the same bits
    gpu_ok = DEV == "cpu" or torch.cuda.get_device_capability() >= (9, 0)
    if gpu_ok and dist == "rademacher" and (chunks, stages) == (8, 3):
        pf = torch.empty_like(got)
        for ahead in (0, 2, 10**6):
            pf.zero_()  # as got: inactive entries are not written (active ones are nonzero: below)
            tk._project_loop_kernel[(triton.cdiv(nb * cpb, chunks),)](
                x,
                y,
                act,
                pf,
                n,
                bs,
                7,
                k0,
                k1,
                nb * cpb,
                K=K,
                CHUNKS=chunks,
                STAGES=stages,
                **common,
                ahead=ahead,
                PREFETCH=True,
            )
            assert torch.equal(pf, got), ahead
    # A chunk sums nothing when its basis is inactive or it starts past the end of x (the last
    # block holds 77 elements; with a GPU-sized block its chunks after the first are empty).
    rows = torch.arange(nb * cpb, device=DEV)
    starts = (rows // cpb) * bs + (rows % cpb) * chunk
    empty = (torch.arange(K, device=DEV)[None, :] >= act.repeat_interleave(cpb)[:, None]) | (starts >= n)[:, None]
    assert empty.any() and (~empty).any()
    assert (got[empty] == 0).all() and (got[~empty] != 0).all()


@pytest.mark.parametrize("K,chunks,bs", [(4, 8, None), (5, 3, None), (4, 8, 100)])  # 100: 128-element chunks
def test_negsum_project_candidate_against_an_independent_float64_reference(K, chunks, bs):
    """The negsum candidate (_project_loop_kernel NEGSUM: each dot as tot - 2 * negsum, the negsum
    by predicated adds in inline PTX on a GPU) against float64 dots of x - y with the contract's
    bases (rng_numpy), per chunk: within float32 rounding of the chunk's l1 norm, with y, active
    counts (clamped), an odd K, a short last block and chunk. On a GPU the inline PTX must give the
    bits of the same adds in Triton operations (NEGSUM 2), which the interpreter runs for both."""
    import numpy as np
    import triton

    from ferret_kernels import rng_numpy
    from ferret_kernels import triton_kernels as tk

    bs = bs or (1000 if DEV == "cpu" else 100_000)
    n = 5 * bs + 77
    chunk = tk._project_chunk(bs, "rademacher")
    cpb, nb = triton.cdiv(bs, chunk), triton.cdiv(n, bs)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(n, generator=g).bfloat16().to(DEV)
    y = torch.randn(n, generator=g).bfloat16().to(DEV)
    act = torch.tensor([K, 0, 2, K + 3, -1, K], dtype=torch.int32, device=DEV)  # clamped to [0, K]
    seed = 2**64 - 3
    k0, k1 = tk._key(seed)

    def run(negsum):
        part = torch.zeros(nb * cpb, K, device=DEV)
        tk._project_loop_kernel[(triton.cdiv(nb * cpb, chunks),)](
            x,
            y,
            act,
            part,
            n,
            bs,
            7,
            k0,
            k1,
            nb * cpb,
            K=K,
            HAS_Y=True,
            HAS_ACT=True,
            DIST=0,
            CHUNK=chunk,
            CHUNKS=chunks,
            STAGES=3,
            NEGSUM=negsum,
            num_warps=4,
        )
        return part.cpu()

    got = run(1)
    assert torch.equal(got, run(2))  # a GPU: PTX vs Triton operations; the interpreter: one path
    d = (x.float() - y.float()).cpu().double().numpy()  # the kernel's float32 difference, exactly
    ref, other, l1 = np.zeros((nb * cpb, K)), np.zeros((nb * cpb, K)), np.zeros(nb * cpb)
    for b in range(nb):
        for c in range(cpb):
            lo, hi = b * bs + c * chunk, min(b * bs + min(bs, (c + 1) * chunk), n)
            if lo >= hi:
                continue
            l1[b * cpb + c] = np.abs(d[lo:hi]).sum()
            for k in range(min(max(int(act[b]), 0), K)):
                v = [rng_numpy.basis(seed, 7 + b, kk, hi - lo, "rademacher", start=c * chunk) for kk in (k, k + 1)]
                ref[b * cpb + c, k], other[b * cpb + c, k] = v[0] @ d[lo:hi], v[1] @ d[lo:hi]
    # float32 sums of up to 8192 terms, tot - 2 * negsum: an empirical tolerance, not a worst-case
    # bound (on a GPU tot adds a thread's 64 elements in sequence, ~70 roundings: 6.7e-6 of the l1
    # norm at worst). Measured: the largest error is 0.2% of it (0.04% for the sign-flip dots); the
    # next basis' dot is a median 5700-24600 tolerances away
    tol = 4.5e-6 * l1[:, None]
    err = np.abs(got.double().numpy() - ref)
    assert (err <= tol).all(), (
        f"max error {err.max():.3g} over tol, at {np.unravel_index((err - tol).argmax(), err.shape)}"
    )
    assert (ref != 0).sum() > 0.5 * ((got != 0).sum().item()) and ((got != 0).numpy() == (ref != 0)).all()
    # the tolerance tells one basis from the next (a wrong bit mapping is far outside it)
    off = np.abs(got.double().numpy() - other)[ref != 0]
    assert np.median(off) > 100 * tol.max()
    # and the sign-flip dots the op runs (NEGSUM 0) are within it too: other bits, the same sums
    assert (np.abs(run(0).double().numpy() - ref) <= tol).all()


def _run_negsum_ptx(ptx, operands):
    """Execute the negsum candidate's inline PTX (tk._NEGSUM8_PTX) on numpy operands, one element
    at a time: $0 the result, $1.. the inputs (float32 or uint32 arrays). Knows exactly the
    instructions that PTX uses; any other fails, so a change to it must come here too."""
    import re

    import numpy as np

    out = np.empty(len(operands[0]), dtype=np.float32)
    lines = [ln.strip() for ln in ptx.strip().strip("{}").split(";") if ln.strip()]
    for e in range(len(out)):
        reg = {f"${i + 1}": op[e] for i, op in enumerate(operands)}

        def val(a, reg=reg):
            return reg[a] if a in reg else np.uint32(int(a, 0))

        for ln in lines:
            pred, ins = ln.split(None, 1) if ln.startswith("@") else ("", ln)
            op, args = ins.split(None, 1)
            a = [t.strip() for t in args.split(",")]
            if op == ".reg" or (pred and not reg[pred[1:]]):
                continue
            if op == "shr.b32":
                reg[a[0]] = np.uint32(int(val(a[1])) >> min(int(val(a[2])), 32))
            elif op == "selp.f32":  # d = p ? a : b; b a float literal 0fXXXXXXXX (its bits)
                assert a[2].startswith("0f"), ln
                reg[a[0]] = np.float32(reg[a[1]]) if reg[a[3]] else np.uint32(int(a[2][2:], 16)).view(np.float32)
            elif op == "and.b32":
                reg[a[0]] = np.uint32(int(val(a[1])) & int(val(a[2])))
            elif op == "setp.ne.b32":
                reg[a[0]] = int(val(a[1])) != int(val(a[2]))
            elif op == "add.rn.f32":
                reg[a[0]] = np.float32(reg[a[1]]) + np.float32(reg[a[2]])  # float32 round to nearest
            else:
                raise AssertionError(f"instruction not emulated: {ln!r}")
            assert re.fullmatch(r"[$\w]+", a[0]), ln
        out[e] = reg["$0"]
    return out


def test_negsum_inline_ptx_adds_what_its_triton_form_adds():
    """The inline PTX of the negsum candidate, executed by an emulator of its instructions, gives the
    bits of _negsum8's Triton form (what the interpreter and the float64 test above check), run as
    a kernel: the same elements, in the same order, from -0.0; signed zeros, subnormals and
    infinities included. On a GPU the PTX itself runs too, and must give the emulator's bits."""
    import numpy as np

    from ferret_kernels import triton_kernels as tk

    rng = np.random.default_rng(11)
    m = 4000
    special = np.array([0.0, -0.0, 1e-45, -1e-45, 1e-39, np.inf, -np.inf, 3e38], dtype=np.float32)
    xs = [
        np.where(rng.random(m) < 0.2, rng.choice(special, m), rng.standard_normal(m)).astype(np.float32)
        for _ in range(8)
    ]
    w = rng.integers(0, 2**32, m, dtype=np.uint64).astype(np.uint32)
    w[:8] = [0, 0xFFFFFFFF, 0x80000000, 1, 0xFF, 0xFF00, 0xFF0000, 0xFF000000]
    sh = rng.choice(np.array([0, 8, 16, 24], dtype=np.uint32), m)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf, 3e38 + 3e38
        got = _run_negsum_ptx(tk._NEGSUM8_PTX.value, xs + [w, sh])
    # _negsum8 itself, run as a kernel (the interpreter, or a GPU): its Triton form, and on a GPU its PTX
    x_t = torch.from_numpy(np.stack(xs)).to(DEV)
    w_t, sh_t = (torch.from_numpy(a.view(np.int32)).to(DEV) for a in (w, sh))
    forms = (False, True) if DEV == "cuda" else (False,)
    for ptx in forms:
        out = torch.empty(m, dtype=torch.float32, device=DEV)
        with np.errstate(invalid="ignore", over="ignore"):  # the interpreter's numpy adds
            _negsum8_kernel[(triton.cdiv(m, 512),)](x_t, w_t, sh_t, out, m, PTX=ptx, BLOCK=512)
        want = out.cpu().numpy()
        same = (got.view(np.uint32) == want.view(np.uint32)) | (np.isnan(got) & np.isnan(want))  # -0.0 is not +0.0
        assert same.all(), f"PTX={ptx}: {(~same).sum()} of {m} differ; first at {np.argmin(same)}"
    assert np.isnan(got).any() and (got.view(np.uint32) == 0x80000000).any()  # inf - inf, and an empty sum


if importlib.util.find_spec("triton") is not None:  # conftest has set TRITON_INTERPRET by now
    import triton
    import triton.language as tl

    from ferret_kernels import triton_kernels as tk

    @triton.jit
    def _negsum8_kernel(x_ptr, w_ptr, sh_ptr, o_ptr, n, PTX: tl.constexpr, BLOCK: tl.constexpr):
        """o[i] = tk._negsum8 of x[0..7, i] (x: an [8, n] float32 array), w[i], sh[i]."""
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < n
        w = tl.load(w_ptr + i, mask=m).to(tl.uint32, bitcast=True)
        sh = tl.load(sh_ptr + i, mask=m).to(tl.uint32, bitcast=True)
        s = tk._negsum8(
            tl.load(x_ptr + i, mask=m),
            tl.load(x_ptr + n + i, mask=m),
            tl.load(x_ptr + 2 * n + i, mask=m),
            tl.load(x_ptr + 3 * n + i, mask=m),
            tl.load(x_ptr + 4 * n + i, mask=m),
            tl.load(x_ptr + 5 * n + i, mask=m),
            tl.load(x_ptr + 6 * n + i, mask=m),
            tl.load(x_ptr + 7 * n + i, mask=m),
            w,
            sh,
            PTX,
        )
        tl.store(o_ptr + i, s, mask=m)

    @triton.jit
    def _prefetch_ranges_kernel(
        out_ptr, base, num_chunks, cpb, numel, block_size, ELEM: tl.constexpr, CHUNK: tl.constexpr
    ):
        """Program q: tk._prefetch_range of chunk q (offset from base, bytes) into out[q]."""
        q = tl.program_id(0).to(tl.int64)
        a, nbytes = tk._prefetch_range(base, q, num_chunks, cpb, numel, block_size, ELEM, CHUNK)
        tl.store(out_ptr + 2 * q, a - base)
        tl.store(out_ptr + 2 * q + 1, nbytes)


@pytest.mark.parametrize("misalign", [0, 2, 6, 14])
@pytest.mark.parametrize("elem", [2, 4])
@pytest.mark.parametrize("tail", [40, 5])  # block_size % chunk; 5: a last chunk of no whole 16-byte unit
def test_prefetch_range_covers_each_chunk_s_whole_16_byte_units_and_nothing_else(misalign, elem, tail):
    """The L2 prefetch candidate's range (_prefetch_range, kernels.cuh's prefetch_chunk_l2): for every
    chunk, 16-byte aligned, a multiple of 16 bytes, inside the chunk's bytes (never past its block or
    the data), covering every whole 16-byte unit of it; nothing past the last chunk, for a chunk wholly
    past the data, or for one holding no whole unit (its size would go negative). Blocks that are not
    whole chunks, a short last block, inputs off alignment. The chunk bounds here restate the kernels'
    numbering (chunk q: block q // cpb, offset (q % cpb) * chunk, clipped to the block and the data);
    the 16-byte trimming is computed independently."""
    chunk, bs = 1024, 3 * 1024 + tail
    numel = 2 * bs + 1500  # the last block: one full chunk, one partial, two past the data
    cpb = -(-bs // chunk)
    num_chunks = -(-numel // bs) * cpb
    base = (1 << 40) + misalign  # an address with no memory behind it: only the arithmetic runs
    got = torch.full((num_chunks + 3, 2), -1, dtype=torch.int64, device=DEV)
    _prefetch_ranges_kernel[(num_chunks + 3,)](got, base, num_chunks, cpb, numel, bs, ELEM=elem, CHUNK=chunk)
    got = got.cpu()
    for q, (off, nbytes) in enumerate(got.tolist()):
        b, cs = divmod(q, cpb)
        cs *= chunk
        ln = min(chunk, min(bs, numel - b * bs) - cs) if q < num_chunks else 0
        lo = base + (b * bs + cs) * elem
        hi = lo + max(ln, 0) * elem
        first, last = -(-lo // 16) * 16, hi // 16 * 16  # the whole 16-byte units of the chunk
        want = (first - base, last - first) if ln > 0 and last > first else (None, 0)
        assert nbytes == want[1], (q, off, nbytes, want)
        if nbytes:
            assert off == want[0], (q, off, want)


def _recon_gpu_configs():
    from ferret_kernels import triton_kernels as tk

    return [(c.kwargs["CHUNK"], c.num_warps) for c in tk._recon_configs(gpu=True)]


@pytest.mark.parametrize("dist", ["rademacher", "uniform"])
@pytest.mark.parametrize("chunk,warps", _recon_gpu_configs())
def test_every_reconstruct_config_gives_the_shipped_bits(chunk, warps, dist):
    """Each element adds its bases' terms in k order whatever the tile, so every config (the
    64-accumulator ones for rademacher included) is bit-identical to fk.reconstruct_: blocks of
    several chunks (the last partial) or of less than one, a partial last block, active counts,
    accumulate."""
    import triton

    from ferret_kernels import triton_kernels as tk

    if DEV == "cpu" and dist != "rademacher":  # the interpreter runs the same code for both dists
        pytest.skip("uniform's configs are checked on a GPU (the interpreter compiles no variants)")
    K, seed, off = 5, 2**64 - 9, 11
    k0, k1 = tk._key(seed)
    for bs in (4 * 1024 + 48,):  # a multiple of 16 (the wide configs' condition); 5 chunks of 1024
        n = 2 * bs + 123
        nb = triton.cdiv(n, bs)
        g = torch.Generator().manual_seed(bs)
        c = torch.randn(nb, K, generator=g).to(DEV)
        act = torch.tensor([5, 2, 0], dtype=torch.int32, device=DEV)[:nb]
        base = torch.randn(n, generator=g).bfloat16().to(DEV)
        want = base.clone()
        with fk.use_backend("triton"):
            fk.reconstruct_(want, c, seed, bs, block_offset=off, dist=dist, scale=0.5, alpha=-2.0, active=act)
        got = base.clone()
        tk._reconstruct_kernel.fn[(nb * triton.cdiv(bs, chunk),)](
            c,
            got,
            act,
            n,
            bs,
            off,
            K,
            k0,
            k1,
            -1.0,
            ACCUM=True,
            HAS_ACT=True,
            DIST=tk._DIST_ID[dist],
            CHUNK=chunk,
            num_warps=warps,
            enable_fp_fusion=tk._FP_FUSION,
        )
        assert torch.equal(got, want), (bs, chunk, warps)
