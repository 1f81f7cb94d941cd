"""project_multi / reconstruct_multi_: the ops for a list of tensors (a model) in one call.

Properties, for every backend that runs here (CPU kernel, reference, Triton; the CUDA kernel and
Triton on a GPU): the list op equals, bit for bit, a loop of the same backend's one-tensor ops
(the rows of project one tensor after another; reconstruct_ per tensor), with element offsets,
per-tensor block offsets, active counts, differences x - y and mixed dtypes; backends agree
with the reference within the kernels' tolerance; a bad list is refused whole, naming the
tensor, in the same words by the C++ and Python validators, and no tensor is written. The
CUDA kernels' list launch is also checked on the CPU, through the emulator
(tests/test_cuda_emulation.py::test_list_launch_equals_one_launch_per_tensor).
"""

import pytest
import torch

import ferret_kernels as fk

from conftest import DISTS, assert_project_close, assert_recon_close

DEV = "cuda" if torch.cuda.is_available() else "cpu"
BS = 512
# (numel, dtype, start, block_offset): one element, a tensor inside one block from a lead, one
# across blocks, one exactly a block from the last position of a block, an fp16 one
LIST = [
    (1, torch.float32, 0, 5),
    (509, torch.bfloat16, 3, 0),
    (3 * BS + 17, torch.float32, 0, 40),
    (BS, torch.float32, BS - 1, 9),
    (2000, torch.float16, 700, 100),
]


def _backends():
    out = []
    for name in ("cpu", "reference", "triton", "cuda"):
        if DEV == "cuda" and name in ("cpu", "reference"):
            continue  # their device is the CPU
        why = fk.backends.unavailable_reason(name, torch.device(DEV))
        out.append(pytest.param(name, marks=pytest.mark.skip(reason=why)) if why else name)
    return out


@pytest.fixture(params=_backends())
def backend(request):
    if request.param == "triton":
        from ferret_kernels import triton_kernels  # noqa: F401
    with fk.use_backend(request.param):
        yield request.param


def _tensors(seed=0, dtypes=True):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, generator=g).to(dt if dtypes else torch.float32).to(DEV) for n, dt, _, _ in LIST]


def _plan():
    starts = [s for _, _, s, _ in LIST]
    offs = [o for _, _, _, o in LIST]
    nbs = [fk.num_blocks(n, BS, s) for (n, _, s, _) in LIST]
    return starts, offs, nbs


def _exact(backend):
    """Triton on a GPU: the list kernel reads tensors through addresses whose alignment the
    compiler cannot know, the one-tensor kernel through aligned pointers, and a reduction's
    order follows the load width, so project may differ in the last bits there."""
    return not (backend == "triton" and DEV == "cuda")


@pytest.mark.parametrize("dist", DISTS)
@pytest.mark.parametrize("with_y", [False, True])
def test_project_multi_equals_a_loop_of_project(backend, dist, with_y, monkeypatch):
    # the list kernel adds with the sign-flip dots; fk.project's pipelined path (Triton, 16-bit x
    # without y, K <= 8) with the negsum dots by default (other roundings): compared with that form
    monkeypatch.setenv("FERRET_TRITON_PROJECT", "signflip")
    xs, ys = _tensors(1), (_tensors(2) if with_y else None)
    starts, offs, nbs = _plan()
    K = 6
    active = torch.randint(0, K + 1, (sum(nbs),), generator=torch.Generator().manual_seed(3)).to(DEV)
    got = fk.project_multi(xs, 77, K, BS, ys=ys, block_offsets=offs, starts=starts, dist=dist, scale=0.5, active=active)
    assert got.shape == (sum(nbs), K) and got.dtype == torch.float32
    rows, r = [], 0
    for i, x in enumerate(xs):
        a = active[r : r + nbs[i]]
        rows.append(
            fk.project(
                x,
                77,
                K,
                BS,
                y=ys[i] if ys else None,
                block_offset=offs[i],
                start=starts[i],
                dist=dist,
                scale=0.5,
                active=a,
            )
        )
        r += nbs[i]
    loop = torch.cat(rows)
    if _exact(backend):
        assert torch.equal(got, loop)
    r = 0
    for i, x in enumerate(xs):  # against the reference, tensor by tensor
        d = x.float() - (ys[i].float() if ys else 0)
        with fk.use_backend("reference"):
            want = fk.project(
                d.cpu(),
                77,
                K,
                BS,
                block_offset=offs[i],
                start=starts[i],
                dist=dist,
                scale=0.5,
                active=active[r : r + nbs[i]].cpu(),
            )
        pad = torch.cat([torch.zeros(starts[i] % BS), 0.5 * d.cpu()])
        assert_project_close(got[r : r + nbs[i]].cpu(), want, pad, BS, dist)
        r += nbs[i]
    assert torch.equal(
        fk.project_multi(xs, 77, K, BS, ys=ys, block_offsets=offs, starts=starts, dist=dist, scale=0.5, active=active),
        got,
    )  # run to run


