"""Bad input gets a clear error naming the problem, and nothing is written."""

import numpy as np
import pytest
import torch

import ferret_kernels as fk


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        (dict(num_bases=0), ValueError, "num_bases"),
        (dict(num_bases=-3), ValueError, "num_bases"),
        (dict(block_size=0), ValueError, "block_size"),
        (dict(block_size=-1), ValueError, "block_size"),
        (dict(dist="normal"), ValueError, "unknown dist"),
        (dict(seed=-1), ValueError, "seed"),
        (dict(seed=2**64), ValueError, "seed"),
        (dict(seed=1.5), TypeError, "seed"),
        (dict(seed=True), TypeError, "seed must be an int, got a bool"),
        (dict(seed=np.float64(3.0)), TypeError, "seed must be an int, got float64"),
        (dict(seed=np.int64(-1)), ValueError, "seed must be in"),
        (dict(block_offset=-1), ValueError, "block_offset"),
        (dict(block_offset=2**32 - 1), ValueError, "2\\^32"),
    ],
)
def test_project_argument_errors(kwargs, exc, match):
    args = dict(seed=1, num_bases=4, block_size=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fk.project(torch.randn(17), args.pop("seed"), args.pop("num_bases"), args.pop("block_size"), **args)


def test_integer_scalars_of_numpy_and_torch_are_seeds_like_ints():
    """numpy / torch integer scalars are accepted by the ops' C++ int arguments; the seed's
    Python check takes them too, with the same results as the int."""
    x = torch.randn(100)
    want = fk.project(x, 2**64 - 5, 4, 32)
    assert torch.equal(fk.project(x, np.uint64(2**64 - 5), 4, 32), want)
    assert torch.equal(fk.project(x, torch.tensor(2**62 + 3), 4, 32), fk.project(x, 2**62 + 3, 4, 32))
    g = fk.project(x, 7, 4, 32)
    assert torch.equal(fk.reconstruct(g, np.int32(7), 100, np.int64(32)), fk.reconstruct(g, 7, 100, 32))


def test_project_tensor_errors():
    with pytest.raises(TypeError, match="x must be float32, bfloat16 or float16"):
        fk.project(torch.arange(10), 1, 4, 8)
    with pytest.raises(TypeError, match="x must be float32"):
        fk.project(torch.randn(10, dtype=torch.float64), 1, 4, 8)
    with pytest.raises(TypeError, match="y must have x's dtype"):
        fk.project(torch.randn(10), 1, 4, 8, y=torch.randn(10).half())
    with pytest.raises(ValueError, match="y must have as many elements"):
        fk.project(torch.randn(10), 1, 4, 8, y=torch.randn(11))
    with pytest.raises(ValueError, match="y must be on x's device"):
        fk.project(torch.randn(10), 1, 4, 8, y=torch.randn(10, device="meta"))
    with pytest.raises(ValueError, match="active must have shape \\[2\\]"):
        fk.project(torch.randn(10), 1, 4, 8, active=torch.tensor([1, 2, 3], dtype=torch.int32))
    with pytest.raises(ValueError, match="active counts must be in"):
        fk.project(torch.randn(10), 1, 4, 8, active=torch.tensor([1, 5], dtype=torch.int32))
    with pytest.raises(TypeError, match="active must be an int32/int64"):
        fk.project(torch.randn(10), 1, 4, 8, active=torch.tensor([1.0, 2.0]))


def test_reconstruct_errors():
    with pytest.raises(ValueError, match="coeffs must have 2 rows"):
        fk.reconstruct(torch.randn(3, 4), 1, 10, 8)
    with pytest.raises(ValueError, match="coeffs must be 2-D"):
        fk.reconstruct(torch.randn(8), 1, 10, 8)
    with pytest.raises(TypeError, match="coeffs must be float32"):
        fk.reconstruct(torch.ones(2, 4, dtype=torch.int32), 1, 10, 8)
    with pytest.raises(TypeError, match="dtype must be float32"):
        fk.reconstruct(torch.randn(2, 4), 1, 10, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match="num_bases"):
        fk.reconstruct(torch.randn(2, 0), 1, 10, 8)


def test_inplace_errors_leave_out_untouched():
    out = torch.randn(10)
    before = out.clone()
    with pytest.raises(ValueError, match="coeffs must have 2 rows"):
        fk.reconstruct_(out, torch.randn(3, 4), 1, 8)
    with pytest.raises(ValueError, match="unknown dist"):
        fk.reconstruct_(out, torch.randn(2, 4), 1, 8, dist="cauchy")
    with pytest.raises(ValueError, match="active counts"):
        fk.reconstruct_(out, torch.randn(2, 4), 1, 8, active=torch.tensor([0, 9]))
    with pytest.raises(ValueError, match="coeffs must be on out's device"):
        fk.reconstruct_(out, torch.randn(2, 4, device="meta"), 1, 8)
    with pytest.raises(ValueError, match="contiguous"):
        fk.reconstruct_(torch.randn(4, 5).t(), torch.randn(3, 4), 1, 8)
    with pytest.raises(TypeError, match="out must be float32"):
        fk.reconstruct_(torch.zeros(10, dtype=torch.float64), torch.randn(2, 4), 1, 8)
    assert torch.equal(out, before)


@pytest.mark.parametrize("backend", fk.available_backends("cpu"))
def test_inference_tensors_are_updated_only_in_inference_mode(backend):
    """torch's rule for in-place ops, kept by every backend (the C++ kernels write through
    data_ptr(), past the check torch's own ops make): outside torch.inference_mode() an
    inference tensor is refused untouched; inside it the update is the usual one."""
    with torch.inference_mode():
        p, q = torch.randn(20), torch.randn(7)
    before_p, before_q = p.clone(), q.clone()
    c = torch.randn(3, 4)
    want = before_p + fk.reconstruct(c, 5, 20, 8)
    msg = "is an inference tensor \\(made under torch.inference_mode\\(\\)\\): update it inside"
    with fk.use_backend(backend):
        with pytest.raises(ValueError, match="out " + msg):
            fk.reconstruct_(p, c, 5, 8)
        with pytest.raises(ValueError, match="out " + msg):
            fk.reconstruct_(p, torch.randn(4, 4), 5, 8, start=5)  # the element-offset path
        with pytest.raises(ValueError, match="outs\\[1\\] " + msg):
            fk.reconstruct_multi_([torch.zeros(8), q], torch.randn(2, 4), 5, 8)
        if backend == "cpu":  # the op itself, called without the Python wrapper
            with pytest.raises(ValueError, match="out " + msg):
                torch.ops.ferret.reconstruct_(p, c, 5, 8)
        assert torch.equal(p, before_p) and torch.equal(q, before_q)
        with torch.inference_mode():
            fk.reconstruct_(p, c, 5, 8)
        torch.testing.assert_close(p, want, rtol=0, atol=1e-6)


def test_backend_selection_errors(monkeypatch):
    with pytest.raises(ValueError, match="unknown ferret backend 'gpu'"):
        fk.set_backend("gpu")
    with fk.use_backend("cuda"):
        with pytest.raises(RuntimeError, match="backend 'cuda' was requested but cannot run here"):
            fk.project(torch.randn(10), 1, 4, 8)
    monkeypatch.setenv("FERRET_BACKEND", "reference")
    assert fk.get_backend() == "reference"
    monkeypatch.setenv("FERRET_BACKEND", "tpu")
    with pytest.raises(ValueError, match="unknown ferret backend 'tpu'"):
        fk.project(torch.randn(10), 1, 4, 8)


_SHARED = torch.zeros(8)  # an out that other arguments are views of
_ADJACENT = torch.zeros(8)
BAD_CALLS = [
    # (op, args, exception, message) of bad calls straight to torch.ops.ferret.* (None: a good one)
    ("project", (torch.randn(4), None, 1, 2, 2, 0, "bogus", 1.0, None), ValueError, "unknown dist 'bogus'"),
    (
        "project",
        (torch.randn(4), None, 1, 0, 2, 0, "rademacher", 1.0, None),
        ValueError,
        "num_bases must be a positive int, got 0",
    ),
    (
        "project",
        (torch.randn(4), None, 1, 2, 0, 0, "rademacher", 1.0, None),
        ValueError,
        "block_size must be a positive int, got 0",
    ),
    ("project", (torch.randn(4), None, 1, 2, 2, -1, "rademacher", 1.0, None), ValueError, "block_offset must be >= 0"),
    ("project", (torch.randn(4), None, 1, 2, 2, 2**32 - 1, "rademacher", 1.0, None), ValueError, "below 2\\^32"),
    (
        "project",
        (torch.arange(4), None, 1, 2, 2, 0, "rademacher", 1.0, None),
        TypeError,
        "x must be float32, bfloat16 or float16",
    ),
    (
        "project",
        (torch.randn(4), torch.randn(4).half(), 1, 2, 2, 0, "rademacher", 1.0, None),
        TypeError,
        "y must have x's dtype",
    ),
    (
        "project",
        (torch.randn(4), torch.randn(5), 1, 2, 2, 0, "rademacher", 1.0, None),
        ValueError,
        "y must have as many elements as x \\(4\\), got 5",
    ),
    (
        "project",
        (torch.randn(4), None, 1, 2, 2, 0, "rademacher", 1.0, torch.tensor([1.0, 2.0])),
        TypeError,
        "active must be an int32/int64 tensor",
    ),
    (
        "project",
        (torch.randn(4), None, 1, 2, 2, 0, "rademacher", 1.0, torch.tensor([1, 2, 0])),
        ValueError,
        "active must have shape \\[2\\] \\(one count per block\\), got \\[3\\]",
    ),
    (
        "project",
        (torch.randn(4), None, 1, 2, 2, 0, "rademacher", 1.0, torch.tensor([3, 0])),
        ValueError,
        "active counts must be in \\[0, num_bases=2\\]",
    ),
    (
        "reconstruct",
        (torch.randn(3, 2), 1, 4, 2, 0, "rademacher", 1.0, None, None),
        ValueError,
        "coeffs must have 2 rows \\(blocks of 2 in 4 elements\\), got shape \\[3, 2\\]",
    ),
    ("reconstruct", (torch.randn(6), 1, 4, 2, 0, "rademacher", 1.0, None, None), ValueError, "coeffs must be 2-D"),
    (
        "reconstruct",
        (torch.ones(2, 2, dtype=torch.int32), 1, 4, 2, 0, "rademacher", 1.0, None, None),
        TypeError,
        "coeffs must be float32, bfloat16 or float16",
    ),
    (
        "reconstruct",
        (torch.randn(2, 2), 1, 4, 2, 0, "rademacher", 1.0, torch.float64, None),
        TypeError,
        "dtype must be float32, bfloat16 or float16",
    ),
    ("reconstruct", (torch.randn(2, 2), 1, -4, 2, 0, "rademacher", 1.0, None, None), ValueError, "numel must be >= 0"),
    (
        "reconstruct_",
        (torch.zeros(4), torch.randn(2, 2), 1, 2, 0, "rademacher", 1.0, 1.0, torch.tensor([3, 0])),
        ValueError,
        "active counts must be in",
    ),
    (
        "reconstruct_",
        (torch.zeros(4, 2).t(), torch.randn(4, 2), 1, 2, 0, "rademacher", 1.0, 1.0, None),
        ValueError,
        "contiguous",
    ),
    (
        "reconstruct_",
        (torch.zeros(4, dtype=torch.float64), torch.randn(2, 2), 1, 2, 0, "rademacher", 1.0, 1.0, None),
        TypeError,
        "out must be float32",
    ),
    (
        "philox",
        (torch.zeros(3, 3, dtype=torch.int64), 1),
        ValueError,
        "counter must have shape \\[N, 4\\], got \\[3, 3\\]",
    ),
    # a float counter was truncated; words past 32 bits were refused by C++ only
    ("philox", (torch.zeros(3, 4), 1), TypeError, "counter must be an integer tensor, got"),
    ("philox", (torch.tensor([[2**32, 0, 0, 0]]), 1), ValueError, "counter words must be in \\[0, 2\\^32\\)"),
    ("philox", (torch.tensor([[0, -1, 0, 0]]), 1), ValueError, "counter words must be in \\[0, 2\\^32\\)"),
    ("philox", (torch.tensor([[2**40, 0, 0, 0]], dtype=torch.uint64), 1), ValueError, "counter words must be in"),
    ("philox", (torch.tensor([[5, 0, 7, 2**32 - 1]], dtype=torch.uint32), 1), None, None),  # unsigned counters run
    # the plan is checked before the output is allocated (2^63 - 1 elements overflowed its size)
    ("reconstruct", (torch.randn(1, 4), 1, 2**63 - 1, 8, 0, "rademacher", 1.0, None, None), ValueError, "below 2\\^32"),
    ("reconstruct", (torch.randn(1, 4), 1, 2**40, 2**33, 0, "rademacher", 1.0, None, None), ValueError, "128 rows"),
    # in place: no autograd, and no memory shared between what is read and what is written
    (
        "reconstruct_",
        (torch.zeros(8, requires_grad=True), torch.randn(2, 4), 1, 4, 0, "rademacher", 1.0, 1.0, None),
        ValueError,
        "out requires grad: update it under torch.no_grad\\(\\) \\(reconstruct_ has no autograd\\)",
    ),
    (
        "reconstruct_",
        (_SHARED, _SHARED.view(2, 4), 1, 4, 0, "rademacher", 1.0, 1.0, None),
        ValueError,
        "coeffs and out overlap in memory \\(out is written while coeffs is read\\): clone coeffs first",
    ),
    (
        "reconstruct_",
        (_ADJACENT[:4], _ADJACENT[4:].view(1, 4), 1, 4, 0, "rademacher", 1.0, 1.0, None),
        None,  # adjacent, not overlapping: runs
        None,
    ),
    (
        "reconstruct_",
        (_SHARED, torch.randn(2, 4), 1, 4, 0, "rademacher", 1.0, 1.0, _SHARED.view(torch.int32)[2:4]),
        ValueError,
        "active and out overlap in memory",
    ),
]


@pytest.mark.parametrize("i", range(len(BAD_CALLS)))
def test_native_ops_validate_once_with_the_python_words(i):
    """torch.ops.ferret.* called directly (the C++ kernels' own checks when the extension is built):
    ValueError / TypeError naming the argument, in the same words as the Python validators that
    the Triton and reference paths use, and no output touched."""
    op, args, exc, match = BAD_CALLS[i]
    if exc is None:  # a call at the edge of a rule, which must run
        getattr(torch.ops.ferret, op)(*args)
        getattr(fk.backends.implementation("reference"), op)(*args)
        return
    out = args[0] if op == "reconstruct_" else None
    before = out.clone() if out is not None else None
    with pytest.raises(exc, match=match) as native:
        getattr(torch.ops.ferret, op)(*args)
    with pytest.raises(exc, match=match) as python:
        getattr(fk.backends.implementation("reference"), op)(*args)
    if out is not None:
        assert torch.equal(out, before)
    if fk.native_load_error() is None:  # the C++ message: same words, maybe more numbers
        assert str(python.value).split(",")[0].split("(")[0] in str(native.value)
