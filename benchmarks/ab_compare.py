"""Two builds of ferret_kernels side by side: the same CPU timings, interleaved, in one run.

    python benchmarks/ab_compare.py --a /path/to/old/checkout --b . [--log2n 22] [--rounds 5]

Each round times project / reconstruct / reconstruct_ (n = 2^log2n fp32, K = 64, block 2^20,
rademacher and gaussian) in a fresh process per tree, A then B, so both see the same machine
state; the table gives the median rate of each over the rounds (element-bases per second) and
B / A. The trees must have their extension built in place (python setup.py build_ext --inplace).
Used to show that a change does not slow the CPU kernels (rows appended to
benchmarks/results/ab_compare.csv with machine info).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402

CHILD = r"""
import json, sys, time, statistics, torch
import ferret_kernels as fk
assert fk.native_load_error() is None, fk.native_load_error()
n, K, bs, dists = int(sys.argv[1]), 64, 1 << 20, ("rademacher", "gaussian")
torch.manual_seed(0)
x = torch.randn(n); out = torch.zeros(n)
def t(fn, reps=5):
    fn(); s = []
    for _ in range(reps):
        a = time.perf_counter(); fn(); s.append(time.perf_counter() - a)
    return statistics.median(s)
res = {}
with fk.use_backend("cpu"):
    for d in dists:
        g = fk.project(x, 1, K, bs, dist=d)
        res[f"project/{d}"] = n * K / t(lambda: fk.project(x, 1, K, bs, dist=d))
        res[f"reconstruct/{d}"] = n * K / t(lambda: fk.reconstruct(g, 1, n, bs, dist=d))
        res[f"reconstruct_/{d}"] = n * K / t(lambda: fk.reconstruct_(out, g, 1, bs, dist=d, alpha=1e-3))
print(json.dumps({"file": fk.__file__, "rates": res}))
"""


def run_tree(tree: str, n: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    res = subprocess.run(
        [sys.executable, "-c", CHILD, str(n)],
        capture_output=True,
        text=True,
        env=env,
        cwd=os.path.abspath(tree),
        timeout=1800,
    )
    if res.returncode:
        sys.exit(f"{tree}: {res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    if not out["file"].startswith(os.path.abspath(tree)):
        sys.exit(f"{tree}: imported ferret_kernels from {out['file']}, not from the tree")
    return out["rates"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", required=True, help="the baseline checkout")
    ap.add_argument("--b", required=True, help="the changed checkout")
    ap.add_argument("--log2n", type=int, default=22)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--label", default="", help="what B changes, for the CSV")
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    n = 1 << args.log2n
    runs = {"a": [], "b": []}
    for _ in range(args.rounds):
        runs["a"].append(run_tree(args.a, n))
        runs["b"].append(run_tree(args.b, n))
    rows = []
    for key in runs["a"][0]:
        a = statistics.median(r[key] for r in runs["a"])
        b = statistics.median(r[key] for r in runs["b"])
        op, dist = key.split("/")
        rows.append(
            dict(op=op, dist=dist, n=n, K=64, a_Gelem_bases_per_s=a / 1e9, b_Gelem_bases_per_s=b / 1e9, b_over_a=b / a)
        )
    common.print_table(rows, ["op", "dist", "a_Gelem_bases_per_s", "b_Gelem_bases_per_s", "b_over_a"])
    if not args.no_csv:
        info = common.machine_info("cpu")
        path = common.append_csv(
            "ab_compare.csv", [dict(info, label=args.label, rounds=args.rounds, **r) for r in rows]
        )
        print(f"appended {len(rows)} rows to {os.path.relpath(path)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
