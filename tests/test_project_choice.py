"""FERRET_CUDA_PROJECT and FERRET_TRITON_PROJECT: the project candidates through the op.

The candidates for the K = 4 bandwidth bars (docs/gpu.md) can run through `fk.project` itself,
chosen by an environment variable read at every call, so that one GPU session can time them as
users call the op and run these checks on them; the defaults are the shipped kernels.

- CUDA (a GPU only): every choice (`prefetch[:waves]`, `fused`, `fused_prefetch[:waves]`) gives the
  shipped two passes' bits, for every dtype and dist, with y, active counts, an element offset, a
  short last block, twice in a row. `quad[:runs]` (rademacher, K <= 4) gives conftest's model of its
  adds bit for bit, and the shipped bits where it does not apply (other dists, K > 4).
- Triton (the interpreter on the CPU; a GPU too): each value reaches the pipelined kernel; the
  prefetch forms give their dots' bits; `negsum` (the default since the H200 timed it, 2026-11-27)
  and `signflip` stay within float32 rounding of a float64 projection on the contract's bases,
  and (on a GPU) give the same bits under torch.compile as eagerly.
- A bad value is a ValueError naming the variable and the choices, whichever kernel would run.
"""

import importlib.util

import pytest
import torch

import ferret_kernels as fk

from conftest import cuda_rademacher_project_order

DEV = "cuda" if torch.cuda.is_available() else "cpu"
TRITON_WHY = (
    "triton is not installed"
    if importlib.util.find_spec("triton") is None
    else fk.backends.unavailable_reason("triton", torch.device(DEV))
)
CUDA_WHY = fk.backends.unavailable_reason("cuda", torch.device("cuda")) if DEV == "cuda" else "no CUDA device"
needs_triton = pytest.mark.skipif(TRITON_WHY is not None, reason=str(TRITON_WHY))
needs_cuda = pytest.mark.skipif(CUDA_WHY is not None, reason=str(CUDA_WHY))
PREFETCH_OK = DEV == "cpu" or torch.cuda.get_device_capability() >= (9, 0)  # the interpreter: a no-op


def _inputs(bs, K, dtype=torch.bfloat16, seed=0):
    n = 3 * bs + 77  # a short last block
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g).to(dtype).to(DEV)
    y = torch.randn(n, generator=g).to(dtype).to(DEV)
    act = torch.tensor([K, 0, 2, K - 1], dtype=torch.int32, device=DEV)
    return x, y, act


# ----------------------------------------------------------------------------- Triton


@needs_triton
@pytest.mark.parametrize(
    "value,want",
    [
        ("", (1, False, 4.0)),
        ("negsum", (1, False, 4.0)),
        ("signflip", (0, False, 4.0)),
        ("negsum_prefetch", (1, True, 4.0)),
        ("signflip_prefetch:2", (0, True, 2.0)),
        ("negsum_prefetch:0.5", (1, True, 0.5)),
    ],
)
def test_triton_project_choice_reads_its_variable(monkeypatch, value, want):
    from ferret_kernels import triton_kernels as tk

    if want[1] and not PREFETCH_OK:
        pytest.skip("prefetch needs sm_90 (its refusal is tested below)")
    monkeypatch.setenv("FERRET_TRITON_PROJECT", value)
    assert tk._project_choice(torch.device(DEV)) == want


@needs_triton
@pytest.mark.parametrize(
    "value",
    [
        "bogus",
        "shipped",
        "prefetch",
        "Negsum",
        "negsum:2",
        "signflip:1",
        "negsum_prefetch:",
        "negsum_prefetch:x",
        "signflip_prefetch:0",
        "negsum_prefetch:65",
        ":4",
    ],
)
def test_triton_project_choice_refuses_bad_values_in_every_project(monkeypatch, value):
    monkeypatch.setenv("FERRET_TRITON_PROJECT", value)
    msg = (
        f"FERRET_TRITON_PROJECT='{value}' is not one of negsum, signflip, negsum_prefetch\\[:m\\], "
        "signflip_prefetch\\[:m\\] "
        r"\(m: a number in \(0, 64\], default 4\)"
    )
    x = torch.randn(600, device=DEV)
    with fk.use_backend("triton"):
        for xx in (x.bfloat16(), x):  # the pipelined kernel's input, and one another kernel projects
            with pytest.raises(ValueError, match=msg):
                fk.project(xx, 3, 4, 256)


