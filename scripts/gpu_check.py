"""One offline command that builds, tests and measures the GPU kernels: `make gpu-check`.

Contract: run with the Python that should be used (PYTHON=... in make; that interpreter's
torch / triton / nvcc, no venv, no network, nothing installed). Stages, each logged with a
timestamped line: environment (what is there, what is missing), build (the extension in
place, with the CUDA kernels for this device's architecture when a CUDA device and nvcc are
present, on all cores), device tests (pytest over the backend test files; on a GPU the Triton
and CUDA kernels run on the card), benchmark (benchmarks/bench_gpu.py; `--smoke` without a
GPU), then a summary. The whole run keeps to --budget seconds (default 480): each stage gets
a deadline, a stage that overruns is stopped and the run goes on with what it has.

Outputs: benchmark rows are appended to benchmarks/results/gpu_ops.csv (device, driver and
versions in each row); when $OUT (or --out) is set, summary.md (markdown tables), the full
log, the pytest report and the rows of this run are written there, flat, so a remote
machine's results come back. Exit status: 0 when every stage that ran passed (stages skipped
for want of a GPU do not fail the run), 1 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import glob
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The device tests: every backend against the reference and the CPU kernel, op registration
# (opcheck, torch.compile), the contract's streams, error text, statistics.
TEST_FILES = [
    # newest first: what has not yet run on a GPU gets the budget before what has
    "tests/test_project_choice.py",
    "tests/test_multi.py",
    "tests/test_triton_candidates.py",
    "tests/test_op_surface.py",
    "tests/test_device_backends.py",
    "tests/test_start_offset.py",
    "tests/test_ops.py",
    "tests/test_compile.py",
    "tests/test_errors.py",
    "tests/test_rng.py",
    "tests/test_stats.py",
]
# On a GPU machine these CPU-only tests are left to CI: inductor's CPU code generation took
# 64 s of an H100 run's budget (2026-11-26) and measured nothing about the device.
GPU_DESELECT = ["tests/test_compile.py::test_torch_compile_fullgraph[cpu]"]
# Without a GPU the rehearsal adds the ahead-of-time compile with this Python's triton (the GPU
# image's 3.6 spills where 3.9 does not). The CUDA emulator's tests (tests/test_cuda_emulation.py,
# 65 s) are left to CI's `make test`: they compile the CUDA sources with g++ and do not depend on
# the torch / triton at hand.
REHEARSAL_FILES = ["tests/test_triton_compile.py"]
# The rehearsal's order: longest first, so two side by side finish together (seconds each took
# on 2 cores, two files at a time, torch 2.11 + triton 3.6, 2026-11-26 23:43; the rest under 7 s).
REHEARSAL_SECONDS = {
    "tests/test_start_offset.py": 73,
    "tests/test_triton_compile.py": 73,
    "tests/test_device_backends.py": 65,
    "tests/test_multi.py": 45,
    "tests/test_triton_candidates.py": 27,
    "tests/test_compile.py": 26,
    "tests/test_op_surface.py": 21,
}


class Run:
    def __init__(self, budget: float, out: str | None):
        self.t0 = time.monotonic()
        self.budget = budget
        self.out = out
        self.lines: list[str] = []
        self.stages: list[tuple[str, str, float, str]] = []  # name, status, seconds, note
        self.env: dict[str, str] = {}

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def left(self) -> float:
        return self.budget - self.elapsed()

    def log(self, msg: str) -> None:
        stamp = dt.datetime.now().strftime("%H:%M:%S")
        for part in msg.splitlines() or [""]:
            line = f"[{stamp} +{self.elapsed():6.1f}s] {part}"
            print(line, flush=True)
            self.lines.append(line)

    def raw(self, text: str) -> None:
        for part in text.splitlines():
            print(part, flush=True)
            self.lines.append(part)

    def stage(self, name: str, status: str, seconds: float, note: str = "") -> None:
        self.stages.append((name, status, seconds, note))
        self.log(f"== {name}: {status} ({seconds:.1f} s){' - ' + note if note else ''}")

    def sh(
        self, cmd: list[str], timeout: float, env: dict | None = None, cwd: str = ROOT, tag: str = ""
    ) -> tuple[int | None, str]:
        """Run cmd, streaming its output into the log (each line after `tag | ` when tag is given:
        processes run side by side); returns (returncode or None on timeout, output)."""
        if timeout <= 1:
            return None, "no time left"
        env = dict(os.environ if env is None else env)
        env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("PYTHONUNBUFFERED", "1")
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # raw reads of what is there, not readline: pytest -v writes a test's name without the
        # newline before running it, and readline would wait for the test to end (a hung test
        # then outlived the budget: tests/test_gpu_check.py)
        buf: list[str] = []
        pending = b""
        deadline = time.monotonic() + timeout
        fd = proc.stdout.fileno()
        timed_out = False

        def emit(raw: bytes) -> None:
            line = raw.decode("utf-8", "replace")
            buf.append(line + "\n")
            self.raw(f"{tag} | {line}" if tag else line)

        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            ready, _, _ = select.select([fd], [], [], min(remaining, 1.0))
            if not ready:
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + chunk).split(b"\n")
            for raw in lines:
                emit(raw.rstrip(b"\r"))
        if pending:
            emit(pending)
        if timed_out:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.log(f"stopped after {timeout:.0f} s (budget): {' '.join(cmd[:4])} ...")
        proc.wait()
        return (None if timed_out else proc.returncode), "".join(buf)


def _version(cmd: list[str], pattern: str = r".+") -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return ""
    text = (res.stdout + res.stderr).strip()
    m = re.search(pattern, text)
    return m.group(0).strip() if m and res.returncode == 0 else ""


def stage_env(run: Run) -> bool:
    t = time.monotonic()
    env, missing = run.env, []
    py = sys.executable
    env["python"] = f"{py} ({sys.version.split()[0]})"
    try:
        import torch

        env["torch"] = f"{torch.__version__} (CUDA {torch.version.cuda})"
        env["cuda_device"] = "yes" if torch.cuda.is_available() else "no"
        if torch.cuda.is_available():
            p = torch.cuda.get_device_properties(0)
            env["gpu"] = (
                f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.1f} GiB"
            )
            env["arch"] = f"{p.major}.{p.minor}"
    except ImportError:
        missing.append("torch (required)")
    smi = _version(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    env["nvidia-smi"] = smi or "not found"
    for mod in ("triton", "numpy", "setuptools", "pytest", "ninja", "hypothesis", "expecttest", "pytest_timeout"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "present")
        except ImportError:
            env[mod] = "missing"
            missing.append(mod)
    try:
        from torch.utils.cpp_extension import CUDA_HOME
    except ImportError:
        CUDA_HOME = None
    # torch guesses CUDA_HOME from nvcc on PATH (/usr/local when nvcc is linked into /usr/local/bin): prefer a
    # folder that has the toolkit's headers
    for cand in (os.environ.get("CUDA_HOME"), CUDA_HOME, "/usr/local/cuda"):
        if cand and os.path.exists(os.path.join(cand, "include", "cuda_runtime.h")):
            CUDA_HOME = cand
            break
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    env["CUDA_HOME"] = CUDA_HOME or "not found"
    env["nvcc"] = _version([nvcc or "nvcc", "--version"], r"release [0-9.]+, V[0-9.]+") or "not found"
    env["g++"] = _version(["g++", "--version"], r"^.*") or "not found"
    env["cpus"] = str(os.cpu_count())
    for k, v in env.items():
        run.log(f"  {k:12s} {v}")
    fatal = [m for m in missing if "required" in m] + (["g++"] if env["g++"] == "not found" else [])
    note = ("missing: " + ", ".join(missing)) if missing else "all present"
    if env.get("cuda_device") == "yes" and env["nvcc"] == "not found":
        note += "; no nvcc: the CUDA kernels cannot be built, only Triton runs"
    run.stage("environment", "FAIL" if fatal else "ok", time.monotonic() - t, note)
    return not fatal


def _setuptools_ok() -> bool:
    try:
        import setuptools

        return int(setuptools.__version__.split(".")[0]) >= 77
    except (ImportError, ValueError):
        return False


def _build_once(run: Run, env: dict, timeout: float) -> tuple[int | None, str]:
    """setup.py build_ext --inplace with env; (returncode or None, how it was built)."""
    for so in glob.glob(os.path.join(ROOT, "ferret_kernels", "_C*.so")):
        os.remove(so)
    if _setuptools_ok():
        rc, _ = run.sh([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], timeout, env=env)
        return rc, "setup.py build_ext --inplace"
    # setuptools < 77 rejects pyproject's SPDX `license = "..."`; setup.py alone needs no metadata,
    # so build from a copy of the sources without pyproject.toml and bring the library back
    with tempfile.TemporaryDirectory(prefix="ferret_build_") as tmp:
        for d in ("csrc", "ferret_kernels"):
            shutil.copytree(
                os.path.join(ROOT, d), os.path.join(tmp, d), ignore=shutil.ignore_patterns("__pycache__", "*.so")
            )
        shutil.copy(os.path.join(ROOT, "setup.py"), tmp)
        rc, _ = run.sh([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], timeout, env=env, cwd=tmp)
        for so in glob.glob(os.path.join(tmp, "ferret_kernels", "_C*.so")):
            shutil.copy(so, os.path.join(ROOT, "ferret_kernels"))
    return rc, "setup.py build_ext --inplace from a copy without pyproject.toml (setuptools < 77)"


def _probe(run: Run, want_cuda: bool) -> bool:
    """The built extension loads, and has its CUDA kernels where they were built."""
    probe = (
        "import torch, ferret_kernels as fk; e = fk.native_load_error(); "
        "print('native:', e or 'ok', '| cpu:', fk.available_backends('cpu'), "
        "'| cuda:', fk.available_backends('cuda') if torch.cuda.is_available() else '-')"
    )
    rc, text = run.sh([sys.executable, "-c", probe], 120)
    return rc == 0 and "native: ok" in text and (not want_cuda or "'cuda'" in text.split("| cuda:")[-1])


def stage_build(run: Run, timeout: float) -> bool:
    """The extension in place: the CUDA kernels for this device's architecture where there is a GPU
    and nvcc, on all cores. Returns whether it built as wanted; run.built says whether an extension
    is there at all. Where the CUDA build fails, it builds once more without the CUDA kernels, so
    that the Triton tests and timings still run in this GPU session (the stage stays FAIL)."""
    t = time.monotonic()
    env = dict(os.environ)
    gpu = run.env.get("cuda_device") == "yes"
    want_cuda = gpu and run.env.get("nvcc", "not found") != "not found"
    env["FERRET_BUILD_CUDA"] = "1" if want_cuda else "0"
    if want_cuda:
        env["CUDA_HOME"] = run.env["CUDA_HOME"]
        env.setdefault("TORCH_CUDA_ARCH_LIST", run.env["arch"])  # this device only: half the compile time
    if run.env.get("ninja", "missing") != "missing":
        env["FERRET_USE_NINJA"] = "1"
        env.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    rc, how = _build_once(run, env, timeout)
    ok = rc == 0 and _probe(run, want_cuda)
    note = f"{how}; CUDA kernels {'built for sm_' + run.env['arch'].replace('.', '') if want_cuda else 'not built'}"
    run.built = ok
    left = timeout - (time.monotonic() - t)
    if not ok and want_cuda and rc is not None and left > 30:
        run.log("the CUDA build failed: building without the CUDA kernels, so the Triton tests and timings still run")
        rc2, _ = _build_once(run, dict(env, FERRET_BUILD_CUDA="0"), left)
        run.built = rc2 == 0 and _probe(run, False)
        note = f"{how}; the CUDA build FAILED (its error is in the log); " + (
            "built without the CUDA kernels: Triton and CPU only" if run.built else "the build without them failed too"
        )
    run.stage("build", "ok" if ok else ("TIMEOUT" if rc is None else "FAIL"), time.monotonic() - t, note)
    return ok


def _pytest_counts(text: str) -> dict[str, int]:
    counts = {}
    for word in ("passed", "failed", "skipped", "error", "xfailed"):
        counts[word] = len(re.findall(rf"^\S+::\S+ {word.upper()}", text, re.M))
    return counts


def test_workers(gpu: bool) -> int:
    """Test files that run side by side. On a GPU machine (16 cores) their time is mostly Triton's
    JIT compiling on the CPU, one core a process: 4 processes share the one GPU (the largest test
    holds ~10 GB). Without a GPU, one a core up to 2 (the interpreter's tests are one Python
    thread each: on 2 cores the same files took 230 s side by side, 394 s one at a time)."""
    cpus = os.cpu_count() or 1
    return max(1, min(4, cpus // 4)) if gpu else max(1, min(2, cpus))


def stage_tests(run: Run, timeout: float, gpu: bool, files: list[str] | None = None) -> bool:
    """Each test file in its own pytest process (a crash in one does not hide the others), up to
    test_workers() of them at a time, failures printed as they happen
    (scripts/pytest_live_report.py), all within `timeout` seconds; files are started in the
    listed order and none starts in the last 5 s."""
    import concurrent.futures

    t = time.monotonic()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.join(ROOT, "scripts")
    if not gpu:
        env["TRITON_INTERPRET"] = "1"
        # the ahead-of-time compile for the GPU machines' architecture only (CI compiles sm_80 too)
        env.setdefault("FERRET_AOT_ARCHS", "90")
    if not files:
        files = TEST_FILES if gpu else sorted(TEST_FILES + REHEARSAL_FILES, key=lambda f: -REHEARSAL_SECONDS.get(f, 0))
    deadline = time.monotonic() + timeout
    workers = test_workers(gpu)

    def one(f: str) -> tuple[str, bool, int | None, str]:
        """(file, started, returncode or None when stopped / not started, output)"""
        left = deadline - time.monotonic()
        if left < 5:
            return f, False, None, ""
        cmd = [
            sys.executable,
            "-m",
            "pytest",
            "-v",
            "-rfEs",
            "-p",
            "no:cacheprovider",
            "-p",
            "pytest_live_report",
            "--color=no",
            "--durations=5",
            f,
        ]
        if run.env.get("pytest_timeout", "missing") != "missing":
            cmd.append("--timeout=180")
        if gpu:  # CPU-only checks that CI runs anyway and that cost GPU minutes here
            cmd += [f"--deselect={d}" for d in GPU_DESELECT if d.startswith(f + "::")]
        rc, text = run.sh(cmd, left, env=env, tag=os.path.basename(f) if workers > 1 else "")
        return f, True, rc, text

    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, files))
    total: dict[str, int] = {}
    failed: list[str] = []
    all_ok, stopped = True, []
    for f, started, rc, text in results:
        c = _pytest_counts(text)
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
        failed += [ln.split(" ", 1)[0] for ln in text.splitlines() if re.match(r"^\S+::\S+.* (FAILED|ERROR)", ln)]
        if rc is None:
            stopped.append(f + (" (stopped part way)" if started else ""))
        elif rc not in (0, 5):  # 5: nothing collected
            all_ok = False
            if rc < 0 or rc > 5:
                crashed = re.findall(r"^(\S+::\S+) (?:Fatal Python error|.*Segmentation)", text, re.M)
                failed.append(f"{crashed[0] if crashed else f} (process died: status {rc})")
    note = (
        f"{total.get('passed', 0)} passed, {total.get('failed', 0)} failed, {total.get('error', 0)} errors, "
        f"{total.get('skipped', 0)} skipped" + (f"; {workers} files at a time" if workers > 1 else "")
    )
    if failed:
        note += "; failing: " + ", ".join(failed[:12]) + (" ..." if len(failed) > 12 else "")
    if stopped:
        note += "; not run (budget): " + ", ".join(stopped)
    run.failed_tests = failed
    status = "ok" if all_ok and not stopped else ("TIMEOUT" if all_ok else "FAIL")
    run.stage("device tests" if gpu else "tests (CPU + Triton interpreter)", status, time.monotonic() - t, note)
    return all_ok and not stopped


def stage_bench(run: Run, timeout: float, gpu: bool) -> bool:
    t = time.monotonic()
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [sys.executable, "benchmarks/bench_gpu.py"]
    if gpu:
        cmd += ["--budget", f"{max(timeout - 25, 10):.0f}"]  # starts nothing new in the last 25 s (longest item: ~6 s)
    else:
        env["TRITON_INTERPRET"] = "1"
        cmd.append("--smoke")
    rc, text = run.sh(cmd, timeout, env=env)
    run.bench_rows = [ln[5:] for ln in text.splitlines() if ln.startswith("row: ")]
    run.bench_text = text
    note = f"{len(run.bench_rows)} rows" + ("" if gpu else " (--smoke: tiny sizes, times mean nothing)")
    run.stage(
        "benchmark" if gpu else "benchmark smoke",
        "ok" if rc == 0 else ("TIMEOUT" if rc is None else "FAIL"),
        time.monotonic() - t,
        note,
    )
    return rc == 0


def stage_variants(run: Run, timeout: float, gpu: bool) -> bool:
    """benchmarks/cuda_project_variants.cu: the CUDA project kernel's variants side by side
    (occupancy and chunks per CTA), torch-free, built with nvcc; then, in the time left,
    benchmarks/tune_triton_project.py (Triton's pipelined candidate beside the shipped kernel).
    Without a GPU only the CUDA variants are built."""
    t = time.monotonic()
    home = run.env.get("CUDA_HOME", "not found")
    nvcc = os.path.join(home, "bin", "nvcc") if home != "not found" else shutil.which("nvcc")
    if nvcc is None:
        run.stage("project variants", "skipped", 0, "no nvcc")
        return True
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)
    exe = os.path.join(ROOT, "build", "cuda_project_variants")
    arch = run.env.get("arch", "9.0").replace(".", "") if gpu else "90"
    cmd = [nvcc, "-O3", f"-arch=sm_{arch}", "--expt-relaxed-constexpr", "-Icsrc"]
    rc, text = run.sh(cmd + ["benchmarks/cuda_project_variants.cu", "-o", exe], min(timeout, 120))
    if rc != 0 or not gpu:
        status = "ok" if rc == 0 else ("TIMEOUT" if rc is None else "FAIL")
        run.stage("project variants", status, time.monotonic() - t, "built" + ("" if gpu else " (no GPU: not run)"))
        return rc == 0
    dest = os.path.join(run.out or os.path.join(ROOT, "benchmarks", "results"), "cuda_project_variants_new.csv")
    rc, text = run.sh([exe, "28", dest], max(timeout - (time.monotonic() - t), 5))
    run.variants_text = text
    rows = [ln for ln in text.splitlines() if re.match(r"^(mb|pf|fused|pdl|pass1|chain)\S*\s+\d", ln)]
    left = timeout - (time.monotonic() - t)
    if left > 30:  # Triton's project configurations and its pipelined candidate, the shipped chunk only
        tdest = os.path.join(run.out or os.path.join(ROOT, "benchmarks", "results"), "triton_project_tune_new.csv")
        cmd = [sys.executable, "benchmarks/tune_triton_project.py", "--chunks", "8192", "--warps", "4"]
        trc, ttext = run.sh(cmd + ["--csv", tdest], left - 5)
        run.variants_text += "\n" + ttext
        rows += [ln for ln in ttext.splitlines() if re.match(r"^(rademacher|uniform)\s", ln)]
        rc = rc if trc == 0 else (trc if rc == 0 else rc)
    note = f"{len(rows)} rows to {os.path.relpath(dest, ROOT) if not run.out else dest}" + {
        2: " (a variant's bits differ)",
        3: " (a Triton row failed to compile or launch)",
    }.get(rc, "")
    run.stage(
        "project variants", "ok" if rc == 0 else ("TIMEOUT" if rc is None else "FAIL"), time.monotonic() - t, note
    )
    left = timeout - (time.monotonic() - t)
    if left > 30:
        stage_profile(run, exe, left - 5)
    return rc == 0


# What the profile stage keeps of ncu's sections, per kernel (Nsight Compute's metric names).
# (LaunchStats: the registers per thread, which none of the others reports; InstructionStats and
# ComputeWorkloadAnalysis: the warp instructions a kernel executed and how busy the issue slots were,
# to read against benchmarks/sass_path.py's count of one thread's path: the H200 run found the K = 4
# project issue bound, 2026-11-27)
NCU_SECTIONS = (
    "SpeedOfLight",
    "MemoryWorkloadAnalysis",
    "Occupancy",
    "WarpStateStats",
    "LaunchStats",
    "InstructionStats",
    "ComputeWorkloadAnalysis",
)
NCU_METRICS = (
    "Duration",
    "DRAM Throughput",
    "Memory Throughput",
    "L2 Hit Rate",
    "Achieved Occupancy",
    "Registers Per Thread",
    "Warp Cycles Per Issued Instruction",
    "Executed Instructions",
    "Issue Slots Busy",
)


def ncu_table(text: str) -> list[str]:
    """A markdown table of ncu's `--csv --page details` output: a row per profiled kernel (its name
    without template arguments or parameters), a column per NCU_METRICS entry found (value and unit)."""
    lines = [ln for ln in text.splitlines() if ln.startswith('"')]
    if not lines:
        return []
    kernels: dict = {}
    for row in csv.DictReader(lines):
        name = row.get("Kernel Name", "")
        name = re.sub(r"^void\s+", "", name.split("(")[0]).split("<")[0].split("::")[-1]
        key = (int(row.get("ID", "0") or 0), name)
        if row.get("Metric Name") in NCU_METRICS:
            unit = row.get("Metric Unit", "")
            kernels.setdefault(key, {})[row["Metric Name"]] = f"{row.get('Metric Value', '')} {unit}".strip()
    cols = [m for m in NCU_METRICS if any(m in v for v in kernels.values())]
    out = ["| id | kernel | " + " | ".join(cols) + " |", "|" + " --- |" * (len(cols) + 2)]
    for (i, name), v in sorted(kernels.items()):
        out.append(f"| {i} | {name} | " + " | ".join(v.get(m, "") for m in cols) + " |")
    return out


def stage_profile(run: Run, exe: str, timeout: float) -> bool:
    """Hardware counters (Nsight Compute, where it can read them) of the CUDA project kernels at
    K = 4 (`cuda_project_variants profile`: the read floors, the shipped two passes, the prefetch and
    fused candidates, once each): DRAM throughput, L2 hit rate, occupancy, issue stalls. Where they
    differ from the timings above, these say why. Raw CSV to $OUT/ncu_project.csv; the clocks are
    left alone (--clock-control none)."""
    t = time.monotonic()
    home = run.env.get("CUDA_HOME", "")
    cands = [shutil.which("ncu"), os.path.join(home, "bin", "ncu") if home else None]
    cands += sorted(glob.glob("/opt/nvidia/nsight-compute/*/ncu"))
    ncu = next((c for c in cands if c and os.path.exists(c)), None)
    if ncu is None:
        run.stage("profile (ncu)", "skipped", 0, "ncu not found")
        return True
    cmd = [ncu, "--clock-control", "none", "--csv", "--page", "details"]
    for sec in NCU_SECTIONS:
        cmd += ["--section", sec]
    rc, text = run.sh(cmd + [exe, "28", "-", "profile"], timeout)
    table = ncu_table(text)
    if run.out:
        os.makedirs(run.out, exist_ok=True)
        with open(os.path.join(run.out, "ncu_project.csv"), "w") as f:
            f.write("\n".join(ln for ln in text.splitlines() if ln.startswith('"')) + "\n")
    run.profile_table = table
    status = "ok" if rc == 0 and table else ("TIMEOUT" if rc is None else "FAIL")
    run.stage("profile (ncu)", status, time.monotonic() - t, f"{max(len(table) - 2, 0)} kernels profiled")
    return rc == 0


# Issue 11's GPU bars, read off this run's rows by bars_table (the issue names them; this keeps
# the figures a note quotes from being copied by hand).
BAR_K4_FRAC = {"cuda": 0.85, "triton": 0.80}  # K = 4 project, of the copy bandwidth of the same run
BAR_K64_PER_SEED, BAR_K64_DENSE = 100.0, 20.0  # K = 64 project and reconstruct_, x faster
BAR_7B_MS = {"rademacher": 200.0, "gaussian": 1000.0}  # LLaMA2-7B reconstruct-and-apply


def _bench_row_dicts(lines: list[str]) -> list[dict]:
    """bench_gpu.py's `row: op=project, backend=cuda, ...` lines (without `row: `) as dicts."""
    rows = []
    for ln in lines:
        d = {}
        for part in ln.split(", "):
            k, _, v = part.partition("=")
            d[k.strip()] = v.strip()
        rows.append(d)
    return rows


