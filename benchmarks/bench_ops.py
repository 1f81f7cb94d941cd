"""CPU benchmark of the fused ops against per-seed regeneration and naive dense (common.py).

All timings are taken side by side in one process; the table reports rates (element-bases
per second) and ratios. Baselines that take seconds per block (per-seed regeneration,
naive dense) are timed on a slice of the work (some blocks x some bases) and compared as
rates, which is exact because their cost is a loop over blocks and bases. Peak extra
memory is measured in a fresh subprocess per op (ru_maxrss above a warmed-up baseline).

    python benchmarks/bench_ops.py            # the brief's configuration (n = 2^24, K = 64)
    python benchmarks/bench_ops.py --quick    # a smaller one, for a smoke test
Rows are appended to benchmarks/results/cpu_ops.csv with the machine's description.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ferret_kernels as fk  # noqa: E402

import common  # noqa: E402


def fused_times(x, K, bs, dist, repeat):
    n = x.numel()
    g = fk.project(x, 1, K, bs, dist=dist)
    out = torch.zeros(n, dtype=x.dtype)
    t_p = common.bench(lambda: fk.project(x, 1, K, bs, dist=dist), repeat=repeat)
    t_r = common.bench(lambda: fk.reconstruct(g, 1, n, bs, dist=dist, dtype=x.dtype), repeat=repeat)
    t_i = common.bench(lambda: fk.reconstruct_(out, g, 1, bs, dist=dist, alpha=1e-3), repeat=repeat)
    return t_p, t_r, t_i


def peak_extra_mb(op: str, n: int, K: int, bs: int, dist: str) -> float:
    """Peak RSS growth (MB) of one call, in a fresh process, above inputs already in memory
    (Linux: the peak is reset through /proc/self/clear_refs, then read from VmHWM)."""
    code = f"""
