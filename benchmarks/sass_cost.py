"""Static cost of the GPU kernels' inner loops, from their SASS, without a GPU.

    python benchmarks/sass_cost.py            # sm_90, bf16, the three dists; appends to results/sass_cost.csv
    python benchmarks/sass_cost.py --arch 80 --no-csv

Compiles the CUDA kernels (nvcc, csrc/cuda/compile_check.cu) and the Triton kernels (ahead of
time, with the divisibility hints a 16-byte-aligned launch gets) for one architecture,
disassembles them with the cuobjdump that ships with Triton, finds the per-basis loop (the
innermost loop around a Philox call) and reports its instructions per element and basis. An
issue-bound model turns that into a time for n = 2^28 on an H100 SXM (132 SMs x 4 schedulers
x 32 lanes at 1.98 GHz) beside the time to stream the op's bytes at the spec 3.35 TB/s.
Both are models, not measurements: a GPU run of bench_gpu.py measures; this shows where a
kernel stands when there is no GPU to run it on, and how a change moved it.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run without TRITON_INTERPRET=1 (the interpreter replaces Triton's compiler)")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ferret_kernels import triton_kernels as tk  # noqa: E402

import common  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUOBJDUMP = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
DISTS = ("rademacher", "uniform", "gaussian")
# csrc/cuda/kernels.cuh: elements per thread, and bases per trip of the per-basis loop
CUDA_ELEMS = {"rademacher": 32, "uniform": 16, "gaussian": 16}
CUDA_BASES_PER_TRIP = {"rademacher": 4, "uniform": 1, "gaussian": 1}
LANE_ISSUE_PER_S = 132 * 4 * 32 * 1.98e9  # H100 SXM: one warp instruction per scheduler per clock
HBM_BYTES_PER_S = 3.35e12


def sass_functions(binary: bytes) -> dict[str, list[str]]:
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.bin")
        with open(path, "wb") as f:
            f.write(binary)
        text = subprocess.run([CUOBJDUMP, "-sass", path], capture_output=True, text=True, check=True).stdout
    out = {}
    for part in re.split(r"\n\s+Function : ", text)[1:]:
        name = part.split("\n", 1)[0].strip()
        out[name] = [(int(m.group(1), 16), m.group(2)) for m in re.finditer(r"/\*([0-9a-f]{4})\*/\s+(.*?)\s*;", part)]
    return out


def opcodes(texts) -> collections.Counter:
    """The opcodes (no predicate, no modifiers) of SASS instruction texts, counted."""
    return collections.Counter(re.sub(r"^@!?U?P[T\d]+\s+", "", t).split()[0].split(".")[0] for t in texts)


def basis_loop(ins) -> tuple[int, collections.Counter]:
    """The innermost loop (backward branch) that contains a Philox multiply."""
    where = {a: i for i, (a, _) in enumerate(ins)}
    best = None
    for i, (a, txt) in enumerate(ins):
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", txt)
        if not m or int(m.group(1), 16) >= a or int(m.group(1), 16) not in where:
            continue
        body = [t for _, t in ins[where[int(m.group(1), 16)] : i + 1]]
        if any(re.search(r"IMAD\.(WIDE|HI)\.U32", t) for t in body) and (best is None or len(body) < len(best)):
            best = body
    if best is None:
        raise RuntimeError("no loop around a Philox call found")
    return len(best), opcodes(best)


def cuda_functions(arch: int) -> dict[str, list[str]] | None:
    """sass_functions of every kernel of kernels.cuh (csrc/cuda/compile_check.cu compiled with nvcc
    for sm_<arch>); None without nvcc."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    with tempfile.TemporaryDirectory() as d:
        obj = os.path.join(d, "k.o")
        subprocess.run(
            [
                nvcc,
                "-std=c++17",
                "-O3",
                "-I",
                os.path.join(ROOT, "csrc"),
                "-gencode",
                f"arch=compute_{arch},code=sm_{arch}",
                "-c",
                os.path.join(ROOT, "csrc", "cuda", "compile_check.cu"),
                "-o",
                obj,
            ],
            check=True,
            capture_output=True,
        )
        with open(obj, "rb") as f:
            return sass_functions(f.read())


def cuda_rows(arch: int):
    funcs = cuda_functions(arch)
    if funcs is None:
        print("# nvcc not found: CUDA kernels skipped")
        return []
    rows = []
    for op, mangled in (("project", "project_kernel"), ("reconstruct_", "reconstruct_kernel")):
        for di, dist in enumerate(DISTS):
            name = next(n for n in funcs if mangled in n and f"__nv_bfloat16Li{di}E" in n)
            n, ops = basis_loop(funcs[name])
            per = n / (CUDA_ELEMS[dist] * CUDA_BASES_PER_TRIP[dist])
            rows.append(
                dict(
                    backend="cuda",
                    op=op,
                    dist=dist,
                    config="256 threads",
                    loop_instr=n,
                    instr_per_elem_basis=per,
                    top=" ".join(f"{k}:{v}" for k, v in ops.most_common(5)),
                )
            )
    return rows


