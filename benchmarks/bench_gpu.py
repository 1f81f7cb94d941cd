"""GPU benchmark: Triton and CUDA kernels beside the baselines, on one device, in one run.

    python benchmarks/bench_gpu.py            # n = 2^28 bf16, K = 4 and 64, plus the LLaMA2-7B apply
                                              # and K = 4 project, per tensor and as one list call
    python benchmarks/bench_gpu.py --quick    # n = 2^24, no 7B model
    python benchmarks/bench_gpu.py --smoke    # tiny sizes, any device (CPU: Triton's interpreter), no CSV:
                                              # checks the script end to end; its times mean nothing

Reports medians (triton.testing.do_bench), GB/s against the copy bandwidth measured in the
same run, element-bases/s, and ratios to per-seed regeneration and naive dense on the same
GPU (those two are timed on a slice of blocks x bases and compared as rates). Appends rows
to benchmarks/results/gpu_ops.csv with the device name.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferret_kernels as fk  # noqa: E402

import common  # noqa: E402


def do_bench(fn, device="cuda") -> float:
    """Median seconds."""
    if device != "cuda":
        return common.bench(fn, repeat=3)
    try:
        import triton.testing

        return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3
    except ImportError:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(20):
            s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            s.record()
            fn()
            e.record()
            torch.cuda.synchronize()
            times.append(s.elapsed_time(e) / 1e3)
        return sorted(times)[len(times) // 2]


def gpu_driver() -> str:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 else ""
    except (OSError, IndexError, subprocess.SubprocessError):
        return ""


def llama2_7b_shapes():
    """(name, shape) of LLaMA2-7B's parameters: 6.74e9 elements."""
    d, ff, vocab, layers = 4096, 11008, 32000, 32
    shapes = [("embed_tokens", (vocab, d))]
    for i in range(layers):
        for p in ("q", "k", "v", "o"):
            shapes.append((f"layers.{i}.{p}_proj", (d, d)))
        shapes += [
            (f"layers.{i}.gate_proj", (ff, d)),
            (f"layers.{i}.up_proj", (ff, d)),
            (f"layers.{i}.down_proj", (d, ff)),
            (f"layers.{i}.input_layernorm", (d,)),
            (f"layers.{i}.post_attention_layernorm", (d,)),
        ]
    shapes += [("norm", (d,)), ("lm_head", (vocab, d))]
    return shapes


def _7b_state(shapes, bs, K, device, state):
    if state is None or state.get("shapes") is not shapes or state.get("K") != K:
        state = {"shapes": shapes, "K": K}
        state["params"] = [torch.zeros(s, dtype=torch.bfloat16, device=device) for _, s in shapes]
        offsets, off = [], 0
        for p in state["params"]:
            offsets.append(off)
            off += fk.num_blocks(p.numel(), bs)
        state["offsets"], state["coeffs"] = offsets, torch.randn(off, K, device=device) * 1e-3
    return state


def _7b_row(op, fn, total, bytes_per_elem, be, dist, bs, K, device, multi):
    """Times fn over the model's `total` bf16 elements (once untimed first: compile / autotune)
    into a row; bytes_per_elem: 2 read (project), 4 read and written (apply)."""
    fn()
    t = do_bench(fn, device)
    return _row(op + ("_multi" if multi else ""), be, dist, total, K, bs, t, bytes_per_elem * total)


def _row(op, be, dist, n, K, bs, t, nbytes, **extra):
    """One CSV row: an op over n bf16 elements and K bases that took t seconds moving nbytes."""
    return dict(
        op=op,
        backend=be,
        dist=dist,
        dtype="bfloat16",
        n=n,
        K=K,
        block_size=bs,
        time_ms=t * 1e3,
        Gelem_bases_per_s=n * K / t / 1e9,
        GB_per_s=nbytes / t / 1e9,
        **extra,
    )


def bench_7b_apply(be, dist, bs=1 << 20, K=64, shapes=None, device="cuda", state=None, multi=False):
    """Reconstruct-and-apply a Ferret update into bf16 parameters of LLaMA2-7B's shapes: one
    reconstruct_ per tensor (291 calls), or `multi`: one reconstruct_multi_ for the model."""
    shapes = shapes or llama2_7b_shapes()
    state = _7b_state(shapes, bs, K, device, state)
    params, offsets, coeffs = state["params"], state["offsets"], state["coeffs"]
    total = sum(p.numel() for p in params)

    def apply():
        with fk.use_backend(be):
            if multi:
                fk.reconstruct_multi_(
                    params, coeffs, 1234, bs, block_offsets=offsets, dist=dist, scale=1 / math.sqrt(K), alpha=-1.0
                )
                return
            for p, o in zip(params, offsets):
                nb = fk.num_blocks(p.numel(), bs)
                fk.reconstruct_(
                    p, coeffs[o : o + nb], 1234, bs, block_offset=o, dist=dist, scale=1 / math.sqrt(K), alpha=-1.0
                )

    return _7b_row("apply_llama2_7b", apply, total, 4, be, dist, bs, K, device, multi), state


