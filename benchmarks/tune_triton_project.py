"""Triton project kernel: elements per program (CHUNK) x warps per program, and the pipelined
small-K candidate (_project_loop_kernel: CHUNKS chunks a program, STAGES-deep), with and without its
L2 prefetch (PREFETCH, rows loop_*_pf<m>), and with the negsum dots (NEGSUM, rows loop_*_ns), side by
side on one GPU.

    python benchmarks/tune_triton_project.py [--log2n 28] [--csv path]

Launches ferret_kernels.triton_kernels' _project_kernel and _reduce_kernel directly (the shipped
op picks CHUNK with _project_chunk and 4 warps), bf16 input, rademacher and uniform, K = 4 and
64, and reports the median time (triton.testing.do_bench), GB/s of input read against the copy
bandwidth measured in the same run, and whether the result equals the one-chunk kernel's at the
shipped CHUNK bit for bit (a different CHUNK changes the summation order, so only equal CHUNKs can
match), without and with y and active counts, and for the shipped configuration the first pass
alone (first_pass_ms: what the second pass and its launch cost); the prefetch rows (loop_*_pf<m>) are
compared with the pipelined kernel's own bits instead, the negsum rows (loop_*_ns: inline PTX; other
bits than the sign flip's) with the same dots in Triton operations, and any difference exits 2; a
row that fails to compile or launch is reported, the others still run, and the script exits 3.
"shipped" marks the kernel fk.project runs for bf16 x without y, in its sign-flip form (the
reference for the bit comparisons): the pipelined kernel at CHUNKS _LOOP_CHUNKS, STAGES
_LOOP_STAGES for rademacher at K <= _LOOP_MAX_BASES, else the one-chunk kernel. Since 2026-11-27
fk.project runs the pipelined kernel's negsum form there (the loop_*_ns row; measured 0.186 against
0.225 ms on an H200 at K = 4).
Used to choose _project_chunk and num_warps from measurements; needs a CUDA device.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

import torch


def _wall(fn) -> float:
    import time

    fn()
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def _write_csv(path, rows) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--log2n", type=int, default=28)
    ap.add_argument("--csv", default=None)
    ap.add_argument("--chunks", default="2048,4096,8192,16384")
    ap.add_argument("--warps", default="4,8,16")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny sizes on the CPU (Triton's interpreter): checks the script"
    )
    args = ap.parse_args(argv)
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        args.log2n, args.chunks, args.warps = 12, "1024", "4"
    elif not torch.cuda.is_available():
        sys.exit("tune_triton_project.py needs a CUDA device (or --smoke)")
    import triton
    import triton.testing

    from ferret_kernels import triton_kernels as tk

    dev = "cpu" if args.smoke else "cuda"
    bench = (
        (lambda fn: _wall(fn))
        if args.smoke
        else (lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median") / 1e3)
    )
    n, bs = 1 << args.log2n, 1 << (10 if args.smoke else 20)
    big = torch.empty(1 << (16 if args.smoke else 29), dtype=torch.bfloat16, device=dev)
    dst = torch.empty_like(big)
    t = bench(lambda: dst.copy_(big))
    copy_gbs = 4 * big.numel() / t / 1e9
    big = dst = None  # free them (the timed lambda above holds the names)
    torch.manual_seed(0)  # the same data every run (the negsum row reports its distance from the shipped sums)
    x = torch.randn(n, device=dev).bfloat16()
    y = torch.randn(n, device=dev).bfloat16()  # the y / active-count check below, not timed
    name = "cpu (interpreter)" if args.smoke else torch.cuda.get_device_name()
    sms = 1 if args.smoke else torch.cuda.get_device_properties(0).multi_processor_count
    # inline PTX of sm_90 (the interpreter skips it: the smoke run checks the rows' plumbing)
    prefetch_ok = args.smoke or torch.cuda.get_device_capability() >= (9, 0)
    print(f"# {name} | triton {triton.__version__} | copy {copy_gbs:.0f} GB/s | bf16 n = 2^{args.log2n}", flush=True)
    rows, differ, failed = [], [], []
    for dist in ("rademacher", "uniform"):
        shipped_chunk = tk._project_chunk(bs, dist)
        for K in (4, 64):
            ref = ref_ya = loop_ref = None
            nb = (n + bs - 1) // bs
            act = (torch.arange(nb, device=dev) % (K + 2) - 1).to(torch.int32)  # -1 .. K + 1: clamped
            # what fk.project runs for bf16 x without y: the pipelined kernel at small K (rademacher)
            loop_shipped = dist == "rademacher" and K <= tk._LOOP_MAX_BASES
            shipped_loop = (tk._LOOP_CHUNKS, tk._LOOP_STAGES) if loop_shipped else ()
            configs = [(shipped_chunk, 4)] + [
                (int(c), int(w))
                for c in args.chunks.split(",")
                for w in args.warps.split(",")
                if (int(c), int(w)) != (shipped_chunk, 4)
            ]
            # the pipelined candidate (_project_loop_kernel: K unrolled, CHUNKS chunks a program,
            # STAGES-deep cp.async pipeline) at small K, with the shipped chunk and 4 warps
            pipes = ((4, 2), (8, 3)) if args.smoke else [(4, 3), (8, 2), (8, 3), (8, 4), (16, 3), (16, 4)]
            loops = [(shipped_chunk, 4, c, st) for c, st in pipes] if K <= 8 else []
            # rademacher bases one at a time (PAIR False: what shipped before 2026-11-27) beside two
            singles = [(shipped_chunk, 4, "single")] if dist == "rademacher" else []
            # the shipped pipelined kernel with the L2 prefetch candidate (PREFETCH: each program first
            # prefetches the chunks of the program m x the SM count on; sm_90 and later)
            ms = (2,) if args.smoke else (2, 4, 8)  # the smoke run: one row checks the plumbing
            pfs = [(shipped_chunk, 4, "pf", m) for m in ms] if shipped_loop and prefetch_ok else []
            # the shipped pipelined kernel with the negsum dots (NEGSUM 1: predicated adds in inline PTX;
            # other bits than the sign flip's, so it is compared with its own Triton form, NEGSUM 2)
            nss = [(shipped_chunk, 4, "ns")] if shipped_loop else []
            # the negsum and prefetch rows before the one-basis row (measured before): a run cut short keeps them
            for chunk, warps, *loop in [(c, w) for c, w in configs] + loops + nss + pfs + singles:
                single = loop == ["single"]
                pf = loop[1] if loop[:1] == ["pf"] else None
                ns = loop == ["ns"]
                loop = [] if single else list(shipped_loop) if pf is not None or ns else loop
                cpb = (bs + chunk - 1) // chunk
                part = torch.zeros(nb * cpb, K, device=dev)
                out = torch.zeros(nb, K, device=dev)
                k0, k1 = tk._key(12345)

                def run(with_y_act=False, second=True, negsum=1 if ns else 0):
                    xs, ys, acts, hy = (x, y, act, True) if with_y_act else (x, x, out, False)
                    if loop:
                        chunks, stages = loop
                        tk._project_loop_kernel[(triton.cdiv(nb * cpb, chunks),)](
                            xs,
                            ys,
                            acts,
                            part,
                            n,
                            bs,
                            0,
                            k0,
                            k1,
                            nb * cpb,
                            K=K,
                            HAS_Y=hy,
                            HAS_ACT=hy,
                            DIST=tk._DIST_ID[dist],
                            CHUNK=chunk,
                            CHUNKS=chunks,
                            STAGES=stages,
                            num_warps=warps,
                            ahead=(pf or 0) * sms,
                            PREFETCH=pf is not None,
                            NEGSUM=negsum,
                        )
                    else:
                        tk._project_kernel[(nb * cpb,)](
                            xs,
                            ys,
                            acts,
                            part,
                            n,
                            bs,
                            0,
                            K,
                            k0,
                            k1,
                            HAS_Y=hy,
                            HAS_ACT=hy,
                            DIST=tk._DIST_ID[dist],
                            CHUNK=chunk,
                            PAIR=not single,
                            num_warps=warps,
                        )
                    if second:  # the second pass (without it: what it and its launch cost)
                        kt, cb, nt = tk._reduce_tiles(K)
                        tk._reduce_kernel[(nb * nt,)](part, out, cpb, K, 1.0, KT=kt, CB=cb)

                try:
                    run()
                    plain = out.clone()
                    if ns:  # the negsum row's Triton form (the same adds: the same bits), without and with y
                        run(negsum=2)
                        ns_ref = out.clone()
                        part.zero_()
                        run(True, negsum=2)
                        ns_ref_ya = out.clone()
                    if dev == "cuda":
                        torch.cuda.synchronize()
                except Exception as e:  # a config that does not compile or launch: reported, the rows after it run
                    what = f"{dist} K={K} chunk={chunk} warps={warps} {loop}{f' pf{pf}' if pf else ' ns' if ns else ''}"
                    print(f"{what}: failed: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    failed.append(what)
                    continue
                if ref is None:
                    ref = plain
                if ns:
                    err = ((plain - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
                # the prefetch rows against the pipelined kernel they add the prefetch to
                same = (
                    bool(torch.equal(plain, ns_ref))
                    if ns
                    else bool(torch.equal(plain, ref))
                    if pf is None
                    else loop_ref is not None and torch.equal(plain, loop_ref[0])
                )
                # with y and active counts (the fl layer's call): bit-identical to the shipped kernel?
                part.zero_()  # inactive entries are not written
                run(True)
                if ref_ya is None:
                    ref_ya = out.clone()
                same_ya = (
                    bool(torch.equal(out, ns_ref_ya))
                    if ns
                    else bool(torch.equal(out, ref_ya))
                    if pf is None
                    else loop_ref is not None and torch.equal(out, loop_ref[1])
                )
                if loop and pf is None and not ns and tuple(loop) == shipped_loop:
                    loop_ref = (plain, out.clone())
                if (pf is not None or ns) and not (same and same_ya):
                    differ.append(f"{dist} K={K} loop_c{loop[0]}_s{loop[1]}" + ("_ns" if ns else f"_pf{pf}"))
                t = bench(run)  # without active counts every entry of part is written
                gbs = 2 * n / t / 1e9
                shipped = (
                    (chunk, warps) == (shipped_chunk, 4)
                    and tuple(loop) == shipped_loop
                    and not single
                    and pf is None
                    and not ns
                )
                t1 = bench(lambda: run(second=False)) if shipped else None
                row = dict(
                    gpu=name,
                    dist=dist,
                    K=K,
                    chunk=chunk,
                    num_warps=warps,
                    variant=(f"loop_c{loop[0]}_s{loop[1]}" + (f"_pf{pf}" if pf else "_ns" if ns else ""))
                    if loop
                    else "one_basis"
                    if single
                    else "one_chunk",
                    shipped=shipped,
                    time_ms=round(t * 1e3, 5),
                    first_pass_ms=round(t1 * 1e3, 5) if t1 else "",
                    GB_per_s=round(gbs, 1),
                    frac_of_copy=round(gbs / copy_gbs, 4),
                    identical_to_shipped=same,
                    identical_with_y_active=same_ya,
                    # what "identical" compares with: the shipped kernel, the pipelined kernel (prefetch rows),
                    # the negsum dots in Triton operations (negsum rows: other bits than the shipped ones)
                    compared_with="negsum_triton_form" if ns else "pipelined" if pf else "shipped",
                    max_rel_diff_vs_shipped=f"{err:.3g}" if ns else "",
                    copy_GBps=round(copy_gbs, 1),
                )
                rows.append(row)
                if args.csv:  # rewritten after every row: a run stopped at its deadline keeps what it measured
                    _write_csv(args.csv, rows)
                print(
                    f"{dist:10s} K={K:3d} chunk={chunk:6d} warps={warps:2d} {row['variant']:12s} {t * 1e3:8.4f} ms {gbs:7.0f} GB/s "
                    f"{gbs / copy_gbs:6.3f} of copy  identical={same} (y, active: {same_ya})"
                    + (f"  (shipped; first pass alone {t1 * 1e3:.4f} ms)" if shipped else "")
                    + (f"  (vs its Triton form; {err:.2g} of the largest shipped sum from it)" if ns else ""),
                    flush=True,
                )
    if differ:  # a prefetch changes no result, inline PTX computes its Triton form: bugs, not configurations
        print(
            "bits differ from the pipelined kernel without the prefetch, or from the negsum's Triton form: "
            + ", ".join(differ),
            flush=True,
        )
        return 2
    if failed:  # every candidate compiles ahead of time for sm_90 in make test: a failure here is news
        print("rows that failed to compile or launch: " + "; ".join(failed), flush=True)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
