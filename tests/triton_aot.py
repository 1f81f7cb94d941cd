"""Compile every Triton kernel of ferret_kernels ahead of time for NVIDIA GPUs, without one.

    python tests/triton_aot.py 80 90      # prints one JSON line per compiled kernel variant
    python tests/triton_aot.py gfx942     # the shipped kernels for an AMD GPU (no ptxas stats)

Each kernel goes through Triton's whole pipeline (TTIR, TTGIR, LLVM IR, PTX) and the ptxas
that ships with Triton (cubin); ptxas -v then reports registers and spills. The interpreter
that runs the kernels in CI executes Python, not this pipeline, so only this shows that the
kernels compile for a GPU. Run by tests/test_triton_compile.py in a process without
TRITON_INTERPRET.
"""

import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET", "0") == "1":
    sys.exit("run without TRITON_INTERPRET=1: the interpreter replaces the compiler")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.backends.nvidia.compiler import get_ptxas  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ferret_kernels import triton_kernels as tk  # noqa: E402

DTYPES = ("fp32", "bf16", "fp16")


# Where torch's allocations are (16-byte aligned pointers) and sizes are multiples of 16, Triton
# specializes the arguments (tt.divisibility) and compiles another variant, with vector loads and
# other register counts: that is the one GPU runs mostly take, so both are compiled here.
ALIGNABLE = ("x_ptr", "y_ptr", "part_ptr", "act_ptr", "c_ptr", "out_ptr", "numel", "block_size")


def _attrs(fn, sig, aligned):
    if not aligned:
        return {}
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n in sig if n in ALIGNABLE}


def variants():
    """(name, jit function, signature, constexprs, num_warps, attrs): every dist and dtype, each
    aligned and not; every autotuning config of reconstruct for every dist."""
    for dist in (0, 1, 2):
        for dt in DTYPES:
            # the chunk of a large block, and the smallest (blocks of <= 128 elements)
            big = tk._project_chunk(1 << 20, ("rademacher", "uniform", "gaussian")[dist])
            for has_y, has_act, ints, chunk, aligned in (
                (True, True, "i32", 128, False),
                (False, False, "i64", big, False),
                (True, False, "i64", big, True),
                (False, True, "i32", big, True),
            ):
                sig = tk._aot_signatures(dt, ints)["project"]
                const = {"HAS_Y": has_y, "HAS_ACT": has_act, "DIST": dist, "CHUNK": chunk, "PAIR": True}
                yield (
                    f"project dist={dist} {dt} y={has_y} active={has_act} ints={ints} CHUNK={chunk} aligned={aligned}",
                    tk._project_kernel,
                    sig,
                    const,
                    4,
                    _attrs(tk._project_kernel, sig, aligned),
                )
            for accum in (False, True):
                configs = (
                    tk._reconstruct_kernel.configs if (dt == "bf16" and accum) else tk._reconstruct_kernel.configs[:1]
                )
                for aligned in (False, True):
                    # the autotuner's candidates for this dist, sizes divisible by 16 (aligned) or not
                    for cfg in tk._recon_prune(configs, {"block_size": 1024 if aligned else 1001}, DIST=dist):
                        sig = tk._aot_signatures(dt)["reconstruct"]
                        const = {"ACCUM": accum, "HAS_ACT": accum, "DIST": dist, **cfg.kwargs}
                        fn = tk._reconstruct_kernel.fn
                        yield (
                            f"reconstruct dist={dist} {dt} accum={accum} CHUNK={cfg.kwargs['CHUNK']} "
                            f"warps={cfg.num_warps} aligned={aligned}",
                            fn,
                            sig,
                            const,
                            cfg.num_warps,
                            _attrs(fn, sig, aligned),
                        )
    # the pipelined small-K kernel the rademacher project runs at K <= _LOOP_MAX_BASES for 16-bit x
    # without y (the largest K with and without active counts, the smallest for fp16), an odd K
    # with the y + active variant that benchmarks/tune_triton_project.py checks bit for bit, and
    # uniform at the configurations that script times; the L2 prefetch candidate (PREFETCH) as that
    # script times it, and with y; the negsum candidate (NEGSUM 1: inline PTX; 2: its Triton form)
    # as that script times it, with y, at the largest K and for fp32 x
    loop = tk._LOOP_CHUNKS, tk._LOOP_STAGES
    for dist, dt, K, has_y, has_act, chunks, stages, pf, ns in (
        [(0, "bf16", tk._LOOP_MAX_BASES, False, act, *loop, False, 0) for act in (False, True)]
        + [(0, "fp16", 1, False, False, *loop, False, 0), (0, "bf16", 5, True, True, *loop, False, 0)]
        + [(1, "bf16", 4, False, False, 4, 2, False, 0), (1, "bf16", 4, False, False, 4, 3, False, 0)]
        + [(0, "bf16", 4, False, False, *loop, True, 0), (0, "bf16", 5, True, True, *loop, True, 0)]
        + [(0, "bf16", 4, False, False, *loop, False, ns) for ns in (1, 2)]
        + [(0, "bf16", 5, True, True, *loop, False, 1), (0, "bf16", tk._LOOP_MAX_BASES, False, True, *loop, False, 1)]
        + [(0, "fp32", 4, False, False, *loop, False, 1)]
    ):  # aligned: the wrapper copies unaligned inputs (_aligned)
        sig = tk._aot_signatures(dt)["project_loop"]
        chunk = tk._project_chunk(1 << 20, ("rademacher", "uniform")[dist])
        const = {"K": K, "HAS_Y": has_y, "HAS_ACT": has_act, "DIST": dist, "CHUNK": chunk, "CHUNKS": chunks}
        const["STAGES"] = stages
        const["PREFETCH"] = pf
        const["NEGSUM"] = ns
        yield (
            f"project_loop dist={dist} {dt} K={K} y={has_y} active={has_act} CHUNK={chunk} CHUNKS={chunks} "
            f"STAGES={stages} PREFETCH={pf} NEGSUM={ns} aligned=True",
            tk._project_loop_kernel,
            sig,
            const,
            4,
            _attrs(tk._project_loop_kernel, sig, True),
        )
    # the list kernels: addresses come from the table, so there is no aligned variant
    tl_dt = {"fp32": tk.tl.float32, "bf16": tk.tl.bfloat16, "fp16": tk.tl.float16}
    sigs = tk._aot_signatures("bf16")  # the list kernels' signatures do not depend on the dtype
    for dist in (0, 1, 2):
        for dt in DTYPES:
            chunk = tk._project_chunk(1 << 20, ("rademacher", "uniform", "gaussian")[dist])
            for has_y, has_act in ((True, True), (False, False)):
                sig = sigs["project_multi"]
                const = {"XT": tl_dt[dt], "HAS_Y": has_y, "HAS_ACT": has_act, "DIST": dist, "CHUNK": chunk}
                const["PAIR"] = not has_y  # both forms
                yield (
                    f"project_multi dist={dist} {dt} y={has_y} active={has_act} CHUNK={chunk}",
                    tk._project_multi_kernel,
                    sig,
                    const,
                    4,
                    {},
                )
            sig = sigs["reconstruct_multi"]
            const = {"XT": tl_dt[dt], "HAS_ACT": True, "DIST": dist, "CHUNK": tk._RECON_MULTI_CHUNK}
            yield (f"reconstruct_multi dist={dist} {dt}", tk._reconstruct_multi_kernel, sig, const, 4, {})
    sig = {"part_ptr": "*fp32", "out_ptr": "*fp32", "cpb": "i64", "K": "i32", "scale": "fp32"}
    for K in (4, 64):
        kt, cb, _ = tk._reduce_tiles(K)
        yield (f"reduce KT={kt} CB={cb}", tk._reduce_kernel, sig, {"KT": kt, "CB": cb}, 4, {})
    yield (
        "philox",
        tk._philox_kernel,
        {"c_ptr": "*i64", "o_ptr": "*i64", "n": "i64", "k0": "i32", "k1": "i32"},
        {"BLOCK": 256},
        4,
        {},
    )