@pytest.mark.parametrize("dist", DISTS)
def test_reconstruct_multi_equals_a_loop_of_reconstruct_(backend, dist):
    starts, offs, nbs = _plan()
    K = 5
    c = torch.randn(sum(nbs), K, generator=torch.Generator().manual_seed(4)).to(DEV)
    active = torch.randint(0, K + 1, (sum(nbs),), generator=torch.Generator().manual_seed(5)).to(DEV)
    outs, loop = _tensors(6), _tensors(6)
    ret = fk.reconstruct_multi_(
        outs, c, 2**64 - 9, BS, block_offsets=offs, starts=starts, dist=dist, scale=2.0, alpha=-0.25, active=active
    )
    assert ret is not None and all(a is b for a, b in zip(ret, outs))
    r = 0
    for i, o in enumerate(loop):
        fk.reconstruct_(
            o,
            c[r : r + nbs[i]],
            2**64 - 9,
            BS,
            block_offset=offs[i],
            start=starts[i],
            dist=dist,
            scale=2.0,
            alpha=-0.25,
            active=active[r : r + nbs[i]],
        )
        r += nbs[i]
    for a, b in zip(outs, loop):
        assert torch.equal(a, b)  # elementwise: no reduction order, bit for bit on every backend
    base, r = _tensors(6), 0
    for i, (o, b0) in enumerate(zip(outs, base)):
        mask = (torch.arange(K, device=DEV)[None, :] < active[r : r + nbs[i], None]).float()
        cc = (c[r : r + nbs[i]] * mask).cpu()
        with fk.use_backend("reference"):
            v = fk.reconstruct(cc, 2**64 - 9, b0.numel(), BS, block_offset=offs[i], start=starts[i], dist=dist)
        want = (b0.float().cpu() - 0.5 * v).to(b0.dtype)
        assert_recon_close(o.cpu(), want, 0.5 * cc, BS, dist, dtype=b0.dtype, base=b0.cpu())
        r += nbs[i]


def test_default_block_offsets_number_the_tensors_blocks_one_after_another(backend):
    xs = _tensors(7, dtypes=False)
    got = fk.project_multi(xs, 3, 4, BS)
    offs, b = [], 0
    for x in xs:
        offs.append(b)
        b += fk.num_blocks(x.numel(), BS)
    loop = torch.cat([fk.project(x, 3, 4, BS, block_offset=o) for x, o in zip(xs, offs)])
    if _exact(backend):
        assert torch.equal(got, loop)
    torch.testing.assert_close(got, loop, rtol=1e-5, atol=1e-5)