def bench_7b_project(be, dist, bs=1 << 20, K=4, shapes=None, device="cuda", state=None, multi=False):
    """Project a whole LLaMA2-7B-shaped bf16 model at small K (memory bound): a project per
    tensor (291 calls, ~4 launches each) against one project_multi (one launch per dtype)."""
    shapes = shapes or llama2_7b_shapes()
    state = _7b_state(shapes, bs, K, device, state)
    params, offsets = state["params"], state["offsets"]
    total = sum(p.numel() for p in params)

    def run():
        with fk.use_backend(be):
            if multi:
                return fk.project_multi(params, 99, K, bs, block_offsets=offsets, dist=dist)
            return [fk.project(p, 99, K, bs, block_offset=o, dist=dist) for p, o in zip(params, offsets)]

    return _7b_row("project_llama2_7b", run, total, 2, be, dist, bs, K, device, multi), state


COLS = [
    "op",
    "backend",
    "dist",
    "K",
    "time_ms",
    "Gelem_bases_per_s",
    "GB_per_s",
    "frac_of_copy",
    "x_vs_per_seed",
    "x_vs_dense",
    "triton_config",
]


# The project candidates that run through fk.project itself, chosen by an environment variable
# (FERRET_CUDA_PROJECT / FERRET_TRITON_PROJECT; tests/test_project_choice.py), timed right after
# the shipped kernel at K = 4 rademacher, the bars' case: rows with backend "<backend>:<choice>"
# and, in the config column, whether their output had the shipped call's bits ("same_bits"; CUDA's
# must, except quad's), other bits within float32 rounding of them ("other_bits": the negsum dots,
# CUDA's quad kernel) or neither ("far_off", a wrong result). Triton's prefetch needs sm_90 (refused
# before); CUDA's is a no-op there.
PROJECT_CHOICES = {
    "cuda": (
        "FERRET_CUDA_PROJECT",
        ("prefetch:0.5", "prefetch", "prefetch:2", "fused", "fused_prefetch", "quad", "quad:4"),
    ),
    "triton": ("FERRET_TRITON_PROJECT", ("signflip", "negsum_prefetch:4", "signflip_prefetch:4")),
}


def bits_verdict(got, want, x, bs):
    """ "same_bits", "other_bits" (every entry within 4.5e-6 of its block's l1 norm of want: float32
    rounding, the bound tests/test_project_choice.py holds the negsum dots to) or "far_off"."""
    if torch.equal(got, want):
        return "same_bits"
    l1 = torch.stack([x[b * bs : (b + 1) * bs].float().abs().sum() for b in range(want.shape[0])])
    err = (got.double() - want.double()).abs()
    ok = bool(torch.isfinite(got).all()) and bool((err <= 4.5e-6 * l1.double()[:, None]).all())
    return "other_bits" if ok else "far_off"


def bench_project_choice(be, choice, x, K, bs, dev, want):
    """(seconds, bits_verdict against want) of fk.project(x, 7, K, bs) on backend be with the choice
    set; None where this device refuses it (Triton's prefetch before sm_90)."""
    var = PROJECT_CHOICES[be][0]
    os.environ[var] = choice
    try:
        with fk.use_backend(be):
            try:
                got = fk.project(x, 7, K, bs)
            except ValueError as e:
                if "compute capability" not in str(e):
                    raise
                print(f"# {be} {choice}: {e}", flush=True)
                return None
            return do_bench(lambda: fk.project(x, 7, K, bs), dev), bits_verdict(got, want, x, bs)
    finally:  # unset again, as main() found it (it unsets both variables first)
        del os.environ[var]