import torch, ferret_kernels as fk, sys
sys.path.insert(0, {os.path.dirname(os.path.abspath(__file__))!r})
import common
torch.manual_seed(0)
n, K, bs, dist = {n}, {K}, {bs}, {dist!r}
x = torch.randn(n); out = torch.zeros(n); c = torch.randn(fk.num_blocks(n, bs), K)
fk.project(x[:4096], 1, K, 4096, dist=dist); fk.reconstruct(c[:1], 1, 4096, 4096, dist=dist)  # warm up
gen = torch.Generator().manual_seed(0)
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS:")
if {op!r} == "project": r = fk.project(x, 1, K, bs, dist=dist)
elif {op!r} == "reconstruct_": fk.reconstruct_(out, c, 1, bs, dist=dist)
elif {op!r} == "reconstruct": r = fk.reconstruct(c, 1, n, bs, dist=dist)
elif {op!r} == "dense_project": r = common.dense_project(x, K, bs, 1, gen)
print((status("VmHWM:") - before) / 1024)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(res.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1 << 24)
    ap.add_argument("--K", type=int, default=64)
    ap.add_argument("--block-size", type=int, default=1 << 20)
    ap.add_argument("--dists", default="rademacher,uniform,gaussian")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="n = 2^20, K = 16, block 2^16 (smoke test)")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    if args.quick:
        args.n, args.K, args.block_size, args.repeat = 1 << 20, 16, 1 << 16, 3
    n, K, bs = args.n, args.K, args.block_size
    info = common.machine_info()
    print(f"# {info['cpu']} | threads {info['threads']} | torch {info['torch']} | isa {info['cpu_isa']}")
    print(f"# n = {n}, K = {K}, block_size = {bs}, fp32\n")
    torch.manual_seed(0)
    x = torch.randn(n)
    work = n * K
    t_sum = common.bench(lambda: x.sum(), repeat=max(args.repeat, 10))
    o = torch.empty_like(x)
    t_copy = common.bench(lambda: o.copy_(x), repeat=max(args.repeat, 10))
    # baselines on a slice: 1 block (2 for dense) x a few bases
    sl_blocks, sl_bases = 1, min(K, 4)
    t = common.bench(lambda: common.per_seed_project(x, 1, K, bs, sl_blocks, sl_bases), repeat=2, warmup=0)
    rate_seed_p = sl_blocks * sl_bases * bs / t
    c_small = torch.randn(sl_blocks, K)
    t = common.bench(lambda: common.per_seed_reconstruct(c_small, 1, n, bs, sl_blocks, sl_bases), repeat=2, warmup=0)
    rate_seed_r = sl_blocks * sl_bases * bs / t
    gen = torch.Generator().manual_seed(0)
    t = common.bench(lambda: common.dense_project(x, K, bs, 2, gen), repeat=2, warmup=1)
    rate_dense_p = 2 * K * bs / t
    c2 = torch.randn(2, K)
    t = common.bench(lambda: common.dense_reconstruct(c2, bs, 2, gen), repeat=2, warmup=1)
    rate_dense_r = 2 * K * bs / t

    rows = []
    for dist in args.dists.split(","):
        t_p, t_r, t_i = fused_times(x, K, bs, dist, args.repeat)
        for op, t, rate_seed, rate_dense, floor, nbytes in (
            ("project", t_p, rate_seed_p, rate_dense_p, t_sum, 4 * n),
            ("reconstruct", t_r, rate_seed_r, rate_dense_r, t_copy, 4 * n),
            ("reconstruct_", t_i, rate_seed_r, rate_dense_r, t_copy, 8 * n),
        ):
            rate = work / t
            rows.append(
                dict(
                    op=op,
                    dist=dist,
                    dtype="float32",
                    n=n,
                    K=K,
                    block_size=bs,
                    time_ms=t * 1e3,
                    Gelem_bases_per_s=rate / 1e9,
                    GB_per_s=nbytes / t / 1e9,
                    x_vs_per_seed=rate / rate_seed,
                    x_vs_dense=rate / rate_dense,
                    time_vs_floor=t / floor,
                )
            )
    # K = 1 rademacher project against x.sum()
    t1 = common.bench(lambda: fk.project(x, 1, 1, bs), repeat=max(args.repeat, 10))
    rows.append(
        dict(
            op="project",
            dist="rademacher",
            dtype="float32",
            n=n,
            K=1,
            block_size=bs,
            time_ms=t1 * 1e3,
            Gelem_bases_per_s=n / t1 / 1e9,
            GB_per_s=4 * n / t1 / 1e9,
            x_vs_per_seed=n / t1 / rate_seed_p,
            x_vs_dense=n / t1 / rate_dense_p,
            time_vs_floor=t1 / t_sum,
        )
    )
    cols = [
        "op",
        "dist",
        "K",
        "time_ms",
        "Gelem_bases_per_s",
        "GB_per_s",
        "x_vs_per_seed",
        "x_vs_dense",
        "time_vs_floor",
    ]
    common.print_table(rows, cols)
    print(
        f"\nbaselines: per-seed regeneration {rate_seed_p / 1e6:.1f} (project) / {rate_seed_r / 1e6:.1f} (reconstruct) "
        f"M elem-bases/s; naive dense {rate_dense_p / 1e6:.1f} / {rate_dense_r / 1e6:.1f} M elem-bases/s; "
        f"x.sum() {t_sum * 1e3:.2f} ms; copy {t_copy * 1e3:.2f} ms"
    )

    # memory: peak extra RSS at fixed num_blocks * K while n grows (fused), and naive dense
    mem_rows = []
    nbl = 16
    for shift in (20, 22) if args.quick else (22, 24, 26):
        nn = 1 << shift
        for op in ("project", "reconstruct_", "dense_project"):
            if op == "dense_project" and shift > 24:
                continue
            mb = peak_extra_mb(op, nn, K, nn // nbl, "rademacher")
            mem_rows.append(dict(op=op, n=nn, num_blocks=nbl, K=K, input_MB=4 * nn / 2**20, peak_extra_MB=mb))
    print()
    common.print_table(mem_rows, ["op", "n", "num_blocks", "K", "input_MB", "peak_extra_MB"])

    if not args.no_csv:
        extra = dict(
            info,
            baseline_seed_project=rate_seed_p,
            baseline_seed_reconstruct=rate_seed_r,
            baseline_dense_project=rate_dense_p,
            baseline_dense_reconstruct=rate_dense_r,
            sum_ms=t_sum * 1e3,
            copy_ms=t_copy * 1e3,
        )
        mems = {f"peak_extra_MB_{r['op']}_n{r['n']}": r["peak_extra_MB"] for r in mem_rows}
        path = common.append_csv("cpu_ops.csv", [dict(extra, **r, memory=json.dumps(mems)) for r in rows])
        print(f"\nappended {len(rows)} rows to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