def test_adjoint_over_a_list(backend):
    """<project_multi(x), c> = <x, reconstruct_multi(c)> summed over the list."""
    xs = _tensors(8, dtypes=False)
    starts, offs, nbs = _plan()
    c = torch.randn(sum(nbs), 7, generator=torch.Generator().manual_seed(9)).to(DEV)
    g = fk.project_multi(xs, 11, 7, BS, block_offsets=offs, starts=starts, dist="uniform")
    outs = [torch.zeros_like(x) for x in xs]
    fk.reconstruct_multi_(outs, c, 11, BS, block_offsets=offs, starts=starts, dist="uniform")
    lhs = (g.double() * c.double()).sum()
    rhs = sum((x.double() * o.double()).sum() for x, o in zip(xs, outs))
    assert abs(lhs - rhs).item() <= 1e-5 * (g.abs().sum() * c.abs().max()).item()


def _bad_calls():
    x, z = torch.randn(700), torch.randn(300)
    c = torch.randn(3, 4)
    P, R = "project_multi", "reconstruct_multi_"
    return [
        (P, ([x, z], [], 1, 4, 256, [0]), ValueError, "block_offsets must have one entry per tensor \\(2\\), got 1"),
        (P, ([x, z], [], 1, 4, 256, [0, 3], "rademacher", 1.0, None, [0]), ValueError, "starts must be empty or"),
        (P, ([x, z], [x], 1, 4, 256, [0, 3]), ValueError, "ys must be empty or have one tensor per x \\(2\\), got 1"),
        (P, ([x, z.long()], [], 1, 4, 256, [0, 3]), TypeError, "xs\\[1\\]: the tensor must be float32"),
        (P, ([x, z], [x, x], 1, 4, 256, [0, 3]), ValueError, "xs\\[1\\]: y must have as many elements as x"),
        (P, ([x, z], [], 1, 4, 256, [0, -3]), ValueError, "xs\\[1\\]: block_offset must be >= 0"),
        (P, ([x, z], [], 1, 4, 256, [0, 3], "rademacher", 1.0, None, [0, -1]), ValueError, "xs\\[1\\]: start must"),
        (P, ([x, z], [], 1, 4, 256, [0, 3], "normal"), ValueError, "unknown dist 'normal'"),
        (
            P,
            ([x, z], [], 1, 4, 256, [0, 3], "rademacher", 1.0, torch.ones(3, dtype=torch.int32)),
            ValueError,
            "active must have shape \\[5\\]",
        ),
        (
            R,
            ([torch.zeros(700), torch.zeros(300)], c, 1, 256, [0, 3]),
            ValueError,
            "coeffs must have 5 rows \\(the blocks of the 2 tensors\\)",
        ),
        (
            R,
            ([torch.zeros(700), torch.zeros(4, 2).t()], torch.randn(4, 4), 1, 256, [0, 3]),
            ValueError,
            "outs\\[1\\]: reconstruct_multi_ needs contiguous tensors",
        ),
        (
            R,
            (
                [torch.zeros(700), torch.zeros(300)],
                torch.randn(5, 4),
                1,
                256,
                [0, 3],
                "rademacher",
                1.0,
                1.0,
                torch.tensor([4, 4, 4, 4, 5]),
            ),
            ValueError,
            "active counts must be in",
        ),
        (
            R,
            ([torch.zeros(700), torch.zeros(300, dtype=torch.float64)], torch.randn(5, 4), 1, 256, [0, 3]),
            TypeError,
            "outs\\[1\\]: the tensor must be float32",
        ),
    ]


@pytest.mark.parametrize("i", range(len(_bad_calls())))
def test_bad_lists_are_refused_whole_with_the_same_words(i):
    """The C++ validator (torch.ops.ferret.* with the extension) and the Python one (reference,
    Triton, fake kernels) refuse the same calls with the same words, before writing anything."""
    op, args, exc, match = _bad_calls()[i]
    outs = args[0] if op == "reconstruct_multi_" else []
    before = [o.clone() for o in outs]
    with pytest.raises(exc, match=match) as python:
        getattr(fk.backends.implementation("reference"), op)(*args)
    if fk.native_load_error() is None:
        with pytest.raises(exc, match=match) as native:
            getattr(torch.ops.ferret, op)(*args)
        assert str(python.value).split(" (")[0].split(", got")[0] in str(native.value)
    for o, b in zip(outs, before):
        assert torch.equal(o, b)


