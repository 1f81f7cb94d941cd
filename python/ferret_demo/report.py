"""The demo's report: a table on the terminal, CSV (per round) and JSON (summary), a PNG plot."""

from __future__ import annotations

import csv
import json
import math
import os


def summarize(runs: dict, finals: dict | None = None, fedavg_key: str = "fedavg") -> list[dict]:
    """One row per method: the final metric on the whole held-out set (finals; the last round's
    subset metric when finals lack the method), rounds, bytes, compression vs FedAvg, time per phase."""
    finals = finals or {}
    rows = []
    base = runs.get(fedavg_key)
    base_up = base[-1]["bytes_up_per_client"] if base else float("nan")
    for name, recs in runs.items():
        fin = finals.get(name, {})
        rows.append(
            dict(
                method=name,
                rounds=len(recs),
                final_metric=fin.get("metric", recs[-1]["metric"]),
                final_loss=fin.get("loss", recs[-1]["loss"]),
                last_round_metric=recs[-1]["metric"],
                bytes_up_per_client_round=recs[-1]["bytes_up_per_client"],
                bytes_down_per_client_round=recs[-1]["bytes_down_per_client"],
                bytes_up_total=sum(r["bytes_up_per_client"] * r["clients"] for r in recs),
                bytes_down_total=sum(r["bytes_down_per_client"] * r["clients"] for r in recs),
                compression_vs_fedavg=base_up / recs[-1]["bytes_up_per_client"] if base else float("nan"),
                t_local=sum(r["t_local"] for r in recs),
                t_project=sum(r["t_project"] for r in recs),
                t_aggregate=sum(r["t_aggregate"] for r in recs),
                t_eval=sum(r["t_eval"] for r in recs) + fin.get("t_eval_full", 0.0),
                wall=fin.get("wall", float("nan")),
                epsilon=recs[-1].get("epsilon", float("nan")),  # client-level DP (nan: not private)
            )
        )
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
        # every run's keys in first-seen order: private Ferret runs add `epsilon`, FedAvg's lack it
        fields = ["method"] + list(dict.fromkeys(k for recs in runs.values() for k in recs[0] if k != "method"))
        w = csv.DictWriter(f, fieldnames=fields, restval="")
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
        json.dump(
            {"metric": metric_name, "config": config, "summary": summary, "rounds": runs}, f, indent=1, default=str
        )
    paths.append(p)
    paths.append(plot(os.path.join(out_dir, "report.png"), runs, summary, metric_name, config))
    return paths


def _label(name: str, row: dict) -> str:
    if name.startswith("ferret") and row["compression_vs_fedavg"] == row["compression_vs_fedavg"]:
        return f"{name} ({row['compression_vs_fedavg']:.0f}x)"
    return name