def ptxas_stats(ptx: str, arch: int) -> dict:
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        target = re.search(r"^\.target\s+(sm_\w+)", ptx, re.M).group(1)  # sm_90a on Hopper
        res = subprocess.run(
            [get_ptxas(arch).path, f"-arch={target}", "-v", src, "-o", os.path.join(d, "k.cubin")],
            capture_output=True,
            text=True,
        )
    text = res.stdout + res.stderr
    if res.returncode:
        raise RuntimeError(f"ptxas failed: {text[-2000:]}")
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    return {
        "registers": int(regs.group(1)) if regs else None,
        "spill_bytes": int(spill.group(1)) + int(spill.group(2)) if spill else None,
    }


def compile_variant(target, name, fn, sig, const, warps, attrs, stats):
    """One variant compiled for target with the options the ops launch with; its JSON row (stats:
    what to add from the compiled kernel), ok False with the error where it failed."""
    src = ASTSource(fn=fn, signature=dict(sig, **{k: "constexpr" for k in const}), constexprs=const, attrs=attrs)
    row = {"arch": target.arch, "kernel": name}
    try:
        k = triton.compile(src, target=target, options={"num_warps": warps, "enable_fp_fusion": tk._FP_FUSION})
        row.update(ok=True, **stats(k))
    except Exception as e:  # report every failing variant, not just the first
        row.update(ok=False, error=f"{type(e).__name__}: {e}"[-3000:])
    print(json.dumps(row), flush=True)


def main_hip(arch: str):
    """The shipped kernels for an AMD GPU (arch e.g. gfx942), as a ROCm torch compiles them: no
    inline PTX (tk._PTX_OK False) and no NVIDIA-only candidate (PREFETCH, NEGSUM). Two bf16 variants
    of each kernel (bf16 is what the PTX unpack serves), about a second each here."""
    tk._PTX_OK = tk.tl.constexpr(False)
    seen = {}
    for name, fn, sig, const, warps, attrs in variants():
        kind = name.split()[0]
        other_dtype = any(d in name.split() for d in DTYPES) and "bf16" not in name.split()
        if other_dtype or const.get("PREFETCH") or const.get("NEGSUM") or seen.get(kind, 0) >= 2:
            continue
        seen[kind] = seen.get(kind, 0) + 1
        compile_variant(
            GPUTarget("hip", arch, 64),
            name,
            fn,
            sig,
            const,
            warps,
            attrs,
            lambda k: {"hsaco_bytes": len(k.asm["hsaco"])},
        )


def main(archs):
    for arch in archs:

        def stats(k, arch=arch):
            return dict(cubin_bytes=len(k.asm["cubin"]), shared=k.metadata.shared, **ptxas_stats(k.asm["ptx"], arch))

        for name, fn, sig, const, warps, attrs in variants():
            if const.get("PREFETCH") and arch < 90:  # cp.async.bulk.prefetch is sm_90's
                continue
            compile_variant(GPUTarget("cuda", arch, 32), name, fn, sig, const, warps, attrs, stats)


if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1].startswith("gfx"):
        main_hip(sys.argv[1])
    else:
        main([int(a) for a in sys.argv[1:]] or [90])
