"""Op registration: opcheck on every op, torch.compile(fullgraph=True), the fake kernels."""

import pytest
import torch

import ferret_kernels as fk


def _samples():
    x = torch.randn(700)
    y = torch.randn(700)
    c = torch.randn(3, 4)
    act = torch.tensor([4, 0, 2], dtype=torch.int32)
    return [
        (torch.ops.ferret.project.default, (x, None, 7, 4, 256, 0, "rademacher", 1.0, None)),
        (torch.ops.ferret.project.default, (x, y, -5, 4, 256, 3, "gaussian", 0.5, act)),
        (torch.ops.ferret.project.default, (x.bfloat16(), None, 7, 4, 256, 0, "uniform", 1.0, None)),
        (torch.ops.ferret.reconstruct.default, (c, 7, 700, 256, 0, "rademacher", 1.0, None, None)),
        (torch.ops.ferret.reconstruct.default, (c, 7, 700, 256, 2, "uniform", 2.0, torch.float16, act)),
        (torch.ops.ferret.reconstruct_.default, (torch.randn(700), c, 7, 256, 0, "gaussian", 1.0, -0.5, None)),
        (torch.ops.ferret.philox.default, (torch.randint(0, 2**32, (5, 4)), 3)),
    ]


@pytest.mark.parametrize("i", range(7))
def test_opcheck(backend, i):
    op, args = _samples()[i]
    torch.library.opcheck(op, args)


@pytest.mark.parametrize(
    "name", ["project", "reconstruct", "reconstruct_", "project_multi", "reconstruct_multi_", "philox"]
)
def test_one_op_with_native_kernels_per_dispatch_key(name):
    """One schema per op (C++ and Python agree), the C++ kernel registered on it for the CPU key."""
    if fk.native_load_error() is not None:
        pytest.skip("ferret_kernels._C not built")
    op = getattr(torch.ops.ferret, name).default
    assert torch._C._dispatch_has_kernel_for_dispatch_key(f"ferret::{name}", "CPU")
    assert str(op._schema) == str(torch._C.parse_schema(f"ferret::{name}{fk.ops.SCHEMAS[name]}"))
    assert not hasattr(torch.ops.ferret, f"_cpu_{name}") and not hasattr(torch.ops.ferret, f"_cuda_{name}")


def test_torch_compile_fullgraph(backend):
    n, bs, K = 3000, 1024, 8

    def step(w_old, w_new, param):
        g = fk.project(w_old, 11, K, bs, y=w_new, scale=fk.jl_scale(K))
        fk.reconstruct_(param, g, 11, bs, scale=fk.jl_scale(K), alpha=-1.0)
        return g, fk.reconstruct(g * 2, 11, n, bs, dist="rademacher")

    w_old, w_new = torch.randn(n), torch.randn(n)
    p_eager, p_comp = torch.zeros(n), torch.zeros(n)
    want = step(w_old, w_new, p_eager)
    got = torch.compile(step, fullgraph=True)(w_old, w_new, p_comp)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    assert torch.equal(p_comp, p_eager)


def test_fake_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(1000, dtype=torch.bfloat16)
        g = torch.ops.ferret.project(x, None, 1, 16, 300)
        assert g.shape == (4, 16) and g.dtype == torch.float32
        r = torch.ops.ferret.reconstruct(g, 1, 1000, 300, 0, "uniform", 1.0, torch.float16)
        assert r.shape == (1000,) and r.dtype == torch.float16
        with pytest.raises(ValueError, match="coeffs must have 1 rows"):
            torch.ops.ferret.reconstruct(g, 1, 100, 300)