def test_overlapping_outputs_are_refused():
    base = torch.zeros(1000)
    for backend in ("cpu", "reference"):
        if fk.backends.unavailable_reason(backend, torch.device("cpu")):
            continue
        with fk.use_backend(backend), pytest.raises(ValueError, match="outs\\[0\\] and outs\\[1\\] overlap"):
            fk.reconstruct_multi_([base[:600], base[500:]], torch.ones(3, 2), 1, 512)
        assert torch.equal(base, torch.zeros(1000))
        fk.reconstruct_multi_([base[:500], base[500:]], torch.ones(2, 2), 1, 512)  # adjacent views are fine
        assert base.abs().sum() > 0
        base.zero_()


def test_inputs_sharing_memory_with_an_out_are_refused():
    """coeffs or active counts that are views of an out would be read while it is written (results
    then depended on the thread count): refused, nothing written, in the same words by C++ and Python."""
    for backend in ("cpu", "reference"):
        if fk.backends.unavailable_reason(backend, torch.device("cpu")):
            continue
        base = torch.zeros(1000)
        other = torch.zeros(24)
        with fk.use_backend(backend):
            with pytest.raises(ValueError, match="coeffs and outs\\[1\\] overlap in memory"):
                fk.reconstruct_multi_([other, base], base[:6].view(3, 2), 1, 512)
            act = base.view(torch.int32)[998:]
            with pytest.raises(ValueError, match="active and outs\\[0\\] overlap in memory"):
                fk.reconstruct_multi_([base], torch.ones(2, 2), 1, 512, active=act)
            assert torch.equal(base, torch.zeros(1000)) and torch.equal(other, torch.zeros(24))
            fk.reconstruct_multi_([base[:500]], base[500:504].view(2, 2) + 1, 1, 256)  # apart: fine
            assert base[:500].abs().sum() > 0


def test_a_numpy_block_size_numbers_blocks_as_an_int(backend):
    """The default block_offsets follow the tensors' blocks for a numpy block_size too (they were
    all 0: every tensor got the same bases)."""
    import numpy as np

    xs = _tensors(3, dtypes=False)
    want = fk.project_multi(xs, 3, 4, BS)
    assert torch.equal(fk.project_multi(xs, 3, 4, np.int64(BS)), want)
    outs = [torch.zeros_like(x) for x in xs]
    fk.reconstruct_multi_(outs, want, 3, np.int32(BS))
    loop = [torch.zeros_like(x) for x in xs]
    fk.reconstruct_multi_(loop, want, 3, BS)
    assert all(torch.equal(a, b) for a, b in zip(outs, loop))


def test_empty_lists_and_starts_without_offsets():
    with pytest.raises(ValueError, match="must hold at least one tensor"):
        fk.project_multi([], 1, 4, 256)
    with pytest.raises(ValueError, match="give block_offsets with starts"):
        fk.project_multi([torch.randn(5)], 1, 4, 256, starts=[3])


def test_opcheck_and_fake_shapes():
    """Schema, fake kernels and mutation annotations (torch.library.opcheck) on the CPU."""
    xs = [torch.randn(700), torch.randn(300).bfloat16()]
    ys = [torch.randn(700), torch.randn(300).bfloat16()]
    act = torch.tensor([4, 0, 2, 1, 3], dtype=torch.int32)
    torch.library.opcheck(torch.ops.ferret.project_multi.default, (xs, [], 7, 4, 256, [0, 3]))
    torch.library.opcheck(
        torch.ops.ferret.project_multi.default, (xs, ys, -5, 4, 256, [0, 3], "gaussian", 0.5, act, [10, 0])
    )
    outs = [torch.randn(700), torch.randn(300).half()]
    torch.library.opcheck(
        torch.ops.ferret.reconstruct_multi_.default, (outs, torch.randn(5, 4), 7, 256, [2, 0], "uniform", 1.0, -0.5)
    )
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode() as mode:
        fx = [mode.from_tensor(x) for x in xs]
        out = torch.ops.ferret.project_multi(fx, [], 7, 4, 256, [0, 3], "rademacher", 1.0, None, [255, 0])
        assert tuple(out.shape) == (6, 4) and out.dtype == torch.float32


