import os

import numpy as np
import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors in Triton's interpreter. The variable is
# read when the kernels are defined, so it is set before ferret_kernels.triton_kernels loads.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import ferret_kernels as fk
from ferret_kernels import rng_numpy

DISTS = fk.DISTS
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# |v| bound used in tolerances (gaussian values stay below 6 for 24-bit uniforms)
VMAX = {"rademacher": 1.0, "uniform": 3**0.5, "gaussian": 6.0}


def native_backends():
    """Compiled backends to check against the reference on CPU tensors."""
    names = ["cpu"] if "cpu" in fk.available_backends("cpu") else []
    return names


def project_tol(x_blocks_l1: torch.Tensor, dist: str) -> torch.Tensor:
    """Per-block absolute tolerance for project: fp32 accumulation plus the approximation of
    gaussian values (docs/rng.md), both bounded by c * |v|max * ||x_b||_1."""
    return 4e-6 * VMAX[dist] * x_blocks_l1 + 1e-6


def block_l1(x: torch.Tensor, block_size: int) -> torch.Tensor:
    flat = x.reshape(-1).double().abs()
    nb = (flat.numel() + block_size - 1) // block_size
    pad = torch.zeros(nb * block_size, dtype=torch.float64)
    pad[: flat.numel()] = flat
    return pad.view(nb, block_size).sum(1).float()


def assert_project_close(got, ref, x, block_size, dist, extra=None):
    tol = project_tol(block_l1(x, block_size), dist)[:, None]
    if extra is not None:
        tol = tol + extra
    err = (got - ref).abs()
    bad = err > tol
    if bad.any():
        i = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"project mismatch at {bad.sum().item()} of {bad.numel()} entries; first [block {i[0]}, basis {i[1]}]: "
            f"got {got[i[0], i[1]].item():.8g}, ref {ref[i[0], i[1]].item():.8g}, tol {tol[i[0], 0].item():.3g}"
        )


def assert_recon_close(got, ref, coeffs, block_size, dist, dtype=torch.float32, base=None):
    """Elementwise tolerance: fp32 accumulation over K terms, plus one rounding into dtype."""
    n = got.numel()
    per_block = coeffs.double().abs().sum(1).float()
    rows = torch.arange(n) // block_size
    tol = 4e-6 * VMAX[dist] * per_block[rows] + 1e-6
    ulp = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}[dtype]
    mag = ref.float().abs() if base is None else torch.maximum(ref.float().abs(), base.float().abs())
    tol = tol + ulp * mag
    err = (got.float() - ref.float()).abs()
    bad = err > tol
    if bad.any():
        j = bad.nonzero()[0].item()
        raise AssertionError(
            f"reconstruct mismatch at {bad.sum().item()} of {n} elements; first j={j} (block {j // block_size}): "
            f"got {got[j].item():.8g}, ref {ref[j].item():.8g}, tol {tol[j].item():.3g}"
        )


def cuda_rademacher_project_order(x, seed, K, bs, y=None, block_offset=0, scale=1.0, active=None, runs=1):
    """The CUDA rademacher project's float32 adds, restated from csrc/cuda/kernels.cuh's comments with
    numpy (an order model, independent of the kernel's code; chunks of 8192 elements, 8 warps of 32
    lanes, 32 elements a lane): a thread sums its 32 elements left to right (total) and, per basis,
    those where the basis is -1 (negsum); its dot is total - 2 * negsum; a warp adds the lanes' dots
    by the xor tree 16, 8, 4, 2, 1; the chunk's partial sum adds the 8 warps' in warp order from 0.0;
    the second pass's lane l adds chunks l, l + 32, ... in order, then the same xor tree, times
    scale. runs > 1: project_quad_kernel (the K <= 4 candidate), whose CTA takes `runs` consecutive
    chunks (a span) and whose lane adds its `runs` runs of 32 elements, one a chunk, run 0's first,
    into one total and one negsum a basis; the warps, the spans and the second pass as above. x, y:
    CPU tensors; returns [blocks, K] float32."""
    xf = (x.float() if y is None else x.float() - y.float()).cpu().numpy()
    n, f32 = xf.size, np.float32
    span = 8192 * runs
    nb, cpb = fk.num_blocks(n, bs), -(-bs // span)
    lanes = np.arange(32)

    def lane_runs(v):  # [span rows, 8 warps, 32 lanes, the lane's runs x 32 elements in its order]
        return v.reshape(cpb, runs, 8, 32, 32).transpose(0, 2, 3, 1, 4).reshape(cpb, 8, 32, runs * 32)

    def tree(v):  # the xor tree over the last axis (32 lanes)
        for o in (16, 8, 4, 2, 1):
            v = v + v[..., lanes ^ o]
        return v

    out = np.zeros((nb, K), f32)
    for b in range(nb):
        blk = np.zeros(cpb * span, f32)
        seg = xf[b * bs : min((b + 1) * bs, n)]
        blk[: seg.size] = seg
        t = lane_runs(blk)  # chunk (span), warp, lane, the lane's elements
        total = np.zeros(t.shape[:3], f32)
        for e in range(t.shape[-1]):
            total = total + t[..., e]
        kb = K if active is None else min(max(int(active[b]), 0), K)
        for k in range(kb):
            neg = lane_runs(rng_numpy.basis(seed, block_offset + b, k, blk.size)) < 0
            ns = np.zeros_like(total)
            for e in range(t.shape[-1]):
                ns = ns + np.where(neg[..., e], t[..., e], f32(0))
            warp = tree(total - f32(2) * ns)[..., 0]  # [chunk, warp]
            part = np.zeros(cpb, f32)
            for w in range(8):
                part = part + warp[:, w]
            lane = np.zeros(32, f32)
            for c in range(cpb):
                lane[c % 32] = lane[c % 32] + part[c]
            out[b, k] = tree(lane)[0] * f32(scale)
    return torch.from_numpy(out)


@pytest.fixture(
    params=native_backends() or [pytest.param("cpu", marks=pytest.mark.skip(reason="ferret_kernels._C not built"))]
)
def backend(request):
    with fk.use_backend(request.param):
        yield request.param


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    yield


def pytest_report_header(config):
    return [
        f"ferret_kernels: native={'ok' if fk.native_load_error() is None else fk.native_load_error()}, "
        f"cpu isa={fk.cpu_isa() if fk.native_load_error() is None else '-'}, backends(cpu)={fk.available_backends('cpu')}, "
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}"
    ]
