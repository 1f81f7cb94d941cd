"""The GPU benchmark scripts run end to end without a GPU: bench_gpu.py at tiny sizes (on the
CPU through Triton's interpreter), so a session with a GPU spends its time measuring, not
debugging the script; sass_cost.py (ahead-of-time compiles and disassembles)."""

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import ferret_kernels as fk

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(
    not torch.cuda.is_available() and "triton" not in fk.available_backends("cpu"),
    reason="no GPU and no Triton interpreter",
)
def test_bench_gpu_smoke():
    env = dict(os.environ)
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "bench_gpu.py"), "--smoke"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    out = res.stdout
    assert re.search(r"bit-identical to the CPU kernel: \{'triton': True", out), out
    for op in ("project", "reconstruct_", "apply_llama2_7b"):
        for dist in ("rademacher", "gaussian"):
            assert re.search(rf"^\s*{op}\s+triton\s+{dist}\s", out, re.M), f"no {op}/{dist} row:\n{out}"
    # the candidates through fk.project (FERRET_TRITON_PROJECT), each with whether it kept the bits;
    # the prefetch ones (a no-op in the interpreter) must have
    for choice in ("signflip", "negsum_prefetch:4", "signflip_prefetch:4"):
        bits = "same_bits" if choice.startswith("negsum") else r"(same|other)_bits"
        assert re.search(rf"^\s*project\s+triton:{choice}\s+rademacher\s+4\s.*\s{bits}$", out, re.M), choice
    # the list reconstruct's row says its configuration
    assert re.search(r"^\s*apply_llama2_7b_multi\s+triton\s+rademacher\s.*CHUNK=2048,warps=4$", out, re.M)
    # the table gpu-check turns into markdown by splitting on white space: a cell in every column
    head = re.search(r"^\s*op\s+backend\s+dist\s.*$", out, re.M)
    table = out[head.start() :].strip().split("\n\n")[0].splitlines()
    assert table[0].split()[-1] == "triton_config" and len(table) > 10, table
    assert len({len(ln.split()) for ln in table}) == 1, table
    assert "appended" not in out  # --smoke never writes benchmarks/results


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_sass_cost_reports_every_kernel():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "sass_cost.py"), "--no-csv"],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    backends = ("triton", "cuda") if shutil.which("nvcc") else ("triton",)
    for be in backends:
        for op in ("project", "reconstruct_"):
            for dist in ("rademacher", "uniform", "gaussian"):
                assert re.search(rf"^\s*{be}\s+{op}\s+{dist}\s", res.stdout, re.M), (
                    f"no {be} {op} {dist} row:\n{res.stdout}"
                )

    # Triton's list kernel costs about what the one-tensor kernel costs per element and basis (it
    # took 3.0x, 14.5 against 4.91, while a tile was summed row by row: a shuffle tree per row)
    def per_elem(op):
        m = re.search(rf"^\s*triton\s+{op}\s+rademacher\s+CHUNK \d+, \d+ warps\s+\d+\s+([\d.]+)", res.stdout, re.M)
        assert m, f"no triton {op} rademacher row:\n{res.stdout}"
        return float(m.group(1))

    assert per_elem("project_multi") <= 1.15 * per_elem("project"), res.stdout

    # the negsum candidate's reason to be: fewer instructions in the pipelined kernel's chunk loop at
    # K = 4 than the sign-flip dots (triton 3.9, sm_90: 3.91 against 5.04 per element and basis)
    def loop_per_elem(op):
        m = re.search(rf"^\s*triton\s+{op}\s+rademacher\s+CHUNK \d+, 4 warps, K = 4\s+\d+\s+([\d.]+)", res.stdout, re.M)
        assert m, f"no triton {op} row:\n{res.stdout}"
        return float(m.group(1))

    assert loop_per_elem("project_loop_negsum") <= 0.85 * loop_per_elem("project_loop"), res.stdout