# ----------------------------------------------------------------------------- hostile lists
# Found by an adversarial pass over the list ops (2026-11-26); each case failed before its fix.


def _all_cpu_backends():
    names = ["cpu", "reference"]
    if fk.backends.unavailable_reason("triton", torch.device("cpu")) is None:
        from ferret_kernels import triton_kernels  # noqa: F401

        names.append("triton")
    return [n for n in names if fk.backends.unavailable_reason(n, torch.device("cpu")) is None]


@pytest.mark.parametrize("count", [2**32 + 2, -(2**32)])
def test_int64_active_counts_do_not_wrap_into_range(count):
    """A count of 2^32 + 2 was cast to int32 (2) before the CPU kernel's range check."""
    for backend in _all_cpu_backends():
        out = torch.zeros(10)
        with fk.use_backend(backend):
            with pytest.raises(ValueError, match="active counts must be in"):
                fk.project_multi([torch.randn(10)], 1, 4, 16, active=torch.tensor([count]))
            with pytest.raises(ValueError, match="active counts must be in"):
                fk.reconstruct_multi_([out], torch.ones(1, 4), 1, 16, active=torch.tensor([count]))
            with pytest.raises(ValueError, match="active counts must be in"):
                fk.project(torch.randn(10), 1, 4, 16, active=torch.tensor([count]))
        assert torch.equal(out, torch.zeros(10)), backend


@pytest.mark.parametrize(
    "offsets,starts", [([2**63 - 1], None), ([0], [2**63 - 1]), ([2**32], [16]), ([2**32 - 1], [32])]
)
def test_block_indices_past_2_32_are_refused_without_int64_overflow(offsets, starts):
    """block_offset + num_blocks overflowed int64 in the C++ check for offsets near 2^63 (and
    the kernels then used the offset truncated to 32 bits)."""
    for backend in _all_cpu_backends():
        out = torch.zeros(1)
        with fk.use_backend(backend):
            with pytest.raises(ValueError, match="global block indices must stay below 2\\^32"):
                fk.project_multi([torch.ones(1)], 1, 4, 16, block_offsets=offsets, starts=starts)
            with pytest.raises(ValueError, match="global block indices must stay below 2\\^32"):
                fk.reconstruct_multi_([out], torch.ones(1, 4), 1, 16, block_offsets=offsets, starts=starts)
        assert torch.equal(out, torch.zeros(1))
    if fk.native_load_error() is None:
        s = starts[0] if starts else 0
        with pytest.raises(ValueError, match="global block indices must stay below 2\\^32"):
            torch.ops.ferret.project(torch.ones(1), None, 1, 4, 16, offsets[0], "rademacher", 1.0, None, s)


@pytest.mark.parametrize("bad", [[1.7], ["3"], [True], [None]])
def test_offsets_must_be_ints(bad):
    with pytest.raises(TypeError, match="block_offsets\\[0\\] must be an int"):
        fk.project_multi([torch.ones(3)], 1, 4, 16, block_offsets=bad)
    with pytest.raises(TypeError, match="starts\\[0\\] must be an int"):
        fk.project_multi([torch.ones(3)], 1, 4, 16, block_offsets=[0], starts=bad)
    import numpy as np

    ok = fk.project_multi([torch.ones(3)], 1, 4, 16, block_offsets=[np.int64(2)], starts=torch.tensor([1]))
    assert torch.equal(ok, fk.project(torch.ones(3), 1, 4, 16, block_offset=2, start=1))