@needs_triton
@pytest.mark.skipif(PREFETCH_OK, reason="prefetch is allowed here (sm_90 or later, or the interpreter)")
def test_triton_prefetch_choice_refused_before_sm_90(monkeypatch):
    monkeypatch.setenv("FERRET_TRITON_PROJECT", "negsum_prefetch")
    with fk.use_backend("triton"), pytest.raises(ValueError, match="needs a GPU of compute capability 9.0 or later"):
        fk.project(torch.randn(600, device=DEV).bfloat16(), 3, 4, 256)


def _float64_project(x, seed, K, bs, act):
    """The projection in float64 on the contract's bases (the CPU kernel's reconstruct of one-hot
    coefficients gives each basis exactly: +-1)."""
    n = x.numel()
    nb = -(-n // bs)
    xd = x.double().cpu()
    out = torch.zeros(nb, K, dtype=torch.float64)
    for k in range(K):
        c = torch.zeros(nb, K)
        c[:, k] = 1
        with fk.use_backend("cpu" if "cpu" in fk.available_backends("cpu") else "reference"):
            v = fk.reconstruct(c, seed, n, bs).double()
        for b in range(nb):
            if k < act[b]:
                out[b, k] = (xd[b * bs : (b + 1) * bs] * v[b * bs : (b + 1) * bs]).sum()
    return out


@needs_triton
@pytest.mark.parametrize("K", [4, 5])
def test_triton_project_choices_through_the_op(monkeypatch, K):
    """Each value reaches the pipelined kernel as its NEGSUM / PREFETCH / ahead (a spy on the
    launch). The prefetch forms: their dots' bits. negsum (the default) and signflip: within float32
    rounding of float64 sums (4.5e-6
    of the block's l1 norm: the bound of
    test_negsum_project_candidate_against_an_independent_float64_reference), and on a GPU the same
    under torch.compile as eagerly."""
    bs = 1000 if DEV == "cpu" else 100_000
    x, _, act = _inputs(bs, K)
    seed = 2**64 - 5

    from ferret_kernels import triton_kernels as tk

    sms = 1 if DEV == "cpu" else torch.cuda.get_device_properties(DEV).multi_processor_count
    launched = []  # (NEGSUM, PREFETCH, ahead) of each launch of the pipelined kernel

    def spy(kernel):
        launcher = real_wrap(kernel)
        if kernel is not tk._project_loop_kernel:
            return launcher

        class Spy:
            def __getitem__(self, grid):
                def launch(*args, **kw):
                    launched.append((kw["NEGSUM"], kw["PREFETCH"], kw["ahead"]))
                    return launcher[grid](*args, **kw)

                return launch

        return Spy()

    real_wrap = tk._wrap

    def run(value, want_launch):
        monkeypatch.setenv("FERRET_TRITON_PROJECT", value)
        with monkeypatch.context() as m, fk.use_backend("triton"):
            m.setattr(tk, "_wrap", spy)
            out = fk.project(x, seed, K, bs, active=act)
        assert launched.pop() == want_launch, value
        return out

    negsum = run("negsum", (1, False, 0))
    assert torch.equal(run("", (1, False, 0)), negsum)
    signflip = run("signflip", (0, False, 0))
    if PREFETCH_OK:
        for value, m in (("negsum_prefetch", 4), ("negsum_prefetch:0.01", 0.01), ("negsum_prefetch:64", 64)):
            assert torch.equal(run(value, (1, True, max(1, int(m * sms)))), negsum), value
        assert torch.equal(run("signflip_prefetch:2", (0, True, 2 * sms)), signflip)
    want = _float64_project(x, seed, K, bs, act.tolist())
    l1 = torch.stack([x[b * bs : (b + 1) * bs].double().abs().sum().cpu() for b in range(want.shape[0])])
    for got in (signflip, negsum):
        err = (got.double().cpu() - want).abs()
        assert (err <= 4.5e-6 * l1[:, None]).all(), (err / l1[:, None]).max()

    if DEV == "cpu":
        return  # torch.compile of the Triton kernels needs a GPU (the interpreter runs eager only)

    def step(x):
        return fk.project(x, seed, K, bs, active=act)

    for value in ("negsum", "signflip"):
        monkeypatch.setenv("FERRET_TRITON_PROJECT", value)
        torch._dynamo.reset()
        with fk.use_backend("triton"):
            eager = step(x)
            assert torch.equal(torch.compile(step, fullgraph=True)(x), eager), value


# ----------------------------------------------------------------------------- CUDA (a GPU only)


@needs_cuda
@pytest.mark.parametrize(
    "value", ["two_pass", "prefetch", "prefetch:0.5", "prefetch:2", "fused", "fused_prefetch", "fused_prefetch:2"]
)
def test_cuda_project_choices_give_the_shipped_bits(monkeypatch, value):
    bs = 100_000
    for dtype in (torch.bfloat16, torch.float32, torch.float16):
        for dist in ("rademacher", "uniform", "gaussian"):
            for K in (4, 5, 64):
                x, y, act = _inputs(bs, K, dtype, seed=K)
                for kw in ({}, {"y": y, "active": act}, {"start": 12_345, "block_offset": 3}):
                    xx = x[: x.numel() - 12_345] if "start" in kw else x
                    monkeypatch.delenv("FERRET_CUDA_PROJECT", raising=False)
                    with fk.use_backend("cuda"):
                        want = fk.project(xx, 9, K, bs, dist=dist, scale=0.5, **kw)
                        monkeypatch.setenv("FERRET_CUDA_PROJECT", value)
                        for _ in range(2):  # the same bits on a second call too (each call zeroes its
                            # own tickets: that a launch leaves them at zero is the harness's check)
                            got = fk.project(xx, 9, K, bs, dist=dist, scale=0.5, **kw)
                            assert torch.equal(got, want), (value, dtype, dist, K, kw.keys())


@needs_cuda
@pytest.mark.parametrize("value,runs", [("quad", 2), ("quad:2", 2), ("quad:4", 4)])
def test_cuda_quad_choice_adds_in_its_documented_order(monkeypatch, value, runs):
    """FERRET_CUDA_PROJECT=quad[:runs] runs project_quad_kernel for rademacher with K <= 4 (the GPU twin of
    the emulator's test_quad_project_adds_in_its_documented_order: the inline PTX negsums and shuffles
    here): conftest's model of its adds bit for bit, with y, active counts, an element offset (a view one
    element into the device tensor: unaligned loads), blocks of 2^16 (a power of two of spans) and
    blocks of 3 spans less a part (the division); uniform and K = 5 run the shipped kernels (their
    bits)."""
    torch.manual_seed(runs)
    for bs, n, dtype in (
        (2**16, 2 * 2**16 + 3 * 8192 + 5, torch.bfloat16),
        (3 * runs * 8192 - 700, 200_000, torch.float32),
    ):
        x, y = torch.randn(n + 1).to(dtype), torch.randn(n).to(dtype)
        active = torch.tensor([9, 2, 0, -2, 1], dtype=torch.int32)[: -(-n // bs)]
        xd = x.cuda()  # sliced on the device: off = 1 is an unaligned pointer there
        for K in (1, 2, 3, 4):
            for extra in (dict(), dict(y=y, active=active)):
                dev = {k: v.to("cuda") for k, v in extra.items()}
                for off in (0, 1):
                    want = cuda_rademacher_project_order(
                        x[off : off + n], 2**40 + 9, K, bs, runs=runs, scale=0.5, **extra
                    )
                    monkeypatch.setenv("FERRET_CUDA_PROJECT", value)
                    with fk.use_backend("cuda"):
                        got = fk.project(xd[off : off + n], 2**40 + 9, K, bs, scale=0.5, **dev).cpu()
                    assert torch.equal(got, want), (bs, dtype, K, extra.keys(), off)
        for K, dist in ((4, "uniform"), (5, "rademacher")):
            monkeypatch.delenv("FERRET_CUDA_PROJECT", raising=False)
            with fk.use_backend("cuda"):
                want = fk.project(x.cuda(), 7, K, bs, dist=dist)
                monkeypatch.setenv("FERRET_CUDA_PROJECT", value)
                assert torch.equal(fk.project(x.cuda(), 7, K, bs, dist=dist), want), (K, dist)


@needs_cuda
@pytest.mark.parametrize(
    "value",
    [
        "bogus",
        "fused:2",
        "two_pass:1",
        "prefetch:",
        "prefetch:x",
        "prefetch:0",
        "prefetch:65",
        ":1",
        "quad:3",
        "quad:",
        "quad:2.0",
        "Quad",
    ],
)
def test_cuda_project_choice_refuses_bad_values(monkeypatch, value):
    monkeypatch.setenv("FERRET_CUDA_PROJECT", value)
    msg = (
        f"FERRET_CUDA_PROJECT='{value}' is not one of two_pass, fused, prefetch\\[:waves\\], "
        r"fused_prefetch\[:waves\], quad\[:runs\] \(waves: a number in \(0, 64\], default 1; runs: 2 or 4, "
        r"default 2\)"
    )
    with fk.use_backend("cuda"), pytest.raises(ValueError, match=msg):
        fk.project(torch.randn(600, device="cuda"), 3, 4, 256)