def _num(v) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def bars_table(bench_rows: list[str], bench_text: str, variants_text: str) -> list[str]:
    """A markdown table of issue 11's bars against this run's measurements: the K = 4 project's
    fraction of copy per backend (bench_gpu.py, and the best bit-identical candidate of the
    variants harness and of tune_triton_project.py beside it), the K = 64 speed-ups over per-seed
    regeneration and naive dense, the LLaMA2-7B apply, and bit-identical bases. A bar whose row
    is missing (the budget ran out) says so instead of passing."""
    rows = _bench_row_dicts(bench_rows)
    out = ["| bar | backend | measured | target | met |", "| --- | --- | --- | --- | --- |"]

    def find(op, be, dist, K):
        return next(
            (r for r in rows if (r.get("op"), r.get("backend"), r.get("dist"), r.get("K")) == (op, be, dist, str(K))),
            None,
        )

    def line(bar, be, measured, target, ok):
        out.append(f"| {bar} | {be} | {measured} | {target} | {'no row' if ok is None else 'yes' if ok else 'NO'} |")

    for be, target in BAR_K4_FRAC.items():
        r = find("project", be, "rademacher", 4)
        f = _num(r.get("frac_of_copy")) if r else None
        measured = f"{f:.3f} ({_num(r.get('time_ms')):.4g} ms)" if f is not None else "-"
        line(
            "K = 4 project, rademacher bf16 n = 2^28, of copy",
            be,
            measured,
            f">= {target}",
            None if f is None else f >= target,
        )
    # the candidates, each checked bit for bit against the shipped kernel in its own run (name, ms, of copy)
    candidates = (
        ("cuda", "CUDA variant (harness)", r"^(\S+)\s+4\s+([\d.]+)\s+\d+\s+([\d.]+)\s+[\d.]+\s+\d+\s+\d+\s+yes\s*$"),
        (
            "triton",
            "Triton variant (tuning script)",
            r"^rademacher K=\s*4 .*?\s(?!\S*_ns\s)(\S+)\s+([\d.]+) ms\s+\d+ GB/s\s+([\d.]+) of copy\s+"
            r"identical=True(?! \(y, active: False\))",
        ),
        # the quad kernel (K <= 4): other bits by design, "close" when within float32 rounding
        (
            "cuda",
            "CUDA quad candidate (other bits, harness)",
            r"^(quad\d)\s+4\s+([\d.]+)\s+\d+\s+([\d.]+)\s+[\d.]+\s+\d+\s+\d+\s+close\s*$",
        ),
        # the negsum rows: other bits than the shipped kernel's (within float32 rounding); "identical"
        # there says the inline PTX gave its Triton form's bits
        (
            "triton",
            "Triton negsum candidate (other bits; PTX = its Triton form)",
            r"^rademacher K=\s*4 .*?\s(\S+_ns)\s+([\d.]+) ms\s+\d+ GB/s\s+([\d.]+) of copy\s+"
            r"identical=True(?! \(y, active: False\))",
        ),
    )
    for be, what, pat in candidates:
        found = [(m.group(1), float(m.group(2)), float(m.group(3))) for m in re.finditer(pat, variants_text, re.M)]
        if found:
            name, ms, frac = max(found, key=lambda c: c[2])
            target = BAR_K4_FRAC[be]
            line(
                f"K = 4, best {'' if 'other bits' in what else 'bit-identical '}{what}",
                be,
                f"{frac:.3f} ({ms:.4f} ms, {name})",
                f">= {target}",
                frac >= target,
            )
    # the candidates through fk.project itself (bench_gpu.py's "<backend>:<choice>" rows: the
    # environment variable that would ship them; none far off the shipped output, and CUDA's only with
    # the shipped bits, except the quad kernel's, whose order its device test pins)
    for be, target in BAR_K4_FRAC.items():
        found = [
            (r["backend"].split(":", 1)[1], _num(r.get("time_ms")), _num(r.get("frac_of_copy")), r.get("triton_config"))
            for r in rows
            if r.get("backend", "").startswith(be + ":")
            and (r.get("op"), r.get("dist"), r.get("K")) == ("project", "rademacher", "4")
            and r.get("triton_config") != "far_off"
            and (be != "cuda" or r.get("triton_config") == "same_bits" or r["backend"].startswith("cuda:quad"))
        ]
        found = [c for c in found if c[1] is not None and c[2] is not None]
        if found:
            choice, ms, frac, bits = max(found, key=lambda c: c[2])
            var = "FERRET_CUDA_PROJECT" if be == "cuda" else "FERRET_TRITON_PROJECT"
            line(
                "K = 4 project through the op, best candidate choice",
                be,
                f"{frac:.3f} ({ms:.4g} ms, {var}={choice}, {bits.replace('_', ' ')})",
                f">= {target}",
                frac >= target,
            )
    for be in BAR_K4_FRAC:
        for op in ("project", "reconstruct_"):
            r = find(op, be, "rademacher", 64)
            for col, target, what in (
                ("x_vs_per_seed", BAR_K64_PER_SEED, "per-seed"),
                ("x_vs_dense", BAR_K64_DENSE, "dense"),
            ):
                v = _num(r.get(col)) if r else None
                line(
                    f"K = 64 {op} vs {what}",
                    be,
                    f"{v:.4g}x" if v is not None else "-",
                    f">= {target:g}x",
                    None if v is None else v >= target,
                )
    for dist, limit in BAR_7B_MS.items():
        for be in BAR_K4_FRAC:
            got = [
                (op, _num(r.get("time_ms")))
                for op in ("apply_llama2_7b", "apply_llama2_7b_multi")
                if (r := find(op, be, dist, 64))
            ]
            got = [(op, t) for op, t in got if t is not None]
            measured = (
                ", ".join(f"{t:.4g} ms ({'list' if op.endswith('multi') else 'per tensor'})" for op, t in got) or "-"
            )
            line(
                f"LLaMA2-7B apply, {dist}, K = 64",
                be,
                measured,
                f"< {limit:g} ms",
                min(t for _, t in got) < limit if got else None,
            )
    m = re.search(r"bit-identical to the CPU kernel: (\{.*\})", bench_text)
    for be in BAR_K4_FRAC:
        v = re.search(rf"'{be}': (True|False)", m.group(1)) if m else None
        line(
            "rademacher and uniform bases bit-identical GPU vs CPU",
            be,
            v.group(1) if v else "-",
            "True",
            None if v is None else v.group(1) == "True",
        )
    return out


