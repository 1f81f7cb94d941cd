"""Bad input gets a clear error naming the problem, and nothing is written."""

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
        (dict(block_offset=-1), ValueError, "block_offset"),
        (dict(block_offset=2**32 - 1), ValueError, "2\\^32"),
    ],
)
def test_project_argument_errors(kwargs, exc, match):
    args = dict(seed=1, num_bases=4, block_size=8)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        fk.project(torch.randn(17), args.pop("seed"), args.pop("num_bases"), args.pop("block_size"), **args)


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


def test_native_ops_check_arguments_themselves():
    """The backend ops are callable directly; they refuse bad input too (no crash, no write)."""
    if "cpu" not in fk.available_backends("cpu"):
        pytest.skip("no native backend")
    with pytest.raises(RuntimeError, match="unknown dist"):
        torch.ops.ferret._cpu_project(torch.randn(4), None, 1, 2, 2, 0, "bogus", 1.0, None)
    with pytest.raises(RuntimeError, match="num_bases"):
        torch.ops.ferret._cpu_project(torch.randn(4), None, 1, 0, 2, 0, "rademacher", 1.0, None)
    with pytest.raises(RuntimeError, match="coeffs must have 2 rows"):
        torch.ops.ferret._cpu_reconstruct(torch.randn(3, 2), 1, 4, 2, 0, "rademacher", 1.0, None, None)
    out = torch.zeros(4)
    with pytest.raises(RuntimeError, match="active counts"):
        torch.ops.ferret._cpu_reconstruct_(out, torch.randn(2, 2), 1, 2, 0, "rademacher", 1.0, 1.0, torch.tensor([3, 0]))
    assert torch.equal(out, torch.zeros(4))
