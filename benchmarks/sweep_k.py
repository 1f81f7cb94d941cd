"""Sweep of K on the synthetic federated task: loss after R rounds against uplink bytes,
beside FedAvg and the zeroth-order baseline, all in one run. Appends to
benchmarks/results/fl_k_sweep.csv.

    python benchmarks/sweep_k.py [--rounds 8] [--Ks 1,4,16,64,256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ferret_kernels.fl import FerretConfig, ServerConfig  # noqa: E402
from ferret_kernels.fl.harness.loop import LoopConfig, run  # noqa: E402
from ferret_kernels.fl.harness.tasks import BlobTask, mlp  # noqa: E402

import common  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--Ks", default="1,4,16,64,256")
    ap.add_argument("--block-size", type=int, default=32768)
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    task = BlobTask()
    start = task.evaluate(mlp())["loss"]
    rows = []
    # Ferret's reconstruction noise grows like block_size / K, so each K gets the best server
    # learning rate of a small grid (the zeroth-order baseline likewise gets its best local lr)
    runs = [("fedavg", None, "shared", [1.0])]
    runs += [("zo", None, "shared", [1e-4, 1e-3, 1e-2])]
    runs += [("ferret", int(k), s, [1.0, 0.3, 0.1, 0.03]) for k in args.Ks.split(",") for s in ("shared", "per_client")]
    for method, K, scheme, lrs in runs:
        best = None
        for lr in lrs:
            model = mlp()
            fc = FerretConfig(num_bases=K or 64, block_size=args.block_size, full_threshold=1000)
            cfg = LoopConfig(
                method=method,
                rounds=args.rounds,
                clients_per_round=4,
                local_steps=10,
                local_lr=0.05,
                zo_lr=lr if method == "zo" else 1e-4,
                ferret=fc,
                server=ServerConfig(seed_scheme=scheme, lr=1.0 if method == "zo" else lr),
                progress=False,
            )
            t = time.perf_counter()
            rec = run(task, model, cfg)[-1]
            row = dict(
                method=method,
                K=K or "",
                seed_scheme=scheme if method == "ferret" else "",
                rounds=args.rounds,
                lr=lr,
                initial_loss=start,
                final_loss=rec["loss"],
                accuracy=rec["metric"],
                bytes_up_per_client=rec["bytes_up_per_client"],
                bytes_down_per_client=rec["bytes_down_per_client"],
                seconds=time.perf_counter() - t,
            )
            if best is None or not (row["final_loss"] >= best["final_loss"]):  # NaN never wins
                best = row if row["final_loss"] == row["final_loss"] or best is None else best
        rows.append(best)
    fedavg_up = rows[0]["bytes_up_per_client"]
    for r in rows:
        r["up_ratio_vs_fedavg"] = fedavg_up / r["bytes_up_per_client"]
    common.print_table(
        rows,
        [
            "method",
            "K",
            "seed_scheme",
            "lr",
            "final_loss",
            "accuracy",
            "bytes_up_per_client",
            "up_ratio_vs_fedavg",
            "bytes_down_per_client",
            "seconds",
        ],
    )
    if not args.no_csv:
        info = common.machine_info()
        path = common.append_csv("fl_k_sweep.csv", [dict(info, **r) for r in rows])
        print(f"appended {len(rows)} rows to {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