def plot(path: str, runs: dict, summary: list[dict], metric_name: str, config: dict | None = None) -> str:
    """Three panels: the metric against rounds (each round on the held-out subset, the end on all
    of it), against cumulative bytes, and the final metric against the upload per client per round
    (the compression trade-off, FedAvg and zero-order as anchors)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    config = config or {}
    negate = metric_name.startswith("held-out perplexity")
    sign = -1.0 if negate else 1.0
    shown = "held-out perplexity" if negate else metric_name
    rows = {r["method"]: r for r in summary}
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(16, 4.6))
    colors = {}
    for name, recs in runs.items():
        row = rows[name]
        xs = [r["round"] for r in recs]
        ys = [sign * r["metric"] for r in recs]
        cum, tot = [], 0.0
        for r in recs:
            tot += (r["bytes_up_per_client"] + r["bytes_down_per_client"]) * r["clients"]
            cum.append(tot)
        (line,) = a.plot(xs, ys, marker=".", label=_label(name, row))
        colors[name] = line.get_color()
        a.plot([xs[-1]], [sign * row["final_metric"]], marker="*", ms=12, color=line.get_color(), ls="none")
        b.plot(cum, ys, marker=".", color=line.get_color(), label=name)
    sub, full = config.get("eval_examples_per_round"), config.get("eval_examples_final")
    a.set_xlabel("round")
    a.set_ylabel(shown)
    a.set_title(
        f"{shown} vs rounds" + (f"\n(dots: {sub} held-out examples; stars: all {full})" if sub and full else "")
    )
    b.set_xscale("log")
    b.set_xlabel("cumulative bytes communicated (up + down, all clients)")
    b.set_ylabel(shown)
    b.set_title(f"{shown} vs communication")
    pts = sorted(((r["bytes_up_per_client_round"], sign * r["final_metric"], n) for n, r in rows.items()))
    ferret = [(x, y) for x, y, n in pts if n.startswith("ferret")]
    if len(ferret) > 1:
        c.plot([x for x, _ in ferret], [y for _, y in ferret], color="0.6", lw=1, zorder=1)
    for i, (x, y, n) in enumerate(pts):
        c.scatter([x], [y], s=60, color=colors[n], zorder=2)
        short = n.replace("ferret ", "")
        c.annotate(short, (x, y), textcoords="offset points", xytext=(-10, 9 if i % 2 else -15), fontsize=8)
    if config.get("chance") and not negate:
        c.axhline(config["chance"], color="0.5", ls=":", lw=1)
        c.annotate(
            "chance", (pts[0][0], config["chance"]), textcoords="offset points", xytext=(0, 3), fontsize=8, color="0.4"
        )
    c.set_xscale("log")
    c.set_xlabel("upload per client per round (bytes)")
    c.set_ylabel(f"final {shown}")
    c.set_title("final quality vs upload bytes")
    for ax in (a, b, c):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


RECORD_FIELDS = [
    "date",
    "cpu",
    "threads",
    "torch",
    "device",
    "preset_model",
    "data",
    "task",
    "clients",
    "clients_per_round",
    "rounds",
    "local_steps",
    "local_lr",
    "method",
    "final_metric",
    "final_loss",
    "metric",
    "bytes_up_per_client_round",
    "compression_vs_fedavg",
    "t_local",
    "t_project",
    "t_aggregate",
    "t_eval",
    "wall",
    "total_seconds",
    "command",
]


def record(report_json: str, csv_path: str, command: str = "") -> int:
    """Appends one row per method of a finished run (its report.json) to a results CSV, with the
    machine: how benchmarks/results/demo_runs.csv is written."""
    import datetime
    import platform

    with open(report_json) as f:
        rep = json.load(f)
    cfg = rep["config"]
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    date = datetime.datetime.fromtimestamp(os.path.getmtime(report_json), datetime.timezone.utc).isoformat(
        timespec="seconds"
    )
    rows = [
        dict(
            date=date,
            cpu=cpu,
            threads=cfg.get("threads"),
            torch=cfg.get("torch"),
            device=cfg.get("device"),
            preset_model=cfg.get("model"),
            data=cfg.get("data"),
            task=cfg.get("task"),
            clients=cfg.get("clients"),
            clients_per_round=cfg.get("clients_per_round"),
            rounds=cfg.get("rounds"),
            local_steps=cfg.get("local_steps"),
            local_lr=cfg.get("local_lr"),
            metric=rep["metric"],
            total_seconds=cfg.get("total_seconds"),
            command=command,
            **{
                k: s.get(k)
                for k in (
                    "method",
                    "final_metric",
                    "final_loss",
                    "bytes_up_per_client_round",
                    "compression_vs_fedavg",
                    "t_local",
                    "t_project",
                    "t_aggregate",
                    "t_eval",
                    "wall",
                )
            },
        )
        for s in rep["summary"]
    ]
    new = not os.path.exists(csv_path)
    with open(csv_path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
        if new:
            w.writeheader()
        w.writerows(rows)
    return len(rows)


def replot(report_json: str, png: str) -> str:
    """Redraws a finished run's figure from its report.json (how docs/demo_report.png is made)."""
    with open(report_json) as f:
        rep = json.load(f)
    return plot(png, rep["rounds"], rep["summary"], rep["metric"], rep["config"])


if __name__ == "__main__":
    # python -m ferret_demo.report record OUT/report.json RESULTS.csv ["command that made it"]
    # python -m ferret_demo.report plot OUT/report.json FIGURE.png
    import sys

    if len(sys.argv) >= 4 and sys.argv[1] == "record":
        n = record(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else "")
        print(f"appended {n} rows to {sys.argv[3]}")
    elif len(sys.argv) == 4 and sys.argv[1] == "plot":
        print(replot(sys.argv[2], sys.argv[3]))
    else:
        raise SystemExit(
            "usage: python -m ferret_demo.report record REPORT.json RESULTS.csv [COMMAND] | plot REPORT.json FIGURE.png"
        )
