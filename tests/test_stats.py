"""Statistics of the bases and of reconstruct(project(x)) (Monte Carlo with fixed seeds).

With unit-variance bases and scale 1/sqrt(K) on both sides, x_hat = (1/K) sum_k v_k v_k^T x
is unbiased, and per coordinate Var(x_hat_j) = (||x||^2 + c x_j^2) / K with c = E[v^4] - 2:
rademacher -1, uniform -0.2, gaussian +1. The tests use many blocks of one call as
independent trials (every block has its own bases) and z-scores against those formulas,
so a wrong scale, a repeated basis or correlated blocks fail them.
"""

import math

import pytest
import torch

import ferret_kernels as fk

from conftest import DISTS

C4 = {"rademacher": -1.0, "uniform": -0.2, "gaussian": 1.0}


@pytest.mark.parametrize("dist", DISTS)
def test_reconstruction_unbiased_with_theoretical_variance(backend, dist):
    n, K, trials = 64, 8, 4000
    x = torch.randn(n, dtype=torch.float64)
    x[:4] *= 4  # uneven coordinates so the c x_j^2 term matters
    xs = x.float().repeat(trials)  # block b = trial b: independent bases per block
    s = fk.jl_scale(K)
    g = fk.project(xs, 2024, K, n, dist=dist, scale=s)
    xh = fk.reconstruct(g, 2024, xs.numel(), n, dist=dist, scale=s).double().view(trials, n)
    var_theory = (x.square().sum() + C4[dist] * x.square()) / K  # per coordinate
    # unbiased: z-scores of the coordinate means
    z = (xh.mean(0) - x) / (var_theory / trials).sqrt()
    assert z.abs().max() < 4.5, z.abs().max()
    assert abs(z.square().mean().item() - 1.0) < 4 * math.sqrt(2 / n)
    # variance matches theory, coordinate-wise (sample variance of 4000 trials: ~2.2% rel. s.e.)
    ratio = xh.var(0) / var_theory
    assert (ratio - 1).abs().max() < 0.15, ratio
    # total squared error: E||x_hat - x||^2 = (n + c) ||x||^2 / K
    err2 = (xh - x).square().sum(1)
    want = (n + C4[dist]) * x.square().sum() / K
    assert abs(err2.mean() - want) < 4 * err2.std() / math.sqrt(trials)


@pytest.mark.parametrize("dist", DISTS)
def test_unbiased_across_seeds(backend, dist):
    """The same holds when the randomness comes from the seed instead of the block index."""
    n, K, seeds = 200, 4, 600
    x = torch.randn(n)
    s = fk.jl_scale(K)
    acc = torch.zeros(n, dtype=torch.float64)
    for seed in range(seeds):
        seed = seed * 0x9E3779B97F4A7C15 % 2**64
        acc += fk.reconstruct(fk.project(x, seed, K, n, dist=dist, scale=s), seed, n, n, dist=dist, scale=s).double()
    var = (x.double().square().sum() + C4[dist] * x.double().square()) / K
    z = (acc / seeds - x.double()) / (var / seeds).sqrt()
    assert z.abs().max() < 4.5 and abs(z.square().mean().item() - 1) < 4 * math.sqrt(2 / n)


@pytest.mark.parametrize("dist", DISTS)
def test_basis_moments(backend, dist):
    n = 1 << 16
    one_hot = torch.eye(4)[None, 3].repeat(16, 1)  # 16 blocks, basis 3
    v = fk.reconstruct(one_hot, 77, 16 * n, n, dist=dist).double()
    se = 1 / math.sqrt(v.numel())
    assert abs(v.mean().item()) < 5 * se
    m4 = {"rademacher": 1.0, "uniform": 1.8, "gaussian": 3.0}[dist]
    assert abs(v.square().mean().item() - 1) <= 5 * math.sqrt(m4 - 1) * se + 1e-12
    assert abs(v.pow(4).mean().item() - m4) < 0.05 * m4
    if dist == "rademacher":
        assert set(v.unique().tolist()) == {-1.0, 1.0}
    if dist == "uniform":
        assert v.abs().max() < math.sqrt(3)
        hist = torch.histc(v.float(), bins=16, min=-math.sqrt(3), max=math.sqrt(3)) / v.numel()
        assert (hist - 1 / 16).abs().max() < 0.002
    if dist == "gaussian":
        # CDF at a few points vs the normal CDF
        for t in (-2.0, -1.0, 0.0, 0.5, 1.5):
            emp = (v < t).double().mean().item()
            assert abs(emp - 0.5 * (1 + math.erf(t / math.sqrt(2)))) < 0.004


@pytest.mark.parametrize("dist", DISTS)
def test_bases_uncorrelated_across_seeds_blocks_and_indices(backend, dist):
    n = 8192
    vs = []
    for seed, g, k in [(1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (2**32 + 1, 0, 0), (1, 2**31, 7), (0, 0, 0)]:
        c = torch.zeros(1, k + 1)
        c[0, k] = 1
        vs.append(fk.reconstruct(c, seed, n, n, block_offset=g, dist=dist).double())
    V = torch.stack(vs)
    corr = torch.corrcoef(V)
    off = corr - torch.eye(len(vs), dtype=torch.float64)
    assert off.abs().max() < 5 / math.sqrt(n), off.abs().max()
    # neighbouring elements inside one basis are not correlated either (lag 1, 4, 32, 128)
    for lag in (1, 4, 32, 128):
        r = torch.corrcoef(torch.stack([V[0, :-lag], V[0, lag:]]))[0, 1]
        assert abs(r) < 5 / math.sqrt(n), (lag, r)


def test_coefficients_behave_like_a_jl_sketch(backend):
    """||gamma||^2 with scale 1/sqrt(K) concentrates around ||x||^2."""
    n, K = 4096, 256
    x = torch.randn(n)
    g = fk.project(x, 5, K, n, scale=fk.jl_scale(K))
    r = (g.square().sum() / x.square().sum()).item()
    assert abs(r - 1) < 5 * math.sqrt(2 / K)
