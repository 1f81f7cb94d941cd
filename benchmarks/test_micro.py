"""pytest-benchmark microbenchmarks of the ops (not part of the test suite):

.venv/bin/python -m pytest benchmarks/test_micro.py --benchmark-columns=median,ops
"""

import pytest
import torch

import ferret_kernels as fk

N, BS = 1 << 20, 1 << 16


@pytest.fixture(scope="module")
def x():
    return torch.randn(N)


@pytest.mark.parametrize("dist", fk.DISTS)
@pytest.mark.parametrize("K", [1, 16])
def test_project(benchmark, x, dist, K):
    benchmark(fk.project, x, 1, K, BS, dist=dist)


@pytest.mark.parametrize("dist", fk.DISTS)
@pytest.mark.parametrize("K", [1, 16])
def test_reconstruct_inplace(benchmark, x, dist, K):
    c = torch.randn(fk.num_blocks(N, BS), K)
    out = torch.zeros(N)
    benchmark(fk.reconstruct_, out, c, 1, BS, dist=dist)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_project_difference(benchmark, x, dtype):
    a, b = x.to(dtype), (x * 0.9).to(dtype)
    benchmark(fk.project, a, 1, 16, BS, y=b)


def test_floor_sum(benchmark, x):
    benchmark(x.sum)