def triton_config(op, be, dist, bs):
    """The Triton launch configuration a row was timed with, without spaces (gpu-check splits the
    table on them): the autotuner's pick for the one-tensor reconstruct_, the fixed chunk of the
    others; "-" for CUDA."""
    if be != "triton":
        return "-"
    from ferret_kernels import triton_kernels as tk

    if op in ("reconstruct_", "apply_llama2_7b"):
        c = getattr(tk._reconstruct_kernel, "best_config", None)
        return f"CHUNK={c.kwargs['CHUNK']},warps={c.num_warps}" if c is not None else "?"
    if op == "apply_llama2_7b_multi":
        return f"CHUNK={tk._RECON_MULTI_CHUNK},warps=4"
    return f"CHUNK={tk._project_chunk(bs, dist)},warps=4"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--Ks", default="4,64")
    ap.add_argument("--dists", default="rademacher,gaussian")
    ap.add_argument("--block-size", type=int, default=1 << 20)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-7b", action="store_true")
    ap.add_argument("--no-csv", action="store_true")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument(
        "--budget", type=float, default=0, help="seconds; stop starting new measurements after this (0: none)"
    )
    args = ap.parse_args(argv)
    t_start = time.monotonic()
    for var, _ in PROJECT_CHOICES.values():  # the backend rows time the shipped kernels
        if os.environ.pop(var, None) is not None:
            print(f"# {var} was set: unset for this run (the <backend>:<choice> rows time each choice)", flush=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    if dev != "cuda" and not args.smoke:
        sys.exit("bench_gpu.py needs a CUDA device (use benchmarks/bench_ops.py on the CPU, or --smoke)")
    if args.quick:
        args.log2n, args.no_7b = 24, True
    copy_elems, seed_blocks, seed_bases, shapes_7b, K_7b = 1 << 29, 2, 8, None, 64
    if args.smoke:
        args.log2n, args.block_size, args.Ks, args.no_csv, K_7b = 12, 1 << 10, "4", True, 2
        copy_elems, seed_blocks, seed_bases = 1 << 16, 1, 2
        shapes_7b = [("embed", (50, 64)), ("norm", (64,)), ("down_proj", (64, 72))]
    info = common.machine_info(dev)
    if dev == "cuda":
        info["driver"] = gpu_driver()
        info["cuda"] = torch.version.cuda or ""
        cap = torch.cuda.get_device_capability()
        info["sm"] = f"{cap[0]}{cap[1]}"
        info["sms"] = torch.cuda.get_device_properties(0).multi_processor_count
    n, bs = 1 << args.log2n, args.block_size
    backends = [b for b in ("cuda", "triton") if b in fk.available_backends(dev)]
    print(
        f"# {info['gpu']} | driver {info.get('driver', '')} | torch {info['torch']} | triton {info['triton']} | backends {backends}",
        flush=True,
    )
    dists = args.dists.split(",")
    Ks = [int(k) for k in args.Ks.split(",")]
    rows, skipped = [], []

    def out_of_time(what):
        if args.budget and time.monotonic() - t_start > args.budget:
            skipped.append(what)
            return True
        return False

    def emit(row, extra):
        row["triton_config"] = row.get("triton_config") or triton_config(
            row["op"], row["backend"], row["dist"], row["block_size"]
        )
        rows.append(row)
        print(
            "row: "
            + ", ".join(
                f"{c}={row[c]:.4g}" if isinstance(row.get(c), float) else f"{c}={row.get(c, '')}"
                for c in COLS
                if c in row
            ),
            flush=True,
        )
        if not args.no_csv:
            common.append_csv(
                "gpu_ops.csv",
                [dict(extra, **{c: row.get(c, "") for c in COLS[:-1] + ["n", "block_size", "dtype", "triton_config"]})],
            )

    # copy bandwidth of this device (bytes read + written)
    big = torch.empty(copy_elems, dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(big)
    t_copy = do_bench(lambda: dst.copy_(big), dev)
    copy_gbs = 2 * big.numel() * 2 / t_copy / 1e9
    big = dst = None  # free them (the timed lambda above holds the names)
    print(f"# copy bandwidth: {copy_gbs:.0f} GB/s ({copy_elems * 2 / 2**30:g} GiB bf16 copy)", flush=True)

    # bit-identical rademacher and uniform bases between the GPU backends and the CPU kernel
    ident = {}
    for be in backends:
        for dist in ("rademacher", "uniform"):
            c = torch.zeros(1, 4)
            c[0, 3] = 1
            with fk.use_backend(be):
                v = fk.reconstruct(c.to(dev), 99, bs, bs, block_offset=5, dist=dist).cpu()
            with fk.use_backend("cpu" if "cpu" in fk.available_backends("cpu") else "reference"):
                same = bool(torch.equal(v, fk.reconstruct(c, 99, bs, bs, block_offset=5, dist=dist)))
            ident[be] = ident.get(be, True) and same
    print(f"# rademacher and uniform bases bit-identical to the CPU kernel: {ident}", flush=True)

    torch.manual_seed(0)
    x = torch.randn(n, device=dev).bfloat16()
    # baselines on slices, as rates (element-bases / s)
    xs = x.float()
    sb, sk = seed_blocks, seed_bases
    c1 = torch.randn(sb, max(Ks), device=dev)
    t = do_bench(lambda: common.per_seed_project(xs, 1, max(Ks), bs, sb, sk), dev)
    rate_seed = sb * sk * bs / t
    gen = torch.Generator(device=dev).manual_seed(0)
    rate_dense = {}
    for K in Ks:
        t = do_bench(lambda: common.dense_project(xs, K, bs, 4, gen), dev)
        rate_dense[K] = 4 * K * bs / t
    t = do_bench(lambda: common.per_seed_reconstruct(c1, 1, n, bs, sb, sk, device=dev), dev)
    rate_seed_r = sb * sk * bs / t
    xs = None  # free it
    print(
        f"# baselines: per-seed {rate_seed / 1e9:.3f} (project) / {rate_seed_r / 1e9:.3f} (reconstruct) G elem-bases/s; "
        f"dense {', '.join(f'K={k}: {r / 1e9:.2f}' for k, r in rate_dense.items())} G elem-bases/s",
        flush=True,
    )
    extra = dict(info, copy_GBps=copy_gbs, baseline_seed=rate_seed, bit_identical=str(ident))

    def timed_row(op, be, dist, K, t, nbytes, rate_of_seed):
        """A row of n elements and K bases done in t seconds, moving nbytes, with its ratios to this
        run's copy, per-seed and dense rates."""
        rate = n * K / t
        return _row(
            op,
            be,
            dist,
            n,
            K,
            bs,
            t,
            nbytes,
            frac_of_copy=nbytes / t / 1e9 / copy_gbs,
            x_vs_per_seed=rate / rate_of_seed,
            x_vs_dense=rate / rate_dense[K],
        )

    # most telling first: K = 4 (memory-bound), rademacher before gaussian, each backend side by side
    out = torch.zeros_like(x)
    for K in Ks:
        for dist in dists:
            for be in backends:
                if out_of_time(f"{be} {dist} K={K}"):
                    continue
                with fk.use_backend(be):
                    g = fk.project(x, 7, K, bs, dist=dist)
                    fk.reconstruct_(out, g, 7, bs, dist=dist, alpha=1e-3)
                    t_p = do_bench(lambda: fk.project(x, 7, K, bs, dist=dist), dev)
                    t_r = do_bench(lambda: fk.reconstruct_(out, g, 7, bs, dist=dist, alpha=1e-3), dev)
                for op, t, nbytes, rs in (
                    ("project", t_p, 2 * n, rate_seed),
                    ("reconstruct_", t_r, 4 * n, rate_seed_r),
                ):
                    emit(timed_row(op, be, dist, K, t, nbytes, rs), extra)
                if K == 4 and dist == "rademacher" and be in PROJECT_CHOICES:
                    with fk.use_backend(be):
                        want = fk.project(x, 7, K, bs)  # the shipped kernels (the variables are unset)
                    for choice in PROJECT_CHOICES[be][1]:
                        if out_of_time(f"{be} project K={K} {choice}"):
                            continue
                        got = bench_project_choice(be, choice, x, K, bs, dev, want)
                        if got is None:
                            continue
                        t, verdict = got
                        row = timed_row("project", f"{be}:{choice}", dist, K, t, 2 * n, rate_seed)
                        emit(dict(row, triton_config=verdict), extra)
    x = out = None  # free them
    if dev == "cuda":
        torch.cuda.empty_cache()
    if not args.no_7b:
        state = None
        for dist in dists:
            for be in backends:
                for multi in (False, True):  # a call per tensor, then the list op, side by side
                    # (Triton's list reconstruct at CHUNK 2048, 4096 and 8192 measured the same on an
                    # H100, 79.6-79.7 ms, 2026-11-27: its chunk is not what limits it)
                    if out_of_time(f"7B apply {be} {dist}{' multi' if multi else ''}"):
                        continue
                    row, state = bench_7b_apply(
                        be, dist, bs=bs, K=K_7b, shapes=shapes_7b, device=dev, state=state, multi=multi
                    )
                    emit(row, extra)
        # the whole model at K = 4: per-tensor host work against the list op
        for be in backends:
            for multi in (False, True):
                if out_of_time(f"7B project K=4 {be}{' multi' if multi else ''}"):
                    continue
                row, state = bench_7b_project(
                    be, "rademacher", bs=bs, K=4, shapes=shapes_7b, device=dev, state=state, multi=multi
                )
                emit(row, extra)
        state = None
        if dev == "cuda":
            torch.cuda.empty_cache()
    print()
    # "-" where a row has no value: gpu-check splits the table on white space
    common.print_table([{c: r.get(c, "-") for c in COLS} for r in rows], COLS)
    if skipped:
        print(f"\nskipped (over the --budget of {args.budget:g} s): {'; '.join(skipped)}")
    if not args.no_csv and rows:
        print(f"appended {len(rows)} rows to {os.path.relpath(os.path.join(common.RESULTS, 'gpu_ops.csv'))}")


if __name__ == "__main__":
    main()