def test_ab_compare_smoke():
    """benchmarks/ab_compare.py end to end (the same tree as A and B, tiny sizes)."""
    if fk.native_load_error() is not None:
        pytest.skip("ferret_kernels._C not built")
    res = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "benchmarks", "ab_compare.py"),
            "--a",
            ROOT,
            "--b",
            ROOT,
            "--log2n",
            "12",
            "--rounds",
            "1",
            "--no-csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    for op in ("project", "reconstruct", "reconstruct_"):
        assert re.search(rf"^\s*{op}\s+gaussian\s", res.stdout, re.M), res.stdout


@pytest.mark.skipif(
    not torch.cuda.is_available() and "triton" not in fk.available_backends("cpu"),
    reason="no GPU and no Triton interpreter",
)
def test_tune_triton_project_smoke(tmp_path):
    """The Triton project tuning script that gpu-check runs: every row, the pipelined candidate's
    included, and its bit checks without and with y and active counts (the interpreter sums in
    one order, so all are identical here; on a GPU they are what decides shipping)."""
    import csv

    path = tmp_path / "tune.csv"
    res = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "tune_triton_project.py"), "--smoke", "--csv", str(path)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=ROOT,
    )
    assert res.returncode == 0, res.stderr[-4000:]
    rows = list(csv.DictReader(open(path)))
    variants = {(r["dist"], r["K"], r["variant"]) for r in rows}
    assert ("rademacher", "4", "loop_c8_s3") in variants and ("uniform", "64", "one_chunk") in variants, variants
    # the negsum row: compared with its Triton form, and how far from the shipped sums (float32 rounding)
    (ns,) = [r for r in rows if r["variant"] == "loop_c8_s3_ns"]
    assert ns["compared_with"] == "negsum_triton_form" and 0 <= float(ns["max_rel_diff_vs_shipped"]) < 1e-5, ns
    assert not list(tmp_path.glob("*.tmp"))  # the CSV is rewritten through a temporary file after every row
    assert all(r["identical_to_shipped"] == "True" and r["identical_with_y_active"] == "True" for r in rows), rows


def test_sass_path_walks_the_branches_it_is_told():
    """sass_path.walk on a made-up listing: a taken conditional branch is followed, one not listed
    falls through, a backward one runs its loop once, a predicated EXIT does not stop the walk."""
    spec = importlib.util.spec_from_file_location("sass_path", os.path.join(ROOT, "benchmarks", "sass_path.py"))
    sp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sp)
    ins = [
        (0x00, "S2R R0, SR_TID.X"),
        (0x10, "@P0 BRA 0x40"),
        (0x20, "IADD3 R1, R1, 0x1, RZ"),
        (0x30, "BRA 0x50"),
        (0x40, "IMAD R1, R1, 0x2, RZ"),
        (0x50, "@!P1 EXIT"),
        (0x60, "FADD R2, R2, R3"),
        (0x70, "@P2 BRA 0x60"),
        (0x80, "EXIT"),
        (0x90, "BRA 0x90"),
    ]
    addrs = lambda take: [a for a, _ in sp.walk(ins, take)]  # noqa: E731
    assert addrs({0x10}) == [0x00, 0x10, 0x40, 0x50, 0x60, 0x70, 0x80]
    assert addrs(set()) == [0x00, 0x10, 0x20, 0x30, 0x50, 0x60, 0x70, 0x80]
    assert addrs({0x70}) == addrs(set())  # backward: one trip, whatever take says


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_sass_path_counts_a_path_through_the_project_kernel():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(ROOT, "benchmarks", "sass_path.py")
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, script, *a], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT
    )
    res = run("--list")
    assert res.returncode == 0, res.stderr[-4000:]
    total = int(re.search(r"project_kernel\S*: (\d+) instructions", res.stdout).group(1))
    first = re.search(r"^(0x[0-9a-f]+)\s+@", res.stdout, re.M).group(1)  # the first conditional branch
    counts = []
    for take in ([], [first]):
        res = run("--take", *take)
        assert res.returncode == 0, res.stderr[-4000:]
        counts.append(int(re.search(r"^path: (\d+) instructions", res.stdout, re.M).group(1)))
    assert all(0 < c < total for c in counts) and counts[0] != counts[1], (counts, total)
