"""The CUDA kernels of csrc/cuda/kernels.cuh, executed without a GPU.

tests/cuda_emu compiles the kernels with g++ against a host emulation of the CUDA execution
model (CTAs of real threads, __syncthreads and __shfl_xor_sync as barriers, strict about
divergence), under AddressSanitizer + UBSan, so any access outside a tensor aborts the run,
and once under ThreadSanitizer, where a missing barrier is a reported data race.
Each test writes the inputs to files, runs one op in that process, and checks the result
against the reference, the contract (rng_numpy) and the CPU kernel, like the device tests
do on a real GPU. What this cannot show: speed, and behaviour that only the GPU's memory
model or nvcc's code generation would produce (those are the device tests' job).
"""

import os
import shutil
import subprocess

import numpy as np
import pytest
import torch

import ferret_kernels as fk
from ferret_kernels import rng_numpy

from conftest import DISTS, DTYPES, assert_project_close, assert_recon_close, cuda_rademacher_project_order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EMU = os.path.join(ROOT, "tests", "cuda_emu")
DIST_ID = {"rademacher": 0, "uniform": 1, "gaussian": 2}
DT = {torch.float32: "f32", torch.bfloat16: "bf16", torch.float16: "f16"}
# the kernels' work split: a CTA of 256 threads covers 8192 (rademacher) or 4096 elements
CHUNK = {"rademacher": 8192, "uniform": 4096, "gaussian": 4096}

pytestmark = pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")


