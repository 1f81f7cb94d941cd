"""The CUDA kernels compile (no GPU needed): nvcc builds the torch-free kernels of
csrc/cuda/kernels.cuh, every dtype x dist instantiation (compile_check.cu, the candidates
included) and the extension's own kernel object (launch.cu, behind launch.h), for sm_80 and
sm_90 with all warnings as errors and no register spills. Skipped where nvcc is not installed."""

import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nvcc():
    for cand in (shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if cand and os.path.exists(cand):
            return cand
    return None


@pytest.mark.skipif(_nvcc() is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", ["compile_check.cu", "launch.cu"])
@pytest.mark.parametrize("arch", ["80", "90"])
def test_cuda_kernels_compile_without_warnings(arch, source, tmp_path):
    cmd = [
        _nvcc(),
        "-std=c++17",
        "-O3",
        "-I",
        os.path.join(ROOT, "csrc"),
        "-gencode",
        f"arch=compute_{arch},code=sm_{arch}",
        "-Werror",
        "all-warnings",
        "-Xcompiler",
        "-Wall,-Wextra,-Werror",
        "-Xptxas",
        "-v",
        "-c",
        os.path.join(ROOT, "csrc", "cuda", source),
        "-o",
        str(tmp_path / "k.o"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-4000:]
    # no register spills in any kernel
    spills = [
        ln
        for ln in res.stderr.splitlines()
        if "spill" in ln
        and not ln.strip().startswith("0 bytes")
        and " 0 bytes spill stores, 0 bytes spill loads" not in ln
    ]
    assert not spills, "\n".join(spills)
