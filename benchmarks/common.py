"""Shared pieces of the benchmarks: machine info, timing, the CSV writer, the table printer,
and the baselines (per-seed regeneration as the official Ferret code does it: torch.manual_seed +
trunc_normal_ per block and basis; naive dense: a torch.randn basis matrix, then a matmul)."""

from __future__ import annotations

import csv
import datetime as _dt
import math
import os
import platform
import statistics
import time

import torch

import ferret_kernels as fk

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info(device: str = "cpu") -> dict:
    info = {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "cpu": cpu_model(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "ferret_kernels": fk.__version__,
        "cpu_isa": fk.cpu_isa() if fk.native_load_error() is None else "none",
        "gpu": torch.cuda.get_device_name() if device == "cuda" and torch.cuda.is_available() else "",
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = ""
    return info


def bench(fn, *, repeat: int = 5, warmup: int = 1, min_time: float = 0.0) -> float:
    """Median wall time of fn() in seconds (CPU: perf_counter; CUDA callers synchronize in fn)."""
    for _ in range(warmup):
        fn()
    times = []
    t_start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - t_start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
        if len(times) >= 50:
            break
    return statistics.median(times)


def append_csv(name: str, rows: list[dict]) -> str:
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, name)
    fields = list(rows[0].keys())
    new = not os.path.exists(path)
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), None)
        if header != fields:  # schema changed: start a new file beside the old one
            base, ext = os.path.splitext(path)
            path = f"{base}.v{len(fields)}{ext}"
            new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerows(rows)
    return path


def print_table(rows: list[dict], cols: list[str]) -> None:
    def fmt(v):
        if isinstance(v, float):
            if v == 0 or math.isnan(v):
                return f"{v:g}"
            return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.3e}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(x[i]) for x in cells]) for i, c in enumerate(cols)]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)))


# --------------------------------------------------------------------------- baselines
def per_seed_project(
    x: torch.Tensor, seed: int, num_bases: int, block_size: int, blocks: int, bases: int
) -> torch.Tensor:
    """What the official Ferret code does, per block and basis: torch.manual_seed, trunc_normal_
    into a block-sized temporary, multiply and sum. Runs `blocks` x `bases` of the full work."""
    flat = x.reshape(-1)
    out = torch.zeros(blocks, bases)
    gen_state = torch.random.get_rng_state()
    for b in range(blocks):
        xb = flat[b * block_size : (b + 1) * block_size]
        d = xb.numel()
        for k in range(bases):
            torch.manual_seed(seed + b * num_bases + k)
            v = torch.empty(d, dtype=xb.dtype, device=xb.device)
            torch.nn.init.trunc_normal_(v, mean=0.0, std=1.0, a=-1 / math.sqrt(d), b=1 / math.sqrt(d))
            out[b, k] = (v * xb).sum()
    torch.random.set_rng_state(gen_state)
    return out


def per_seed_reconstruct(
    coeffs: torch.Tensor, seed: int, numel: int, block_size: int, blocks: int, bases: int, device="cpu"
) -> torch.Tensor:
    out = torch.zeros(blocks * block_size, device=device)
    num_bases = coeffs.shape[1]
    for b in range(blocks):
        ob = out[b * block_size : (b + 1) * block_size]
        d = ob.numel()
        for k in range(bases):
            torch.manual_seed(seed + b * num_bases + k)
            v = torch.empty(d, device=device)
            torch.nn.init.trunc_normal_(v, mean=0.0, std=1.0, a=-1 / math.sqrt(d), b=1 / math.sqrt(d))
            ob.add_(v, alpha=float(coeffs[b, k]))
    return out


def dense_project(x: torch.Tensor, num_bases: int, block_size: int, blocks: int, gen: torch.Generator) -> torch.Tensor:
    """Naive dense: materialize V for a block (torch.randn with a generator), then V @ x."""
    flat = x.reshape(-1)
    outs = []
    for b in range(blocks):
        xb = flat[b * block_size : (b + 1) * block_size]
        V = torch.randn(num_bases, xb.numel(), generator=gen, device=x.device, dtype=xb.dtype)
        outs.append(V @ xb)
    return torch.stack(outs)


def dense_reconstruct(coeffs: torch.Tensor, block_size: int, blocks: int, gen: torch.Generator) -> torch.Tensor:
    outs = []
    for b in range(blocks):
        V = torch.randn(coeffs.shape[1], block_size, generator=gen, device=coeffs.device)
        outs.append(coeffs[b] @ V)
    return torch.cat(outs)