def _build(out_dir, sanitize):
    exe = os.path.join(out_dir, f"cuda_emu_{sanitize.replace(',', '_')}")
    probe = os.path.join(out_dir, "probe.cpp")
    with open(probe, "w") as f:
        f.write("int main() { return 0; }\n")
    if subprocess.run(["g++", f"-fsanitize={sanitize}", probe, "-o", probe + ".out"], capture_output=True).returncode:
        pytest.skip(f"g++ cannot link -fsanitize={sanitize} here (sanitizer runtime not installed)")
    cmd = [
        "g++",
        "-std=c++20",
        "-O1",
        "-g",
        f"-fsanitize={sanitize}",
        "-fno-sanitize-recover=all",
        "-fno-strict-aliasing",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-Wno-unknown-pragmas",
        "-I",
        os.path.join(EMU, "include"),
        "-I",
        os.path.join(ROOT, "csrc"),
        os.path.join(EMU, "main.cpp"),
        "-o",
        exe,
        "-pthread",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    return exe


class Emu:
    def __init__(self, exe, tmp):
        self.exe, self.tmp = exe, tmp
        self.runs = 0
        self.order = "forward"  # CUDA_EMU_ORDER: the order the emulator runs a launch's CTAs in

    def _dir(self):
        self.runs += 1
        d = os.path.join(self.tmp, f"run{self.runs}")
        os.makedirs(d)
        return d

    def _run(self, cmd, d, **kw):
        args = [self.exe, cmd, f"dir={d}"] + [f"{k}={v}" for k, v in kw.items()]
        env = dict(os.environ, TSAN_OPTIONS="halt_on_error=1", CUDA_EMU_ORDER=self.order)
        res = subprocess.run(args, capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, f"{' '.join(args)}\nexit {res.returncode}\n{res.stderr[-4000:]}"

    @staticmethod
    def _put(path, t):
        t = t.contiguous().cpu()
        raw = t.view(torch.int16) if t.dtype in (torch.bfloat16, torch.float16) else t
        raw.numpy().tofile(path)

    @staticmethod
    def _get(path, dtype, shape):
        if dtype in (torch.bfloat16, torch.float16):
            return torch.from_numpy(np.fromfile(path, dtype=np.int16)).view(dtype).reshape(shape)
        np_dt = {torch.float32: np.float32, torch.int64: np.int64}[dtype]
        return torch.from_numpy(np.fromfile(path, dtype=np_dt)).reshape(shape)

    def project(
        self,
        x,
        seed,
        K,
        bs,
        y=None,
        block_offset=0,
        dist="rademacher",
        scale=1.0,
        active=None,
        misalign=0,
        fused=0,
        prefetch=-1,
        chunks=1,
        quad=0,
    ):
        d = self._dir()
        self._put(os.path.join(d, "x.bin"), x)
        if y is not None:
            self._put(os.path.join(d, "y.bin"), y)
        if active is not None:
            self._put(os.path.join(d, "active.bin"), active.to(torch.int32))
        self._run(
            "project",
            d,
            dtype=DT[x.dtype],
            dist=DIST_ID[dist],
            numel=x.numel(),
            block_size=bs,
            block_offset=block_offset,
            K=K,
            seed=seed,
            scale=repr(float(scale)),
            misalign=misalign,
            fused=fused,
            prefetch=prefetch,
            chunks=chunks,
            quad=quad,
        )
        return self._get(os.path.join(d, "out.bin"), torch.float32, (fk.num_blocks(x.numel(), bs), K))

    def reconstruct(
        self,
        coeffs,
        seed,
        numel,
        bs,
        block_offset=0,
        dist="rademacher",
        scale=1.0,
        dtype=torch.float32,
        out=None,
        alpha=1.0,
        active=None,
        misalign=0,
    ):
        d = self._dir()
        self._put(os.path.join(d, "coeffs.bin"), coeffs.float())
        if out is not None:
            self._put(os.path.join(d, "out.bin"), out)
            dtype = out.dtype
        if active is not None:
            self._put(os.path.join(d, "active.bin"), active.to(torch.int32))
        self._run(
            "reconstruct",
            d,
            dtype=DT[dtype],
            dist=DIST_ID[dist],
            numel=numel,
            block_size=bs,
            block_offset=block_offset,
            K=coeffs.shape[1],
            seed=seed,
            scale=repr(float(scale)),
            alpha=repr(float(alpha)),
            accumulate=int(out is not None),
            misalign=misalign,
        )
        return self._get(os.path.join(d, "out.bin"), dtype, (numel,))

    def project_multi(self, xs, seed, K, bs, segs, ys=None, dist="rademacher", scale=1.0, active=None):
        """segs: (lead, first block, row) per tensor, in launch order; returns [launch rows, K]."""
        d = self._dir()
        for i, x in enumerate(xs):
            self._put(os.path.join(d, f"x{i}.bin"), x)
            if ys is not None:
                self._put(os.path.join(d, f"y{i}.bin"), ys[i])
        if active is not None:
            self._put(os.path.join(d, "active.bin"), active.to(torch.int32))
        spec = ",".join(f"{x.numel()}:{lead}:{g}:{row}" for x, (lead, g, row) in zip(xs, segs))
        self._run(
            "project_multi",
            d,
            dtype=DT[xs[0].dtype],
            dist=DIST_ID[dist],
            block_size=bs,
            K=K,
            seed=seed,
            scale=repr(float(scale)),
            segs=spec,
        )
        rows = sum(fk.num_blocks(x.numel(), bs, lead) for x, (lead, _, _) in zip(xs, segs))
        return self._get(os.path.join(d, "out.bin"), torch.float32, (rows, K))

    def reconstruct_multi(self, outs, coeffs, seed, bs, segs, dist="rademacher", scale=1.0, alpha=1.0, active=None):
        """outs[i] += alpha * scale * V c in place, c the rows of segs[i] = (lead, first block, row)."""
        d = self._dir()
        for i, o in enumerate(outs):
            self._put(os.path.join(d, f"out{i}.bin"), o)
        self._put(os.path.join(d, "coeffs.bin"), coeffs.float())
        if active is not None:
            self._put(os.path.join(d, "active.bin"), active.to(torch.int32))
        spec = ",".join(f"{o.numel()}:{lead}:{g}:{row}" for o, (lead, g, row) in zip(outs, segs))
        self._run(
            "reconstruct_multi",
            d,
            dtype=DT[outs[0].dtype],
            dist=DIST_ID[dist],
            block_size=bs,
            K=coeffs.shape[1],
            seed=seed,
            scale=repr(float(scale)),
            alpha=repr(float(alpha)),
            segs=spec,
        )
        return [self._get(os.path.join(d, f"out{i}.bin"), o.dtype, (o.numel(),)) for i, o in enumerate(outs)]

    def philox(self, ctr, seed):
        d = self._dir()
        self._put(os.path.join(d, "ctr.bin"), ctr.to(torch.int64))
        self._run("philox", d, n=ctr.shape[0], seed=seed)
        return self._get(os.path.join(d, "out.bin"), torch.int64, tuple(ctr.shape))


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("cuda_emu"))
    return Emu(_build(tmp, "address,undefined"), tmp)


def ref(fn, *args, **kw):
    with fk.use_backend("reference"):
        return fn(*args, **kw)


def cpu(fn, *args, **kw):
    if "cpu" not in fk.available_backends("cpu"):
        pytest.skip("ferret_kernels._C not built")
    with fk.use_backend("cpu"):
        return fn(*args, **kw)


def test_emulator_rejects_divergent_barriers_and_out_of_bounds_reads(emu):
    """The harness is only worth its passes if it fails on the bugs it is there to catch."""
    env = dict(os.environ, CUDA_EMU_TIMEOUT_S="5")
    res = subprocess.run([emu.exe, "selftest", "what=deadlock"], capture_output=True, text=True, timeout=120, env=env)
    assert res.returncode == 86 and "divergence" in res.stderr, res.stderr
    res = subprocess.run([emu.exe, "selftest", "what=oob"], capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "heap-buffer-overflow" in res.stderr, res.stderr[-2000:]
    for order, why in (("sideways", "expected forward, reverse or shuffle"), ("shuffle:x7", "not a number")):
        env = dict(os.environ, CUDA_EMU_ORDER=order)
        res = subprocess.run([emu.exe, "selftest", "what=deadlock"], capture_output=True, text=True, env=env)
        assert res.returncode == 86 and why in res.stderr, res.stderr


def test_philox_known_answer_and_stream(emu):
    ctr = np.random.default_rng(3).integers(0, 2**32, size=(300, 4), dtype=np.uint64)
    ctr[0] = 0
    seed = 2**64 - 2
    got = emu.philox(torch.from_numpy(ctr.astype(np.int64)), seed).numpy()
    assert np.array_equal(got, rng_numpy.philox4x32_10(ctr, rng_numpy.seed_key(seed)).astype(np.int64))
    kat = emu.philox(torch.tensor([[0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344]]), 0xA4093822 | (0x299F31D0 << 32))
    assert kat[0].tolist() == [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]


@pytest.mark.parametrize("dist", DISTS)
def test_bases_match_contract_and_cpu_kernel(emu, dist):
    """A unit coefficient reconstructs one basis; the block spans several CTAs and ends mid-chunk."""
    seed, g, k = 2**63 + 12345, 9, 2
    n = 2 * CHUNK[dist] + 1000
    c = torch.zeros(1, 3)
    c[0, k] = 1.0
    got = emu.reconstruct(c, seed, n, n, block_offset=g, dist=dist)
    want = torch.from_numpy(rng_numpy.basis(seed, g, k, n, dist))
    on_cpu = cpu(fk.reconstruct, c, seed, n, n, block_offset=g, dist=dist)
    if dist == "gaussian":
        torch.testing.assert_close(got, want, rtol=0, atol=2e-5 + 4e-6 * want.abs().max().item())
        torch.testing.assert_close(got, on_cpu, rtol=0, atol=1e-6 * on_cpu.abs().max().item())
    else:
        assert torch.equal(got, want)
        assert torch.equal(got, on_cpu)


# (numel, block_size, K): single elements, partial warps, block edges, several CTAs per block
# with a partial last one, K past the kernel's 32-basis reduction tile, and blocks of 2^16 (8 or
# 16 chunks a block: a power of two past 4, the chunk's block by a shift)
CASES = [
    (1, 512, 3),
    (509, 512, 5),
    (512, 512, 2),
    (3 * 512 + 17, 512, 5),
    (2 * 9000 + 123, 9000, 4),
    (700, 256, 33),
    (3 * 65536 + 5, 65536, 3),
]


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("n,bs,K", CASES)
def test_project_and_reconstruct_vs_reference(emu, dist, n, bs, K):
    x = torch.randn(n)
    got = emu.project(x, 77, K, bs, dist=dist, block_offset=3, scale=0.5)
    assert_project_close(got, ref(fk.project, x, 77, K, bs, dist=dist, block_offset=3, scale=0.5), x * 0.5, bs, dist)
    c = torch.randn(fk.num_blocks(n, bs), K)
    got = emu.reconstruct(c, 2**63 + 5, n, bs, dist=dist, scale=2.0, block_offset=1)
    assert_recon_close(
        got, ref(fk.reconstruct, c, 2**63 + 5, n, bs, dist=dist, scale=2.0, block_offset=1), 2 * c, bs, dist
    )
    if dist == "rademacher":  # +-c sums in basis order, as the CPU kernel: bit for bit
        assert torch.equal(got, cpu(fk.reconstruct, c, 2**63 + 5, n, bs, dist=dist, scale=2.0, block_offset=1))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("dist", DISTS)
def test_dtypes_difference_and_inplace(emu, dtype, dist):
    n, bs = 5000, 4100  # the second block starts off the 16-byte grid for 16-bit types
    x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    d = x.float() - y.float()
    got = emu.project(x, 4, 3, bs, y=y, dist=dist)
    assert_project_close(got, ref(fk.project, d, 4, 3, bs, dist=dist), d, bs, dist)
    c = torch.randn(2, 3)
    base = torch.randn(n).to(dtype)
    out = emu.reconstruct(c, 4, n, bs, dist=dist, scale=0.5, alpha=3.0, out=base)
    want = (base.float() + 1.5 * ref(fk.reconstruct, c, 4, n, bs, dist=dist)).to(dtype)
    assert_recon_close(out, want, 1.5 * c, bs, dist, dtype=dtype, base=base)
    r = emu.reconstruct(c, 4, n, bs, dist=dist, dtype=dtype)
    assert r.dtype == dtype
    assert_recon_close(r, ref(fk.reconstruct, c, 4, n, bs, dist=dist), c, bs, dist, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_unaligned_pointers_give_the_same_bits(emu, dtype):
    """Shifted by one element the kernels leave their 16-byte vector loads and stores for the
    element path; every output must be unchanged, bit for bit."""
    n, bs, K = 9000, 8192 + 64, 3
    x = torch.randn(n).to(dtype)
    base = emu.project(x, 11, K, bs, dist="uniform")
    assert torch.equal(emu.project(x, 11, K, bs, dist="uniform", misalign=1), base)
    c = torch.randn(2, K)
    r = emu.reconstruct(c, 11, n, bs, dist="uniform", dtype=dtype)
    assert torch.equal(emu.reconstruct(c, 11, n, bs, dist="uniform", dtype=dtype, misalign=1), r)
    acc = emu.reconstruct(c, 11, n, bs, dist="uniform", out=x, alpha=-2.0)
    assert torch.equal(emu.reconstruct(c, 11, n, bs, dist="uniform", out=x, alpha=-2.0, misalign=1), acc)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("K", [1, 4, 8, 9])
def test_16bit_project_gives_the_fp32_kernels_bits(emu, dtype, K):
    """Rademacher project of a 16-bit x without y gives, bit for bit, what the fp32 kernel gives
    for the same values (16-byte vector loads widened in registers against fp32 loads): blocks
    of 3 chunks, a partial chunk at each block's end, active counts (one past K), and an
    unaligned pointer (the element-wise load path). (K <= 8 ran a packed-run kernel for a while;
    it measured slower on an H100 and is gone.)"""
    torch.manual_seed(K)
    bs = 2 * 8192 + 100  # 3 chunks a block, the last one partial
    n = 4 * bs + 5000  # 5 blocks, 15 chunks
    x = torch.randn(n).to(dtype)
    active = torch.tensor([K, 0, K + 1, max(K - 1, 0), 1], dtype=torch.int32)
    kw = dict(block_offset=5, dist="rademacher", scale=0.5, active=active)
    got = emu.project(x, 2**40 + 3, K, bs, **kw)
    assert torch.equal(got, emu.project(x.float(), 2**40 + 3, K, bs, **kw))
    assert torch.equal(emu.project(x, 2**40 + 3, K, bs, misalign=1, **kw), got)
    want = ref(fk.project, x.float(), 2**40 + 3, K, bs, **dict(kw, active=active.clamp(0, K)))
    assert_project_close(got, want, 0.5 * x.float(), bs, "rademacher")


@pytest.mark.parametrize("dtype", DTYPES)
def test_rademacher_project_adds_in_its_documented_order(emu, dtype):
    """Bit for bit against conftest's model of the kernel's adds: a block of 34 chunks (a second-pass lane adds two
    chunks) with a partial last chunk, a short last block, K = 6 (a quad of bases and a part of
    one), active counts (one past K, 0), y and an unaligned pointer. A change of the kernel's
    reductions that keeps this passing keeps every bit of every result."""
    torch.manual_seed(6)
    bs = 33 * CHUNK["rademacher"] + 333
    n = bs + 2 * CHUNK["rademacher"] + 40
    x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
    active = torch.tensor([7, 0], dtype=torch.int32)
    kw = dict(block_offset=9, scale=0.75)
    for extra in (dict(), dict(y=y, active=active)):
        want = cuda_rademacher_project_order(x, 2**33 + 1, 6, bs, **kw, **extra)
        assert torch.equal(emu.project(x, 2**33 + 1, 6, bs, **kw, **extra), want)
        assert torch.equal(emu.project(x, 2**33 + 1, 6, bs, misalign=1, **kw, **extra), want)


def test_active_counts_adjoint_and_determinism(emu):
    n, bs, K = 2100, 512, 40
    x = torch.randn(n)
    active = torch.tensor([40, 0, 33, 31, 1], dtype=torch.int32)
    g = emu.project(x, 3, K, bs, dist="uniform", active=active)
    full = emu.project(x, 3, K, bs, dist="uniform")
    mask = torch.arange(K)[None, :] < active[:, None]
    assert torch.equal(g[~mask], torch.zeros_like(g[~mask])) and torch.equal(g[mask], full[mask])
    assert_project_close(full, ref(fk.project, x, 3, K, bs, dist="uniform"), x, bs, "uniform")
    c = torch.randn(5, K)
    r = emu.reconstruct(c, 3, n, bs, dist="uniform", active=active)
    torch.testing.assert_close(r, emu.reconstruct(c * mask, 3, n, bs, dist="uniform"), rtol=0, atol=1e-6)
    lhs = (full.double() * c.double()).sum()
    rhs = (x.double() * emu.reconstruct(c, 3, n, bs, dist="uniform").double()).sum()
    assert abs(lhs - rhs).item() <= 1e-6 * (x.abs().sum() * c.abs().max() * 2).item()
    assert torch.equal(emu.project(x, 3, K, bs, dist="uniform"), full)  # threads race, sums do not


ORDERS = ("reverse", "shuffle:7")


@pytest.fixture
def ordered(emu):
    """Sets the emulator's CTA order for one test and restores index order afterwards."""

    def use(order):
        emu.order = order

    yield use
    emu.order = "forward"


@pytest.mark.parametrize("dist", DISTS)
def test_fused_project_gives_the_two_pass_bits_whichever_cta_comes_last(emu, ordered, dist):
    """The one-launch candidate (project_fused_kernel): the CTA that takes a block's last ticket
    adds the block's partial sums in the second pass's order. Blocks of 34 chunks (lanes stride
    past 32 chunks) and a one-chunk last block, K past a shared-memory tile, active counts, y:
    bit for bit the two-pass result for CTAs run in index order, in reverse and shuffled, and every
    ticket back at 0 (the driver checks)."""
    bs = 33 * CHUNK[dist] + 5
    n, K = 2 * bs + 1000, 33
    x, y = torch.randn(n), torch.randn(n)
    active = torch.tensor([33, 0, 17], dtype=torch.int32)
    kw = dict(y=y, dist=dist, block_offset=3, scale=0.5, active=active)
    want = emu.project(x, 11, K, bs, **kw)
    assert_project_close(want, ref(fk.project, x - y, 11, K, bs, **dict(kw, y=None)), 0.5 * (x - y), bs, dist)
    for order in ("forward",) + ORDERS:
        ordered(order)
        assert torch.equal(emu.project(x, 11, K, bs, **kw, fused=1), want), order


@pytest.mark.parametrize("dist", ["rademacher", "uniform"])
def test_prefetch_candidates_give_the_shipped_bits_and_stay_inside_their_tensors(emu, dist):
    """project_prefetch_kernel, and the fused kernel with its prefetch on: each CTA first asks for the
    chunk `ahead` CTAs on to be brought into L2. A hint: the shipped launch's bits. The emulator reads
    the first and last bytes of every range the device would be asked for, so AddressSanitizer fails a
    range that reaches outside x or y: a last block shorter than a chunk (its tail chunks wholly past
    the data), blocks that are not whole chunks, a last block of 3 elements (no whole 16-byte unit: a
    size that must not go negative), inputs off 16-byte alignment (the range is trimmed to whole
    16-byte units), bf16 and fp32, with and without y, ahead 0, 1, a few, and past the last CTA."""
    bs, K = 3 * CHUNK[dist] + 100, 5
    cases = [(2 * bs + CHUNK[dist] // 2 + 3, True, (0, 1, 5, 1000)), (2 * bs + 3, True, (1, 3)), (bs + 7, False, (1,))]
    for n, with_y, aheads in cases:
        for dtype in (torch.float32, torch.bfloat16):
            x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
            for misalign in (0, 1):
                kw = dict(y=y if with_y else None, dist=dist, block_offset=2, misalign=misalign)
                want = emu.project(x, 7, K, bs, **kw)
                for ahead in aheads:
                    got = emu.project(x, 7, K, bs, **kw, prefetch=ahead)
                    assert torch.equal(got, want), (n, dtype, misalign, ahead)
                got = emu.project(x, 7, K, bs, **kw, fused=1, prefetch=aheads[-1])
                assert torch.equal(got, want), (n, dtype, misalign)


@pytest.mark.parametrize("dist", DISTS)
def test_four_chunks_a_cta_give_the_shipped_bits(emu, dist):
    """project_kernel with CHUNKS = 4 (a benchmark variant: each CTA takes four chunks, loading the
    next one's raw words before it works on the current one, then widening them): the shipped
    launch's bits, through a launch whose chunk count is not a multiple of 4 (the last CTA's chunks
    past the end), blocks that are not whole chunks, a short last block, y, active counts, bf16 (the
    raw words widened by widen16), fp32 and fp16, and an unaligned pointer (the element-wise path)."""
    bs, K = 2 * CHUNK[dist] + 100, 6
    n = 2 * bs + CHUNK[dist] // 2 + 3  # 3 chunks a block, 7 chunks
    active = torch.tensor([6, 0, 2], dtype=torch.int32)
    for dtype in DTYPES:
        x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
        for kw in (dict(), dict(y=y, active=active, misalign=1)):
            want = emu.project(x, 5, K, bs, dist=dist, block_offset=4, **kw)
            assert torch.equal(emu.project(x, 5, K, bs, dist=dist, block_offset=4, chunks=4, **kw), want), (dtype, kw)


@pytest.mark.parametrize("runs", [2, 4])
def test_quad_project_adds_in_its_documented_order(emu, runs):
    """project_quad_kernel (the K <= 4 rademacher candidate: a lane adds `runs` runs of 32 elements, one
    a chunk apart, into one total and one negsum a basis) bit for bit against conftest's order model with
    `runs`, and within float32 rounding of the reference: K = 1 to 4; blocks of 2^16 elements (a power
    of two of spans a block: the shift) and blocks of 3 spans less a part (the division; a partial last
    span, a short last block); y, active counts (past K, 0, 2 of 3 or 4, negative), an unaligned pointer
    (the element-wise loads), a block offset and a scale. (A second reader found the 4-span case this
    had, called the division's, took the shift: a wrong division passed.)"""
    torch.manual_seed(runs)
    span = runs * CHUNK["rademacher"]
    cases = [(2**16, 2 * 2**16 + 3 * 8192 + 5), (3 * span - 700, 2 * (3 * span - 700) + span + 9)]
    counts = ([9, 0, 2], [2, -2, 9])  # past K, none, part of the quad; negative
    for (bs, n), dtype, count in zip(cases, (torch.bfloat16, torch.float16), counts):
        x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
        active = torch.tensor(count, dtype=torch.int32)
        for K in (1, 2, 3, 4):
            kw = dict(block_offset=5, scale=0.625)
            for extra, mis in ((dict(), 0), (dict(y=y, active=active), 1)):
                want = cuda_rademacher_project_order(x, 2**40 + 9, K, bs, runs=runs, **kw, **extra)
                got = emu.project(x, 2**40 + 9, K, bs, quad=runs, misalign=mis, **kw, **extra)
                assert torch.equal(got, want), (bs, dtype, K, extra.keys(), mis)
        got = emu.project(x, 2**40 + 9, 4, bs, quad=runs, block_offset=5)
        assert_project_close(got, ref(fk.project, x, 2**40 + 9, 4, bs, block_offset=5), x, bs, "rademacher")
    x = torch.randn(2 * span + 3)  # fp32
    want = cuda_rademacher_project_order(x, 3, 4, span, runs=runs)
    assert torch.equal(emu.project(x, 3, 4, span, quad=runs), want)
    assert not torch.equal(want, cuda_rademacher_project_order(x, 3, 4, span)), "the model cannot tell runs apart"


@pytest.mark.parametrize("runs", [2, 4])
def test_quad_project_at_its_edges(emu, runs):
    """project_quad_kernel against its order model at the edges a second reader tried: blocks of 1 and
    7 elements (a span almost wholly past its block), a second span of one element, 5 spans a block
    less one element, a block of one chunk and an element, K = 2 to 4, the three dtypes with y, active
    counts from -2 to 4 and an unaligned pointer."""
    torch.manual_seed(10 + runs)
    span = runs * CHUNK["rademacher"]
    for bs, n, dtype, K in (
        (1, 5, torch.float32, 2),
        (7, 30, torch.float16, 4),
        (span + 1, 2 * span + 3, torch.float32, 2),
        (5 * span - 1, 2 * (5 * span - 1) + 1, torch.bfloat16, 3),
        (8193, 3 * 8193, torch.float32, 4),
    ):
        x, y = torch.randn(n).to(dtype), torch.randn(n).to(dtype)
        active = torch.tensor([(i % 7) - 2 for i in range(fk.num_blocks(n, bs))], dtype=torch.int32)
        for extra, mis in ((dict(), 0), (dict(y=y, active=active), 1)):
            want = cuda_rademacher_project_order(x, 77, K, bs, runs=runs, block_offset=3, **extra)
            got = emu.project(x, 77, K, bs, quad=runs, misalign=mis, block_offset=3, **extra)
            assert torch.equal(got, want), (bs, n, dtype, K, mis)


def test_quad_project_refuses_what_it_cannot_do(emu):
    """The quad candidate's launcher returns cudaErrorInvalidValue (the emulator's exit 2) for K > 4, a
    distribution other than rademacher and a run count other than 2 or 4, instead of computing
    something else."""
    x = torch.randn(20000)
    for K, dist, runs in ((5, "rademacher", 2), (4, "uniform", 2), (4, "rademacher", 3)):
        with pytest.raises(AssertionError, match="exit 2"):
            emu.project(x, 1, K, 16384, dist=dist, quad=runs)


@pytest.mark.parametrize("order", ORDERS)
def test_results_do_not_depend_on_the_order_ctas_run_in(emu, ordered, order):
    """A GPU runs CTAs in no promised order: every launch, one tensor and lists, gives the same
    bits with the emulator's CTAs in reverse or shuffled order as in index order."""
    n, bs, K = 3 * 9000 + 123, 9000, 5
    x = torch.randn(n)
    c = torch.randn(fk.num_blocks(n, bs), K)
    xs = [torch.randn(700), torch.randn(9000 + 11)]
    segs = [(0, 0, 0), (100, 5, 1)]
    rows = sum(fk.num_blocks(t.numel(), bs, lead) for t, (lead, _, _) in zip(xs, segs))
    cm = torch.randn(rows, K)

    def run():
        return (
            emu.project(x, 5, K, bs, dist="rademacher"),
            emu.project(x, 5, K, bs, dist="gaussian"),
            emu.reconstruct(c, 5, n, bs, dist="uniform"),
            emu.project_multi(xs, 5, K, bs, segs, dist="rademacher"),
            *emu.reconstruct_multi([t.clone() for t in xs], cm, 5, bs, segs, dist="rademacher"),
        )

    want = run()
    ordered(order)
    for a, b in zip(run(), want):
        assert torch.equal(a, b)


def test_shared_memory_protocol_is_race_free(tmp_path):
    """Under ThreadSanitizer the emulated barriers are the only ordering between a CTA's
    threads, so a __syncthreads missing around the shared reduction slots is a reported race.
    Several CTAs per block and K across two reduction tiles; results equal the ASan build's, the
    fused candidate's too."""
    exe = _build(str(tmp_path), "thread")
    tsan = Emu(exe, str(tmp_path))
    x, K, bs = torch.randn(20000), 40, 9000
    g = tsan.project(x, 5, K, bs, dist="rademacher")
    assert_project_close(g, ref(fk.project, x, 5, K, bs, dist="rademacher"), x, bs, "rademacher")
    # the fused candidate's CTA barriers around its ticket (its fences order CTAs, which run one at
    # a time here: no emulator test can show a missing fence, only bit-identity on a GPU)
    assert torch.equal(tsan.project(x, 5, K, bs, dist="rademacher", fused=1), g)
    c = torch.randn(3, K)
    r = tsan.reconstruct(c, 5, x.numel(), bs, dist="gaussian", out=x.bfloat16(), alpha=0.5)
    want = (x.bfloat16().float() + 0.5 * ref(fk.reconstruct, c, 5, x.numel(), bs, dist="gaussian")).bfloat16()
    assert_recon_close(r, want, 0.5 * c, bs, "gaussian", dtype=torch.bfloat16, base=x.bfloat16())


# A list launch: tensors that start inside a block (lead), a tiny one inside a single chunk, one
# spanning several blocks with a partial last chunk, one exactly a block; rows of coeffs / active
# not in launch order (as for one dtype of a mixed list).
MULTI = [(1000, 3), (5, 700), (3 * 512 + 17, 0), (512, 0), (2 * 9000 + 123, 8900)]


def _padded(x, lead):
    """x behind `lead` zeros: a one-tensor launch of it sees what the list launch sees."""
    return torch.cat([torch.zeros(lead, dtype=x.dtype), x])


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_list_launch_equals_one_launch_per_tensor(emu, dist, dtype):
    """project_multi / reconstruct_multi_ kernels against the one-tensor kernels on the same
    elements, bit for bit: chunks wholly outside a tensor, leads inside a block and tensor ends
    inside a chunk are handled in the list kernel itself (ASan build: no read or write past any
    tensor's own buffer)."""
    torch.manual_seed(5)
    bs, K = 9000, 6
    xs = [torch.randn(n).to(dtype) for n, _ in MULTI]
    ys = [torch.randn(n).to(dtype) for n, _ in MULTI]
    leads = [lead for _, lead in MULTI]
    nbs = [fk.num_blocks(x.numel(), bs, lead) for x, lead in zip(xs, leads)]
    firsts = [7, 30, 2, 50, 11]
    rows, r = [], 20  # rows from 20, in reverse list order
    for nb in reversed(nbs):
        rows.insert(0, r)
        r += nb
    segs = list(zip(leads, firsts, rows))
    active = torch.randint(0, K + 1, (r,), dtype=torch.int32)
    got = emu.project_multi(xs, 99, K, bs, segs, ys=ys, dist=dist, scale=0.25, active=active)
    want = torch.cat(
        [
            emu.project(
                _padded(x, lead),
                99,
                K,
                bs,
                y=_padded(y, lead),
                block_offset=g,
                dist=dist,
                scale=0.25,
                active=active[row : row + nb],
            )
            for x, y, (lead, g, row), nb in zip(xs, ys, segs, nbs)
        ]
    )
    assert torch.equal(got, want)
    assert_project_close(
        got[: nbs[0]],
        cpu(
            fk.project,
            xs[0],
            99,
            K,
            bs,
            y=ys[0],
            block_offset=7,
            dist=dist,
            scale=0.25,
            active=active[rows[0] : rows[0] + nbs[0]],
            start=leads[0],
        ),
        0.25 * _padded(xs[0].float() - ys[0].float(), leads[0]),
        bs,
        dist,
    )
    c = torch.randn(r, K)
    outs = emu.reconstruct_multi(xs, c, 99, bs, segs, dist=dist, scale=0.5, alpha=-3.0, active=active)
    for x, o, (lead, g, row), nb in zip(xs, outs, segs, nbs):
        one = emu.reconstruct(
            c[row : row + nb],
            99,
            lead + x.numel(),
            bs,
            block_offset=g,
            dist=dist,
            scale=0.5,
            out=_padded(x, lead),
            alpha=-3.0,
            active=active[row : row + nb],
        )
        assert torch.equal(o, one[lead:])
