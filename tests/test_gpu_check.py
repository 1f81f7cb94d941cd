"""scripts/gpu_check.py's test stage, on stand-in test files: counts of passed / failed / skipped
read from pytest's output, and a budget that runs out says which file it stopped part way and
which it never started (the remote run's summary is all a GPU session gets back)."""

import importlib.util
import os
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", os.path.join(ROOT, "scripts", "gpu_check.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _write(tmp_path, name, body):
    p = tmp_path / name
    p.write_text(textwrap.dedent(body))
    return str(p)


def test_stage_tests_counts_and_budget(tmp_path, monkeypatch):
    gc = _gpu_check()
    mixed = _write(
        tmp_path,
        "test_mixed.py",
        """
        import pytest
        def test_a(): pass
        def test_b(): pass
        def test_c(): assert 1 == 2
        @pytest.mark.skip(reason="stand-in")
        def test_d(): pass
        """,
    )
    slow = _write(
        tmp_path,
        "test_slow.py",
        """
        import time
        def test_first(): pass
        def test_sleeps(): time.sleep(120)
        """,
    )
    never = _write(tmp_path, "test_never.py", "def test_x(): pass\n")

    # one file at a time: the budget runs out in the second, the third never starts
    monkeypatch.setattr(gc, "test_workers", lambda gpu: 1)
    run = gc.Run(budget=600, out=None)
    run.env = {"pytest_timeout": "missing"}
    ok = gc.stage_tests(run, 25, gpu=False, files=[mixed, slow, never])
    assert not ok
    name, status, seconds, note = run.stages[-1]
    assert status == "FAIL"  # a failing test outranks the budget
    # test_first of the slow file ran before the budget stopped it
    assert note.startswith("3 passed, 1 failed, 0 errors, 1 skipped"), note
    assert "test_mixed.py::test_c" in note
    assert f"not run (budget): {slow} (stopped part way), {never}" in note
    assert seconds < 60

    # two at a time (the rehearsal on 2 cores): the short file finishes beside the hung one
    monkeypatch.setattr(gc, "test_workers", lambda gpu: 2)
    run = gc.Run(budget=600, out=None)
    run.env = {"pytest_timeout": "missing"}
    assert not gc.stage_tests(run, 15, gpu=False, files=[slow, never])
    _, status, _, note = run.stages[-1]
    assert status == "TIMEOUT" and note.startswith("2 passed, 0 failed"), note
    assert note.endswith(f"2 files at a time; not run (budget): {slow} (stopped part way)"), note