def write_summary(run: Run, csv_before: int) -> None:
    if not run.out:
        return
    os.makedirs(run.out, exist_ok=True)
    md = [
        f"# gpu-check {dt.datetime.now(dt.timezone.utc).isoformat(timespec='seconds')}",
        "",
        "| stage | status | seconds | note |",
        "| --- | --- | --- | --- |",
    ]
    md += [f"| {n} | {s} | {sec:.1f} | {note} |" for n, s, sec, note in run.stages]
    md += ["", "| environment | |", "| --- | --- |"] + [f"| {k} | {v} |" for k, v in run.env.items()]
    text = getattr(run, "bench_text", "")
    table = []
    for ln in text.splitlines():
        if re.match(r"^\s*op\s+backend\s+dist", ln):
            table = [ln]
        elif table and ln.strip() and not ln.startswith(("appended", "skipped")):
            table.append(ln)
        elif table and not ln.strip() and len(table) > 1:
            break
    if table:
        cells = [ln.split() for ln in table]
        md += ["", "## benchmark", "", "| " + " | ".join(cells[0]) + " |", "|" + " --- |" * len(cells[0])]
        md += ["| " + " | ".join(c) + " |" for c in cells[1:]]
    md += ["", "## benchmark notes", ""] + [
        ln for ln in text.splitlines() if ln.startswith(("#", "skipped", "baselines"))
    ]
    variants = getattr(run, "variants_text", "")
    if getattr(run, "bench_rows", None) and run.env.get("cuda_device") == "yes":
        md += ["", "## issue 11's bars, from this run", ""] + bars_table(run.bench_rows, text, variants)
    if variants:
        md += ["", "## CUDA project variants (benchmarks/cuda_project_variants.cu)", "", "```"]
        md += [ln for ln in variants.splitlines() if ln.strip()] + ["```"]
    if getattr(run, "profile_table", None):
        md += ["", "## ncu: CUDA project kernels at K = 4 (ncu_project.csv)", ""] + run.profile_table
    with open(os.path.join(run.out, "summary.md"), "w") as f:
        f.write("\n".join(md) + "\n")
    with open(os.path.join(run.out, "gpu_check.log"), "w") as f:
        f.write("\n".join(run.lines) + "\n")
    src = os.path.join(ROOT, "benchmarks", "results", "gpu_ops.csv")
    if os.path.exists(src):
        with open(src, newline="") as f:
            rows = list(csv.reader(f))
        if len(rows) > 1 + csv_before:
            with open(os.path.join(run.out, "gpu_ops_new.csv"), "w", newline="") as f:
                csv.writer(f).writerows([rows[0]] + rows[1 + csv_before :])