def triton_rows(arch: int):
    rows = []
    for di, dist in enumerate(DISTS):
        sigs = tk._aot_signatures("bf16")
        psig, rsig = sigs["project"], sigs["reconstruct"]
        chunk = tk._project_chunk(1 << 20, dist)
        variants = [
            (
                "project",
                tk._project_kernel,
                psig,
                {"HAS_Y": False, "HAS_ACT": False, "DIST": di, "CHUNK": chunk, "PAIR": True},
                4,
            ),
            # the list kernel reads through addresses from a table: no alignment known, other layouts
            (
                "project_multi",
                tk._project_multi_kernel,
                sigs["project_multi"],
                {"XT": tk.tl.bfloat16, "HAS_Y": False, "HAS_ACT": False, "DIST": di, "CHUNK": chunk, "PAIR": True},
                4,
            ),
        ]
        variants += [
            (
                "reconstruct_",
                tk._reconstruct_kernel.fn,
                rsig,
                {"ACCUM": True, "HAS_ACT": False, "DIST": di, **c.kwargs},
                c.num_warps,
            )
            # the autotuner's candidates for this dist at a block of 2^20 (_recon_prune)
            for c in tk._recon_prune(tk._reconstruct_kernel.configs, {"block_size": 1 << 20}, DIST=di)
        ]
        variants.append(
            (
                "reconstruct_multi_",
                tk._reconstruct_multi_kernel,
                sigs["reconstruct_multi"],
                {"XT": tk.tl.bfloat16, "HAS_ACT": False, "DIST": di, "CHUNK": tk._RECON_MULTI_CHUNK},
                4,
            )
        )
        if dist == "rademacher":  # the pipelined kernel fk.project runs at small K (K = 4: the bases
            # unrolled in its chunk loop), with the sign-flip dots and with the negsum candidate's
            for ns in (0, 1):
                lconst = {"K": 4, "HAS_Y": False, "HAS_ACT": False, "DIST": di, "CHUNK": chunk}
                lconst.update(CHUNKS=tk._LOOP_CHUNKS, STAGES=tk._LOOP_STAGES, PREFETCH=False, NEGSUM=ns)
                variants.append(
                    (
                        "project_loop" + ("_negsum" if ns else ""),
                        tk._project_loop_kernel,
                        sigs["project_loop"],
                        lconst,
                        4,
                    )
                )
        for op, fn, sig, const, warps in variants:
            # what a launch with 16-byte-aligned tensors and sizes divisible by 16 is specialized on
            attrs = {
                (i,): [["tt.divisibility", 16]]
                for i, a in enumerate(sig)
                if (sig[a].startswith("*") or a in ("numel", "block_size", "block_offset"))
                and not op.endswith("_multi")
            }
            src = ASTSource(
                fn=fn, signature=dict(sig, **{c: "constexpr" for c in const}), constexprs=const, attrs=attrs
            )
            opts = {"num_warps": warps, "enable_fp_fusion": tk._FP_FUSION}
            k = triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts)
            (ins,) = sass_functions(k.asm["cubin"]).values()
            n, ops = basis_loop(ins)
            elems = const["CHUNK"] / (32 * warps)
            if op.startswith("project_loop"):  # the chunk loop: every basis of a chunk
                elems *= const["K"]
            elif dist == "rademacher":  # two bases per trip
                elems *= tk._PROJECT_BASES_PER_TRIP if op.startswith("project") else tk._RECONSTRUCT_BASES_PER_TRIP
            rows.append(
                dict(
                    backend="triton",
                    op=op,
                    dist=dist,
                    config=f"CHUNK {const['CHUNK']}, {warps} warps" + (f", K = {const['K']}" if "K" in const else ""),
                    loop_instr=n,
                    instr_per_elem_basis=n / elems,
                    top=" ".join(f"{k}:{v}" for k, v in ops.most_common(5)),
                )
            )
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", type=int, default=90)
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    rows = cuda_rows(args.arch) + triton_rows(args.arch)
    n = 1 << 28
    for r in rows:
        bytes_moved = (2 if r["op"].startswith("project") else 4) * n  # bf16: read x; read + write the parameters
        r["model_ms_K4"] = (
            max(n * 4 * r["instr_per_elem_basis"] / LANE_ISSUE_PER_S, bytes_moved / HBM_BYTES_PER_S) * 1e3
        )
        r["model_ms_K64"] = (
            max(n * 64 * r["instr_per_elem_basis"] / LANE_ISSUE_PER_S, bytes_moved / HBM_BYTES_PER_S) * 1e3
        )
        r["stream_ms"] = bytes_moved / HBM_BYTES_PER_S * 1e3
    cols = [
        "backend",
        "op",
        "dist",
        "config",
        "loop_instr",
        "instr_per_elem_basis",
        "stream_ms",
        "model_ms_K4",
        "model_ms_K64",
        "top",
    ]
    print(f"# sm_{args.arch}, bf16, n = 2^28 for the model columns (max of issue time and streaming time)")
    common.print_table(rows, cols)
    if not args.no_csv:
        info = common.machine_info("cpu")
        extra = dict(
            date=info["date"],
            arch=f"sm_{args.arch}",
            triton=info["triton"],
            torch=info["torch"],
            nvcc=subprocess.run(["nvcc", "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1]
            if shutil.which("nvcc")
            else "",
        )
        path = common.append_csv("sass_cost.csv", [dict(extra, **{c: r[c] for c in cols}) for r in rows])
        print(f"appended {len(rows)} rows to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