def test_profile_stage_reads_ncu_csv_and_runs_ncu_on_the_variants(tmp_path, monkeypatch):
    """The ncu stage never runs here (no GPU, no ncu): its parser is checked on output in ncu's
    `--csv --page details` form (a row per kernel and metric, ==PROF== lines between), and the stage
    on a stand-in ncu that prints such rows: the command it gets (clocks left alone, the variants
    binary in profile mode), the table in the summary, the raw rows in $OUT."""
    gc = _gpu_check()
    head = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size",'
    head += '"Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'

    def row(i, kernel, metric, unit, value):
        return f'"{i}","9","pv","h","{kernel}","1","7","(256, 1, 1)","(32768, 1, 1)","0","9.0","S","{metric}","{unit}","{value}"'

    k0 = "void ferret::cuda::project_kernel<__nv_bfloat16, 0, 4, 1>(ferret::ProjectParams, long, long, float *)"
    k1 = "read4_kernel(const uint4 *, long, float *)"
    text = "\n".join(
        [
            "==PROF== Connected to process 9",
            head,
            row(3, k0, "DRAM Throughput", "%", "84.5"),
            row(3, k0, "Duration", "us", "212.16"),
            row(3, k0, "Elapsed Cycles", "cycle", "1"),
            row(1, k1, "Achieved Occupancy", "%", "97.1"),
            "==PROF== Disconnected from process 9",
        ]
    )
    table = gc.ncu_table(text)
    assert table[0] == "| id | kernel | Duration | DRAM Throughput | Achieved Occupancy |"
    assert table[2] == "| 1 | read4_kernel |  |  | 97.1 % |"
    assert table[3] == "| 3 | project_kernel | 212.16 us | 84.5 % |  |"
    assert gc.ncu_table("==PROF== no rows") == []

    fake = tmp_path / "ncu"
    args_file = tmp_path / "args"
    rows = "\n".join([head, row(3, k0, "Duration", "us", "212.16")])
    fake.write_text(f"#!/bin/sh\necho \"$@\" > {args_file}\ncat <<'X'\n{rows}\nX\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    run = gc.Run(budget=60, out=str(tmp_path / "out"))
    run.env = {}
    assert gc.stage_profile(run, "/x/cuda_project_variants", 30)
    assert args_file.read_text().split()[:3] == ["--clock-control", "none", "--csv"]
    assert args_file.read_text().split()[-4:] == ["/x/cuda_project_variants", "28", "-", "profile"]
    assert run.stages[-1][:2] == ("profile (ncu)", "ok") and run.stages[-1][3] == "1 kernels profiled"
    assert (tmp_path / "out" / "ncu_project.csv").read_text().splitlines()[1].startswith('"3"')
    gc.write_summary(run, 0)
    assert "| 3 | project_kernel | 212.16 us |" in (tmp_path / "out" / "summary.md").read_text()


def test_bars_table_reads_the_issue_bars_off_the_rows(tmp_path):
    """The summary's bars (issue 11) come from the run's own rows: each bar met, missed or
    without a row (never passed for want of one); candidates count only when bit-identical (the
    Triton ones with y and active counts too), or, where other bits are their design (the negsum dots,
    CUDA's quad kernel), within float32 rounding of the shipped output."""
    gc = _gpu_check()
    rows = [
        "op=project, backend=cuda, dist=rademacher, K=4, time_ms=0.2, frac_of_copy=0.86, triton_config=-",
        "op=project, backend=triton, dist=rademacher, K=4, time_ms=0.25, frac_of_copy=0.709, triton_config=CHUNK=8192,warps=4",
        "op=project, backend=cuda, dist=rademacher, K=64, time_ms=1.9, x_vs_per_seed=2170, x_vs_dense=19.9, triton_config=-",
        # the candidates through the op (FERRET_*_PROJECT): CUDA's count only with the shipped bits
        "op=project, backend=cuda:fused, dist=rademacher, K=4, time_ms=0.21, frac_of_copy=0.87, triton_config=same_bits",
        "op=project, backend=cuda:prefetch:2, dist=rademacher, K=4, time_ms=0.19, frac_of_copy=0.95, "
        "triton_config=other_bits",
        "op=project, backend=triton:negsum, dist=rademacher, K=4, time_ms=0.2, frac_of_copy=0.81, "
        "triton_config=other_bits",
        "op=project, backend=triton:prefetch:4, dist=rademacher, K=4, time_ms=0.24, frac_of_copy=0.75, "
        "triton_config=same_bits",
        # the quad kernel: other bits by design, counted; a result far off the shipped one never is
        "op=project, backend=cuda:quad, dist=rademacher, K=4, time_ms=0.18, frac_of_copy=0.9, triton_config=other_bits",
        "op=project, backend=cuda:quad:4, dist=rademacher, K=4, time_ms=0.17, frac_of_copy=0.99, triton_config=far_off",
        "op=project, backend=triton:signflip, dist=rademacher, K=4, time_ms=0.17, frac_of_copy=0.99, "
        "triton_config=far_off",
        "op=apply_llama2_7b, backend=cuda, dist=rademacher, K=64, time_ms=201, triton_config=-",
        "op=apply_llama2_7b_multi, backend=cuda, dist=rademacher, K=64, time_ms=56.7, triton_config=-",
        "op=apply_llama2_7b_multi, backend=triton, dist=gaussian, K=64, time_ms=1023, triton_config=CHUNK=2048,warps=4",
    ]
    bench = "# rademacher and uniform bases bit-identical to the CPU kernel: {'cuda': True, 'triton': False}"
    variants = "\n".join(
        [
            "mb4_ch1    4   0.2297     2337    0.788    0.932    64     4 yes",
            "pass1_mb4   4   0.2122     2531    0.854    1.009    64     4 -",
            "pf_1       4   0.2150     2497    0.842    0.990    64     4 yes",
            "pf_2       4   0.2000     2684    0.905    1.060    64     4 NO",
            "pf_2      16   0.2000     2684    0.905    1.060    64     4 yes",
            "quad2      4   0.1600     3355    0.880    0.950    64     4 close",
            "quad4      4   0.1500     3579    0.940    1.010    64     4 NO",
            "rademacher K=  4 chunk=  8192 warps= 4 loop_c8_s3     0.2508 ms    2140 GB/s  0.712 of copy  "
            "identical=True (y, active: True)  (shipped)",
            "rademacher K=  4 chunk=  8192 warps= 4 loop_c8_s3_pf2     0.2300 ms    2334 GB/s  0.777 of copy  "
            "identical=True (y, active: False)",
            "rademacher K=  4 chunk=  8192 warps= 4 loop_c8_s3_pf4     0.2200 ms    2440 GB/s  0.812 of copy  "
            "identical=False (y, active: False)",
            # negsum rows: "identical" compares with their Triton form; never a bit-identical candidate
            "rademacher K=  4 chunk=  8192 warps= 4 loop_c8_s3_ns     0.2100 ms    2555 GB/s  0.850 of copy  "
            "identical=True (y, active: True)  (vs its Triton form; 1e-07 of the largest shipped sum from it)",
            "rademacher K= 64 chunk=  8192 warps= 4 one_chunk      2.7964 ms     192 GB/s  0.900 of copy  identical=True",
        ]
    )
    table = gc.bars_table(rows, bench, variants)
    got = {}
    for ln in table[2:]:
        bar, be, measured, target, met = [c.strip() for c in ln.strip("|").split("|")]
        got[(bar, be)] = (measured, met)
    k4 = "K = 4 project, rademacher bf16 n = 2^28, of copy"
    assert got[(k4, "cuda")] == ("0.860 (0.2 ms)", "yes")
    assert got[(k4, "triton")] == ("0.709 (0.25 ms)", "NO")
    assert got[("K = 4, best bit-identical CUDA variant (harness)", "cuda")] == ("0.842 (0.2150 ms, pf_1)", "NO")
    triton_best = got[("K = 4, best bit-identical Triton variant (tuning script)", "triton")]
    assert triton_best == ("0.712 (0.2508 ms, loop_c8_s3)", "NO")
    negsum = got[("K = 4, best Triton negsum candidate (other bits; PTX = its Triton form)", "triton")]
    assert negsum == ("0.850 (0.2100 ms, loop_c8_s3_ns)", "yes")
    choice = "K = 4 project through the op, best candidate choice"
    assert got[("K = 4, best CUDA quad candidate (other bits, harness)", "cuda")] == ("0.880 (0.1600 ms, quad2)", "yes")
    assert got[(choice, "cuda")] == ("0.900 (0.18 ms, FERRET_CUDA_PROJECT=quad, other bits)", "yes")
    assert got[(choice, "triton")] == ("0.810 (0.2 ms, FERRET_TRITON_PROJECT=negsum, other bits)", "yes")
    assert got[("K = 64 project vs per-seed", "cuda")] == ("2170x", "yes")
    assert got[("K = 64 project vs dense", "cuda")] == ("19.9x", "NO")
    assert got[("K = 64 reconstruct_ vs dense", "triton")] == ("-", "no row")
    assert got[("LLaMA2-7B apply, rademacher, K = 64", "cuda")] == ("201 ms (per tensor), 56.7 ms (list)", "yes")
    assert got[("LLaMA2-7B apply, gaussian, K = 64", "triton")] == ("1023 ms (list)", "NO")
    assert got[("LLaMA2-7B apply, gaussian, K = 64", "cuda")] == ("-", "no row")
    assert got[("rademacher and uniform bases bit-identical GPU vs CPU", "cuda")] == ("True", "yes")
    assert got[("rademacher and uniform bases bit-identical GPU vs CPU", "triton")] == ("False", "NO")
    # the summary carries the table on a GPU run only (the smoke rows' tiny sizes mean nothing)
    for device, present in (("yes", True), ("no", False)):
        run = gc.Run(budget=60, out=str(tmp_path / device))
        run.env = {"cuda_device": device}
        run.bench_rows, run.bench_text, run.variants_text = rows, bench, variants
        gc.write_summary(run, 0)
        text = (tmp_path / device / "summary.md").read_text()
        assert ("## issue 11's bars, from this run" in text) == present
        assert ("| 0.842 (0.2150 ms, pf_1) |" in text) == present


def test_build_falls_back_to_no_cuda_kernels_where_the_cuda_build_fails(monkeypatch):
    """A CUDA build that fails on the GPU machine must not cost the session its Triton tests and
    timings: the stage builds once more without the CUDA kernels, says so, and stays FAIL; a build
    that ran out of time is not retried; a good CUDA build is not built twice."""
    gc = _gpu_check()
    env = {"cuda_device": "yes", "nvcc": "release 13.0", "CUDA_HOME": "/usr/local/cuda", "arch": "9.0"}

    def stage(results):
        calls = []

        def build_once(run, env_, timeout):
            calls.append(env_["FERRET_BUILD_CUDA"])
            return results[len(calls) - 1], "setup.py build_ext --inplace"

        monkeypatch.setattr(gc, "_build_once", build_once)
        monkeypatch.setattr(gc, "_probe", lambda run, want_cuda: True)
        run = gc.Run(budget=600, out=None)
        run.env = dict(env)
        ok = gc.stage_build(run, 300)
        return ok, run, calls

    ok, run, calls = stage([1, 0])
    assert calls == ["1", "0"] and not ok and run.built
    assert run.stages[-1][1] == "FAIL"
    assert "the CUDA build FAILED" in run.stages[-1][3] and "Triton and CPU only" in run.stages[-1][3]
    ok, run, calls = stage([1, 1])
    assert calls == ["1", "0"] and not ok and not run.built
    assert "the build without them failed too" in run.stages[-1][3]
    ok, run, calls = stage([None])
    assert calls == ["1"] and not ok and not run.built and run.stages[-1][1] == "TIMEOUT"
    ok, run, calls = stage([0])
    assert calls == ["1"] and ok and run.built and run.stages[-1][3].endswith("CUDA kernels built for sm_90")
