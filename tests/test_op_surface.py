"""The op surface: one schema per op, kernels per dispatch key, callable without Python; the
Python functions choose a backend; the reference serves the ops when the extension is absent;
the backend registry depends on nothing of the package."""

import os
import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import ferret_kernels as fk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _bits(t: torch.Tensor) -> list[str]:
    return [f"{v & 0xFFFFFFFF:08x}" for v in t.float().reshape(-1).contiguous().view(torch.int32).tolist()]


@pytest.mark.skipif(fk.native_load_error() is not None, reason="ferret_kernels._C not built")
@pytest.mark.skipif(shutil.which("g++") is None, reason="g++ not installed")
def test_cpp_caller_without_python_gets_the_cpu_kernels_results(tmp_path):
    from torch.utils import cpp_extension

    lib = fk.ops._C.__file__
    exe = str(tmp_path / "caller")
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    libdirs = cpp_extension.library_paths()
    cmd = [
        "g++",
        "-std=c++17",
        "-O1",
        f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
        os.path.join(ROOT, "tests", "cpp_caller", "main.cpp"),
        "-o",
        exe,
        *[f"-I{p}" for p in cpp_extension.include_paths()],
        *[f"-L{p}" for p in libdirs],
        *[f"-Wl,-rpath,{p}" for p in libdirs],
        "-Wl,--no-as-needed",
        "-lc10",
        "-ltorch_cpu",
        # a CUDA build of torch: the extension needs its CUDA libraries (an H100 run, 2026-11-26:
        # "dlopen: libc10_cuda.so: cannot open shared object file" without them)
        *(
            ["-lc10_cuda", "-ltorch_cuda"]
            if any(os.path.exists(os.path.join(p, "libc10_cuda.so")) for p in libdirs)
            else []
        ),
        "-ldl",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if res.returncode and "c++17" in res.stderr:  # newer torch headers need C++20
        res = subprocess.run(
            [c if c != "-std=c++17" else "-std=c++20" for c in cmd], capture_output=True, text=True, timeout=600
        )
    assert res.returncode == 0, res.stderr[-3000:]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    run = subprocess.run([exe, lib], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    got = {line.split()[0]: line.split()[2:] for line in run.stdout.splitlines() if not line.startswith("error")}

    n, bs = 5000, 1024
    x = torch.arange(n, dtype=torch.float32).mul(0.37).sin()
    y = torch.arange(n, dtype=torch.float32).mul(0.11).cos().bfloat16()
    with fk.use_backend("cpu"):
        g = fk.project(x, 7, 8, bs, block_offset=3, scale=0.5)
        gd = fk.project(x.bfloat16(), 2**64 - 5, 6, bs, y=y, dist="gaussian")
        r = fk.reconstruct(g, 7, n, bs, block_offset=3, dist="uniform", scale=2.0)
        out = fk.reconstruct_(
            torch.arange(n, dtype=torch.float32).mul(0.01), g, 7, bs, block_offset=3, scale=0.5, alpha=-1.0
        )
    assert got["project"] == _bits(g)
    assert got["project_diff"] == _bits(gd)
    assert got["reconstruct"] == _bits(r)
    assert got["reconstruct_start"] == _bits(r[1500:])
    assert got["reconstruct_"] == _bits(out)
    with fk.use_backend("cpu"):  # the list ops: a C++ caller gets the Python layer's bits
        xs, starts = [x, y[:1500]], [0, 700]
        gm = fk.project_multi(xs, 7, 8, bs, block_offsets=[3, 9], starts=starts, dist="uniform", scale=0.5)
        outs = fk.reconstruct_multi_(
            [t.clone() for t in xs], gm, 7, bs, block_offsets=[3, 9], starts=starts, alpha=-0.5
        )
    assert got["project_multi"] == _bits(gm)
    assert got["reconstruct_multi_0"] == _bits(outs[0])
    assert got["reconstruct_multi_1"] == _bits(outs[1].float())
    assert "error ValueError ferret: num_bases must be a positive int, got 0" in run.stdout
    if torch.cuda.is_available() and "cuda" in fk.available_backends("cuda"):
        with fk.use_backend("cuda"):
            gc = fk.project(x.cuda(), 7, 8, bs, block_offset=3, scale=0.5)
            rc = fk.reconstruct(gc, 7, n, bs, block_offset=3, dist="uniform", scale=2.0)
        assert got["project_cuda"] == _bits(gc.cpu())
        with fk.use_backend("cuda"):
            gmc = fk.project_multi(
                [x.cuda(), y[:1500].cuda()], 7, 8, bs, block_offsets=[3, 9], starts=[0, 700], dist="uniform", scale=0.5
            )
        assert got["project_multi_cuda"] == _bits(gmc.cpu())
        assert got["reconstruct_cuda"] == _bits(rc.cpu())
    else:
        assert "project_cuda" not in got


def test_without_the_extension_the_reference_serves_the_ops():
    """No _C (a build without a compiler, say): the schemas come from Python, the reference
    runs the ops on every device, with a warning, and the results are the contract's."""
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["ferret_kernels._C"] = None  # the import of the extension fails
        import torch, ferret_kernels as fk
        assert fk.native_load_error() is not None and "cpu" not in fk.available_backends("cpu")
        x = torch.arange(3000, dtype=torch.float32).mul(0.37).sin()
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            g = torch.ops.ferret.project(x, None, 9, 5, 1024, 2, "uniform", 1.0, None)
        assert any("use the reference implementation" in str(m.message) for m in w), [str(m.message) for m in w]
        torch.save(g, sys.argv[1])
        with __import__("pytest").raises(ValueError, match="num_bases must be a positive int"):
            torch.ops.ferret.project(x, None, 9, 0, 1024)
    """)
    out = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"ferret_noext_{os.getpid()}.pt")
    res = subprocess.run([sys.executable, "-c", code, out], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-3000:]
    g = torch.load(out)
    os.remove(out)
    x = torch.arange(3000, dtype=torch.float32).mul(0.37).sin()
    with fk.use_backend("reference"):
        want = fk.project(x, 9, 5, 1024, block_offset=2, dist="uniform")
    assert torch.equal(g, want)


def test_wrappers_choose_the_backend_and_the_op_runs_the_native_kernel(monkeypatch):
    from ferret_kernels import reference

    calls = []
    real = reference.project
    monkeypatch.setattr(reference, "project", lambda *a, **k: calls.append(1) or real(*a, **k))
    fk.backends._impls.pop("reference", None)  # rebuilt with the spy
    x = torch.randn(2000)
    with fk.use_backend("reference"):
        a = fk.project(x, 3, 4, 512)
        assert len(calls) == 1
        b = torch.ops.ferret.project(x, None, 3, 4, 512)  # the dispatcher ignores the selection
        assert len(calls) == 1 if fk.native_load_error() is None else len(calls) == 2
    fk.backends._impls.pop("reference", None)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_backend_registry_imports_nothing_of_the_package():
    code = (
        "import sys, importlib.util; spec = importlib.util.spec_from_file_location('b', sys.argv[1]); "
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m); "
        "assert not [k for k in sys.modules if k.startswith('ferret_kernels')], sorted(sys.modules)"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, os.path.join(ROOT, "ferret_kernels", "backends.py")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr[-2000:]
