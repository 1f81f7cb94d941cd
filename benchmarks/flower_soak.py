"""Soak test of Ferret on a real local Flower deployment (not part of CI): many rounds of the
app's tiny MLP on several SuperNodes while SuperNodes are SIGKILLed and restarted at random
and nodes send corrupt updates at random; the ServerApp's and the SuperLink's resident memory
and the checkpoint's size are sampled after every round. The claim it checks: after warm-up
the server's RSS and its disk use stay flat (bounded logs, bounded catch-up log, one
checkpoint file replaced in place).

    python benchmarks/flower_soak.py --rounds 300 --nodes 4 --kill-every 60 --down 20 --corrupt-rate 0.1
    python benchmarks/flower_soak.py --minutes 10          # stop (flwr stop) after 10 minutes

Rows (one per completed round: time, round, RSS of the ServerApp / SuperLink / SuperNodes in
MB, checkpoint file and directory bytes, out-dir bytes, kills so far, rejections and missing
nodes of the round) are appended to benchmarks/results/flower_soak.csv with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ferret_kernels.fl.checkpoint import checkpoint_path  # noqa: E402
from ferret_kernels.fl.harness.flower_local import LocalDeployment  # noqa: E402

import common  # noqa: E402

# the corrupt-update client mod lives with the tests, not in the example app
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from flower_faults import faulty_app  # noqa: E402


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def du(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


def rounds_done(out: str) -> list[dict]:
    try:
        with open(os.path.join(out, "rounds.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except (OSError, json.JSONDecodeError):
        return []


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=300)
    ap.add_argument("--minutes", type=float, default=0, help="stop after this long (0: when the rounds are done)")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--fraction", type=float, default=0.75, help="fraction of nodes sampled per round")
    ap.add_argument("--kill-every", type=float, default=60, help="mean seconds between SuperNode kills (0: none)")
    ap.add_argument("--down", type=float, default=20, help="seconds a killed SuperNode stays down")
    ap.add_argument(
        "--corrupt-rate", type=float, default=0.1, help="fraction of rounds in which a node corrupts its update"
    )
    ap.add_argument("--round-timeout", type=float, default=30)
    ap.add_argument("--K", type=int, default=16)
    ap.add_argument("--server-lr", type=float, default=0.1)
    ap.add_argument(
        "--catchup-bytes",
        type=int,
        default=65536,
        help="catch-up log budget (0: the model's size, 1.2 MB for the MLP: ~700 rounds before it is full)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir")
    ap.add_argument("--no-csv", action="store_true")
    a = ap.parse_args(argv)
    signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # also when started in the background (SIGINT ignored there)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # so the deployment is torn down either way
    rng = random.Random(a.seed)
    work = a.workdir or tempfile.mkdtemp(prefix="ferret_soak_")
    out, ck = os.path.join(work, "out"), os.path.join(work, "ckpt")
    nodes = [f"partition-id={i} num-partitions={a.nodes} corrupt-rate={a.corrupt_rate}" for i in range(a.nodes)]
    cfg = (
        f"model='mlp' num-server-rounds={a.rounds} num-bases={a.K} block-size=4096 local-steps=2 batch-size=16 "
        f"local-lr=0.01 fraction-train={a.fraction} min-nodes=2 round-timeout={a.round_timeout} seed={a.seed} "
        f"server-lr={a.server_lr} catchup-bytes={a.catchup_bytes} out-dir='{out}' save-updates=false checkpoint-dir='{ck}'"
    )
    rows, kills, down = [], 0, {}
    info = dict(
        common.machine_info(),
        nodes=a.nodes,
        fraction=a.fraction,
        kill_every_s=a.kill_every,
        down_s=a.down,
        corrupt_rate=a.corrupt_rate,
        K=a.K,
        round_timeout_s=a.round_timeout,
        catchup_bytes=a.catchup_bytes,
    )
    t0 = time.monotonic()
    next_kill = t0 + (rng.expovariate(1 / a.kill_every) if a.kill_every else float("inf"))
    with LocalDeployment(work, node_configs=nodes) as d:
        run = d.submit(faulty_app(os.path.join(work, "app")), cfg)
        seen = 0
        while run.proc.poll() is None:
            now = time.monotonic()
            if a.minutes and now - t0 > 60 * a.minutes:
                d.stop(run.run_id())
                run.wait(120)
                break
            for i, back in list(down.items()):
                if now >= back:
                    d.restart_node(i, nodes[i])
                    del down[i]
            if now >= next_kill:
                alive = [i for i in range(a.nodes) if i not in down]
                if len(alive) > 2:  # keep min-nodes alive
                    i = rng.choice(alive)
                    d.kill_node(i)
                    down[i], kills = now + a.down, kills + 1
                next_kill = now + rng.expovariate(1 / a.kill_every)
            done = rounds_done(out)
            for r in done[seen:]:
                srv = d.serverapp_pids()
                row = dict(
                    info,
                    t_s=round(time.monotonic() - t0, 1),
                    round=r["round"],
                    serverapp_rss_mb=round(sum(rss_mb(p) for p in srv), 1),
                    superlink_rss_mb=round(rss_mb(d.superlink.pid), 1),
                    supernodes_rss_mb=round(sum(rss_mb(p.pid) for p in d.nodes if p.poll() is None), 1),
                    checkpoint_bytes=os.path.getsize(checkpoint_path(ck)) if os.path.exists(checkpoint_path(ck)) else 0,
                    checkpoint_dir_bytes=du(ck),
                    out_dir_bytes=du(out),
                    kills=kills,
                    rejected=len(r["rejected"]),
                    missing=len(r["missing"]),
                    sampled=len(r["sampled"]),
                    full_model_sent=len(r["full_model_sent"]),
                )
                rows.append(row)
                print(
                    f"round {row['round']:4d}  t {row['t_s']:7.1f} s  ServerApp {row['serverapp_rss_mb']:6.1f} MB  "
                    f"SuperLink {row['superlink_rss_mb']:6.1f} MB  checkpoint {row['checkpoint_bytes']} B  "
                    f"dir {row['checkpoint_dir_bytes']} B  kills {kills}  rejected {row['rejected']}  missing {row['missing']}",
                    flush=True,
                )
            seen = len(done)
            time.sleep(1.0)
        if run.proc.returncode not in (0, None) and not a.minutes:
            print(run.output()[-3000:], d.logs(), sep="\n")
    if not rows:
        sys.exit("no round completed")
    warm = rows[min(len(rows) - 1, max(4, len(rows) // 10))]
    last = rows[-1]
    print(
        f"\n{len(rows)} rounds in {last['t_s']:.0f} s, {kills} SuperNode kills, "
        f"{sum(r['rejected'] for r in rows)} rejected updates, {sum(r['missing'] for r in rows)} missing replies"
    )
    for k in ("serverapp_rss_mb", "superlink_rss_mb", "checkpoint_bytes", "checkpoint_dir_bytes"):
        vals = [r[k] for r in rows[rows.index(warm) :]]
        print(
            f"{k:22s} after warm-up (round {warm['round']}) {warm[k]}, at the end {last[k]}, max {max(vals)}, min {min(vals)}"
        )
    if not a.no_csv:
        print("appended to", common.append_csv("flower_soak.csv", rows))


if __name__ == "__main__":
    main()