def _csv_rows() -> int:
    path = os.path.join(ROOT, "benchmarks", "results", "gpu_ops.csv")
    if not os.path.exists(path):
        return 0
    with open(path, newline="") as f:
        return max(sum(1 for _ in csv.reader(f)) - 1, 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--budget",
        type=float,
        default=float(os.environ["GPU_CHECK_BUDGET"]) if os.environ.get("GPU_CHECK_BUDGET") else None,
        help="seconds for the whole run (default 480 on a GPU, 900 for the rehearsal without one, or $GPU_CHECK_BUDGET)",
    )
    ap.add_argument("--out", default=os.environ.get("OUT") or None, help="folder for summary.md, the log and the rows")
    ap.add_argument("--skip-bench", action="store_true")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-variants", action="store_true", help="do not build / run cuda_project_variants.cu")
    ap.add_argument(
        "--tests",
        nargs="+",
        help="test files or node ids to run instead of the default device tests (one pytest process each)",
    )
    args = ap.parse_args(argv)
    run = Run(args.budget or 480, args.out)
    csv_before = _csv_rows()
    run.log(f"gpu-check in {ROOT}, budget {run.budget:.0f} s, summary to {args.out or '(no $OUT: log only)'}")
    ok = stage_env(run)
    gpu = run.env.get("cuda_device") == "yes"
    if args.budget is None and not gpu:
        # the rehearsal runs the test files on 2 CPU cores (Triton's interpreter, the ahead-of-time
        # compile): room to spare over the ~300 s it takes, since a slow machine should finish
        run.budget = 900
    if not gpu:
        run.log(
            "no CUDA device: rehearsal (build, CPU and Triton-interpreter tests, the Triton kernels compiled "
            "for sm_90, bench_gpu --smoke, the variants built); skipped: the CUDA kernels on a GPU, GPU timings"
        )
        run.stage(
            "GPU stages",
            "skipped",
            0,
            "no CUDA device: the CUDA build, the device tests on a GPU and the GPU "
            "timings did not run (rehearsal only)",
        )
    if ok:
        ok = stage_build(run, min(run.left() - 30, 300))
    built = getattr(run, "built", False)  # an extension is there (perhaps without its CUDA kernels)
    if not gpu:
        # Rehearsal: the tests (two files at a time), the smoke benchmark (Python, one core) and the
        # variants' nvcc build (one core) all at once. Nothing here is timed, and the 2 cores share the
        # same work either way, but run after the tests the smoke waited for their last file while a
        # core idled: from a fresh clone (torch 2.11 + triton 3.6) 302 s with the smoke after the
        # tests (tests 209 s, then smoke 46 s), 2026-11-28.
        import concurrent.futures

        with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
            jobs = []
            if built and not args.skip_tests:
                jobs.append(pool.submit(stage_tests, run, run.left() - 10, gpu, args.tests))
            if built and not args.skip_bench:
                jobs.append(pool.submit(stage_bench, run, run.left() - 10, gpu))
            if not args.skip_variants and run.left() > 20:
                jobs.append(pool.submit(stage_variants, run, run.left() - 5, gpu))
            for job in jobs:
                ok = job.result() and ok
    else:
        # The benchmark's share is reserved before the tests start (timings are what a GPU run is
        # for; the whole bench took 57 s on an H100, 2026-11-26; the device tests ~250 s with 16
        # cores), and the variants': nvcc build ~15 s, CUDA run ~20 s, Triton tuning ~30 s, the ncu
        # profile ~30 s where ncu reads counters.
        bench_share = 0 if args.skip_bench else min(100, 0.3 * run.left())
        variants_share = 0 if args.skip_variants else 110
        if built and not args.skip_tests:
            ok = stage_tests(run, run.left() - bench_share - variants_share - 10, gpu, args.tests) and ok
        if built and not args.skip_bench:  # failing tests do not stop the measurements
            ok = stage_bench(run, run.left() - variants_share - 10, gpu) and ok
        if not args.skip_variants and run.left() > 20:
            ok = stage_variants(run, run.left() - 5, gpu) and ok
    total = run.elapsed()
    run.log(f"gpu-check {'PASSED' if ok else 'FAILED'} in {total:.0f} s of {run.budget:.0f}")
    for n, s, sec, note in run.stages:
        run.raw(f"  {n:34s} {s:8s} {sec:6.1f}s  {note}")
    write_summary(run, csv_before)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
