"""The demo's report: a table on the terminal, CSV (per round) and JSON (summary), a PNG plot."""

from __future__ import annotations

import csv
import json
import math
import os


def summarize(runs: dict, fedavg_key: str = "fedavg") -> list[dict]:
    """One row per method: final metric, rounds, bytes, compression vs FedAvg, time per phase."""
    rows = []
    base = runs.get(fedavg_key)
    base_up = base[-1]["bytes_up_per_client"] if base else float("nan")
    for name, recs in runs.items():
        rows.append(dict(
            method=name, rounds=len(recs), final_metric=recs[-1]["metric"], final_loss=recs[-1]["loss"],
            best_metric=max(r["metric"] for r in recs if r["metric"] == r["metric"]) if any(r["metric"] == r["metric"] for r in recs) else float("nan"),
            bytes_up_per_client_round=recs[-1]["bytes_up_per_client"], bytes_down_per_client_round=recs[-1]["bytes_down_per_client"],
            bytes_up_total=sum(r["bytes_up_per_client"] * r["clients"] for r in recs),
            bytes_down_total=sum(r["bytes_down_per_client"] * r["clients"] for r in recs),
            compression_vs_fedavg=base_up / recs[-1]["bytes_up_per_client"] if base else float("nan"),
            t_local=sum(r["t_local"] for r in recs), t_project=sum(r["t_project"] for r in recs),
            t_aggregate=sum(r["t_aggregate"] for r in recs), t_eval=sum(r["t_eval"] for r in recs),
        ))
    return rows


def _fmt(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.3e}"
    return str(v)


def table(rows: list[dict], cols: list[str]) -> str:
    cells = [[_fmt(r[c]) for c in cols] for r in rows]
    w = [max(len(c), *(len(x[i]) for x in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(wi) for c, wi in zip(cols, w))]
    lines += ["  ".join(v.rjust(wi) for v, wi in zip(x, w)) for x in cells]
    return "\n".join(lines)


def write(out_dir: str, runs: dict, summary: list[dict], config: dict, metric_name: str) -> list[str]:
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    p = os.path.join(out_dir, "rounds.csv")
    with open(p, "w", newline="") as f:
        fields = ["method"] + [k for k in next(iter(runs.values()))[0].keys() if k != "method"]
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for name, recs in runs.items():
            for r in recs:
                w.writerow(dict(r, method=name))
    paths.append(p)
    p = os.path.join(out_dir, "summary.csv")
    with open(p, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(summary[0].keys()))
        w.writeheader()
        w.writerows(summary)
    paths.append(p)
    p = os.path.join(out_dir, "report.json")
    with open(p, "w") as f:
        json.dump({"metric": metric_name, "config": config, "summary": summary, "rounds": runs}, f, indent=1, default=str)
    paths.append(p)
    paths.append(plot(os.path.join(out_dir, "report.png"), runs, metric_name))
    return paths


def plot(path: str, runs: dict, metric_name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for name, recs in runs.items():
        xs = [r["round"] for r in recs]
        ys = [r["metric"] for r in recs]
        cum, tot = [], 0.0
        for r in recs:
            tot += (r["bytes_up_per_client"] + r["bytes_down_per_client"]) * r["clients"]
            cum.append(tot)
        a.plot(xs, ys, marker="o", label=name)
        b.plot(cum, ys, marker="o", label=name)
    a.set_xlabel("round")
    a.set_ylabel(metric_name)
    a.set_title(f"{metric_name} vs rounds")
    b.set_xscale("log")
    b.set_xlabel("cumulative bytes communicated (up + down, all clients)")
    b.set_ylabel(metric_name)
    b.set_title(f"{metric_name} vs communication")
    for ax in (a, b):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