def test_lists_of_non_tensors_and_a_tensor_for_a_list_are_refused():
    with pytest.raises(TypeError, match="xs\\[1\\] must be a tensor, got NoneType"):
        fk.project_multi([torch.ones(3), None], 1, 4, 16)
    with pytest.raises(TypeError, match="ys\\[0\\] must be a tensor"):
        fk.project_multi([torch.ones(3)], 1, 4, 16, ys=[None])
    out = torch.zeros(3, 5)
    with pytest.raises(TypeError, match="outs must be a list of tensors, got a tensor"):
        fk.reconstruct_multi_(out, torch.ones(6, 2), 1, 4)
    assert torch.equal(out, torch.zeros(3, 5))


def test_no_autograd_and_no_half_applied_update_for_tensors_that_require_grad():
    """project_multi has no backward: the Python function refuses inputs that require grad, the raw
    op's backward raises (the dispatcher's fallback only warned and left x.grad None); outs that
    require grad are refused before any is written (the reference loop wrote outs[0], then failed)."""
    xr = torch.randn(10, requires_grad=True)
    for backend in _all_cpu_backends():
        with fk.use_backend(backend):
            with pytest.raises(ValueError, match="project_multi has no autograd"):
                fk.project_multi([xr], 1, 4, 16)
            with torch.no_grad():
                g = fk.project_multi([xr], 1, 4, 16)
            assert not g.requires_grad
            o0, o1 = torch.zeros(4), torch.zeros(4, requires_grad=True)
            with pytest.raises(ValueError, match="outs\\[1\\] requires grad"):
                fk.reconstruct_multi_([o0, o1], torch.ones(2, 2), 1, 4)
            assert torch.equal(o0, torch.zeros(4)) and torch.equal(o1.detach(), torch.zeros(4))
            with torch.no_grad():
                fk.reconstruct_multi_([o0, o1], torch.ones(2, 2), 1, 4)
            assert o0.abs().sum() > 0 and o1.detach().abs().sum() > 0
    if fk.native_load_error() is None:
        g = torch.ops.ferret.project_multi([xr], [], 1, 4, 16, [0])
        with pytest.raises(RuntimeError, match="project_multi has no backward"):
            g.sum().backward()


@pytest.mark.skipif(
    fk.backends.unavailable_reason("triton", torch.device("cpu")) is not None, reason="Triton not available"
)
def test_triton_list_kernels_stay_inside_tensors_in_blocks_past_2_31():
    """The Triton list kernels' in-chunk bounds were cast to int32 before clamping: in a block of
    2^33 elements a chunk that holds none of a tensor's elements read 128 elements before it,
    and one 2^32 elements past a 1-element tensor read past its end. Launched directly for the
    one program that matters (the public call would need millions of programs here)."""
    import triton.language as tl

    from ferret_kernels import triton_kernels as tk

    lead = 2**31 + 10
    buf = torch.ones(128)
    tab = torch.tensor([[0, 0, 1, lead, 0, buf.data_ptr() + lead * 4, 0, 0]], dtype=torch.int64)
    part = torch.full((1, 4), float("nan"))
    common = dict(XT=tl.float32, HAS_ACT=False, DIST=1, CHUNK=128, PAIR=False, num_warps=4)
    tk._project_multi_kernel[(1,)](tab, 1, part, part, 2**33, 4, 1, 0, HAS_Y=False, **common)
    assert torch.equal(part, torch.zeros(1, 4))
    buf2 = torch.ones(128)
    tab = torch.tensor([[-1, 0, 1, 0, 0, buf2.data_ptr() - 2**32 * 4, 0, 0]], dtype=torch.int64)
    part = torch.full((1, 4), float("nan"))
    tk._project_multi_kernel[(1,)](tab, 1, part, part, 2**32, 4, 1, 0, HAS_Y=False, **common)
    assert torch.equal(part, torch.zeros(1, 4))
    out = torch.zeros(128)
    tab = torch.tensor([[0, 0, 1, lead, 0, out.data_ptr() + lead * 4, 0, 0]], dtype=torch.int64)
    c = torch.ones(1, 4)
    tk._reconstruct_multi_kernel[(1,)](tab, 1, c, c, 2**33, 4, 1, 0, 1.0, **common)
    assert torch.equal(out, torch.zeros(128))
