"""Ferret on a real local Flower deployment (SuperLink + N SuperNodes on 127.0.0.1): bytes the
strategy received and sent per client per round against the model's bf16 size, round times,
and central held-out accuracy. Appends a row per round to benchmarks/results/flower_deploy.csv.

    python benchmarks/flower_deploy.py [--model minilm] [--rounds 2] [--nodes 2] [--K 32]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ferret_kernels.fl.harness.flower_local import LocalDeployment  # noqa: E402

import common  # noqa: E402

APP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "python", "ferret_flower")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minilm", choices=["minilm", "tiny"])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--nodes", type=int, default=2)
    ap.add_argument("--K", type=int, default=32)
    ap.add_argument("--block-size", type=int, default=65536)
    ap.add_argument("--wire-dtype", default="bfloat16")
    ap.add_argument("--local-steps", type=int, default=2)
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args(argv)
    work = tempfile.mkdtemp(prefix="ferret_flower_bench_")
    out = os.path.join(work, "out")
    cfg = (
        f"model='{a.model}' num-server-rounds={a.rounds} num-bases={a.K} block-size={a.block_size} "
        f"wire-dtype='{a.wire_dtype}' local-steps={a.local_steps} min-nodes={a.nodes} out-dir='{out}'"
    )
    t0 = time.perf_counter()
    with LocalDeployment(work, a.nodes) as d:
        r = d.run(APP, cfg, timeout=3600)
        if r.returncode:
            sys.exit(f"flwr run failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}\n{d.logs()}")
    wall = time.perf_counter() - t0
    rep = json.load(open(os.path.join(out, "rounds.json")))
    bf16 = rep["model_bytes_bf16"]
    rows = []
    for rd in rep["rounds"]:
        recv = list(rd["received_bytes"].values())
        sent = list(rd["sent_bytes"].values())
        ev = rep["central_eval"].get(str(rd["round"]), {})
        rows.append(
            dict(
                common.machine_info(),
                model=a.model,
                nodes=a.nodes,
                K=a.K,
                block_size=a.block_size,
                wire_dtype=a.wire_dtype,
                round=rd["round"],
                model_bytes_bf16=bf16,
                received_per_client=max(recv),
                received_fraction_of_bf16=max(recv) / bf16,
                sent_per_client=max(sent),
                full_model_sent=len(rd["full_model_sent"]),
                rejected=len(rd["rejected"]),
                accuracy=ev.get("accuracy", float("nan")),
                run_wall_s=wall,
            )
        )
    common.print_table(
        rows,
        [
            "round",
            "model_bytes_bf16",
            "received_per_client",
            "received_fraction_of_bf16",
            "sent_per_client",
            "full_model_sent",
            "rejected",
            "accuracy",
            "run_wall_s",
        ],
    )
    if not a.no_csv:
        print("appended to", common.append_csv("flower_deploy.csv", rows))


if __name__ == "__main__":
    main()
