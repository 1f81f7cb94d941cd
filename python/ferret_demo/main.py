"""ferret-demo: Ferret vs FedAvg vs zeroth-order on the same clients, split, rounds and seeds.

Default: all-MiniLM-L6-v2 (22.7M parameters, every one trained) classifies health-news
tweets by outlet (16 classes), 16 clients split non-IID (Dirichlet 0.5 over outlets).
`--preset llm` fine-tunes Gemma 3 270M as a causal LM on the tweets (clients = outlets,
metric = held-out perplexity). `--preset tiny` is a seconds-long smoke run.

Writes OUT/rounds.csv, OUT/summary.csv, OUT/report.json and OUT/report.png.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time

import torch

from ferret_kernels.fl import FerretConfig, ServerConfig
from ferret_kernels.fl.compress import fedavg_bytes
from ferret_kernels.fl.layout import ParamLayout
from ferret_kernels.fl.loop import LoopConfig, run

from . import assets, report

PRESETS = {
    # MiniLM on tweets: the README's main job (about 10 minutes on 2 cores). Every tensor is
    # projected (full_threshold=0): K=256 uploads 1/206 of FedAvg's bytes, K=32 1/1644.
    "minilm": dict(model="minilm", task="outlet", clients=16, clients_per_round=4, rounds=12, local_steps=4,
                   batch_size=16, local_lr=5e-5, optimizer="adamw", K=256, block_size=65536, compare_K=[32],
                   max_per_outlet=600, eval_size=800, max_len=48, server_lr=1.0, zo_lr=2e-5, zo_eps=1e-3,
                   methods=["fedavg", "ferret", "zo"], full_threshold=0, wire_dtype="float32"),
    "tiny": dict(model="tiny", task="outlet", clients=4, clients_per_round=2, rounds=2, local_steps=2, batch_size=8,
                 local_lr=1e-3, optimizer="adamw", K=8, block_size=4096, compare_K=[], max_per_outlet=12,
                 eval_size=32, max_len=24, server_lr=1.0, zo_lr=1e-4, zo_eps=1e-3, methods=["fedavg", "ferret", "zo"],
                 full_threshold=2048, wire_dtype="float32"),
    "llm": dict(model="gemma", task="lm", clients=16, clients_per_round=2, rounds=3, local_steps=2, batch_size=4,
                local_lr=2e-5, optimizer="adamw", K=64, block_size=1 << 16, compare_K=[], max_per_outlet=200,
                eval_size=64, max_len=48, server_lr=1.0, zo_lr=1e-6, zo_eps=1e-3, methods=["fedavg", "ferret", "zo"],
                full_threshold=0, wire_dtype="bfloat16"),
}


def build_parser():
    p = argparse.ArgumentParser(prog="ferret-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(PRESETS), default="minilm")
    p.add_argument("--config", help="JSON file with any of the options below (command-line flags win)")
    p.add_argument("--out", default="demo_out", help="report directory")
    p.add_argument("--methods", help="comma-separated: ferret, fedavg, zo")
    p.add_argument("--clients", type=int)
    p.add_argument("--clients-per-round", type=int, help="participation per round")
    p.add_argument("--rounds", type=int)
    p.add_argument("--local-steps", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--local-lr", type=float)
    p.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    p.add_argument("--K", type=int, help="bases per block (Ferret)")
    p.add_argument("--compare-K", type=lambda s: [int(x) for x in s.split(",") if x], help="extra Ferret runs with these K")
    p.add_argument("--block-size", type=int)
    p.add_argument("--dist", choices=["rademacher", "uniform", "gaussian"])
    p.add_argument("--adaptive", action="store_true", default=None, help="K per block proportional to ||delta_b||")
    p.add_argument("--seed-scheme", choices=["shared", "per_client"])
    p.add_argument("--server-lr", type=float)
    p.add_argument("--server-schedule", choices=["constant", "cosine", "linear", "step"])
    p.add_argument("--server-momentum", type=float)
    p.add_argument("--full-threshold", type=int, help="tensors with fewer elements travel in full")
    p.add_argument("--wire-dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--zo-lr", type=float)
    p.add_argument("--zo-eps", type=float)
    p.add_argument("--zo-candidates", type=int)
    p.add_argument("--split", choices=["dirichlet", "outlet"])
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (smaller = more non-IID)")
    p.add_argument("--max-per-outlet", type=int, help="tweets kept per outlet")
    p.add_argument("--eval-size", type=int)
    p.add_argument("--max-len", type=int)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "ferret_kernels"))
    p.add_argument("--no-progress", action="store_true")
    return p


DEFAULTS = dict(dist="rademacher", adaptive=False, seed_scheme="shared", server_schedule="constant", server_momentum=0.0,
                zo_candidates=64, split="dirichlet", alpha=0.5)


def resolve(args) -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS[args.preset])
    if args.config:
        try:
            with open(args.config) as f:
                file_cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"ferret-demo: cannot read --config {args.config}: {e}")
        unknown = set(file_cfg) - set(vars(args)) - set(cfg)
        if unknown:
            raise SystemExit(f"ferret-demo: unknown keys in {args.config}: {sorted(unknown)}")
        cfg.update(file_cfg)
    for k, v in vars(args).items():
        if v is not None and k not in ("preset", "config"):
            cfg[k] = v
    if isinstance(cfg["methods"], str):
        cfg["methods"] = [m.strip() for m in cfg["methods"].split(",") if m.strip()]
    bad = [m for m in cfg["methods"] if m not in ("ferret", "fedavg", "zo")]
    if bad or not cfg["methods"]:
        raise SystemExit(f"ferret-demo: --methods takes ferret, fedavg, zo (got {bad or 'nothing'})")
    for k in ("clients", "clients_per_round", "rounds", "local_steps", "batch_size", "K", "block_size", "eval_size", "max_len"):
        if cfg[k] <= 0:
            raise SystemExit(f"ferret-demo: --{k.replace('_', '-')} must be positive, got {cfg[k]}")
    if cfg["clients_per_round"] > cfg["clients"]:
        raise SystemExit("ferret-demo: --clients-per-round cannot exceed --clients")
    return cfg


def build(cfg):
    from .data import LMTask, TweetTask, load_tweets

    dtype = getattr(torch, cfg["dtype"])
    texts, labels, outlets = load_tweets(assets.healthtweets_zip(), cfg["max_per_outlet"], cfg["seed"])
    if cfg["model"] == "minilm":
        from .models import minilm_classifier

        model, tok = minilm_classifier(len(outlets), dtype)
    elif cfg["model"] == "tiny":
        from .models import tiny_classifier

        model, tok = tiny_classifier(len(outlets), dtype)
    else:
        from .models import gemma_lm

        model, tok = gemma_lm(cfg["cache_dir"], dtype)
    cls = LMTask if cfg["task"] == "lm" else TweetTask
    split = "outlet" if cfg["task"] == "lm" else cfg["split"]
    task = cls(texts, labels, tok, num_clients=cfg["clients"], split=split, alpha=cfg["alpha"], eval_size=cfg["eval_size"],
               max_len=cfg["max_len"], seed=cfg["seed"], device=cfg["device"])
    return model.to(cfg["device"]), task, outlets


def loop_config(cfg, method, K):
    fc = FerretConfig(num_bases=K, block_size=cfg["block_size"], dist=cfg["dist"], adaptive=cfg["adaptive"],
                      full_threshold=cfg["full_threshold"], wire_dtype=cfg["wire_dtype"])
    sc = ServerConfig(lr=cfg["server_lr"] if method != "zo" else 1.0, schedule=cfg["server_schedule"], rounds=cfg["rounds"],
                      momentum=cfg["server_momentum"] if method == "ferret" else 0.0, seed_scheme=cfg["seed_scheme"],
                      base_seed=cfg["seed"])
    return LoopConfig(method=method, rounds=cfg["rounds"], clients_per_round=cfg["clients_per_round"],
                      local_steps=cfg["local_steps"], batch_size=cfg["batch_size"], local_lr=cfg["local_lr"],
                      optimizer=cfg["optimizer"], seed=cfg["seed"], zo_candidates=cfg["zo_candidates"], zo_eps=cfg["zo_eps"],
                      zo_lr=cfg["zo_lr"], progress=not cfg.get("no_progress", False), ferret=fc, server=sc)


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve(args)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("ferret-demo: --device cuda but torch sees no GPU")
    t0 = time.perf_counter()
    try:
        model0, task, outlets = build(cfg)
    except assets.MissingAsset as e:
        raise SystemExit(f"ferret-demo: {e}")
    n_params = sum(p.numel() for p in model0.parameters() if p.requires_grad)
    print(f"ferret-demo: {cfg['model']} ({n_params / 1e6:.1f}M trained parameters), {task.num_clients()} clients, "
          f"{cfg['clients_per_round']} per round, {cfg['rounds']} rounds, {len(outlets)} outlets; "
          f"FedAvg uploads {fedavg_bytes(ParamLayout.from_module(model0, cfg['block_size'])) / 1e6:.1f} MB per client per round")
    metric_name = "held-out perplexity (negated)" if cfg["task"] == "lm" else "held-out accuracy"
    runs = {}
    plan = []
    for m in cfg["methods"]:
        if m == "ferret":
            plan.append((f"ferret K={cfg['K']}", m, cfg["K"]))
            plan += [(f"ferret K={k}", m, k) for k in cfg["compare_K"]]
        else:
            plan.append((m, m, cfg["K"]))
    for name, method, K in plan:
        model = copy.deepcopy(model0)  # same start, clients, split, rounds and seeds for every method
        t = time.perf_counter()
        runs[name] = run(task, model, loop_config(cfg, method, K))
        final = runs[name][-1]["metric"]
        shown = f"held-out perplexity {-final:.2f}" if cfg["task"] == "lm" else f"{metric_name} {final:.4f}"
        print(f"  {name}: {cfg['rounds']} rounds in {time.perf_counter() - t:.0f} s, final {shown}")
        del model
    summary = report.summarize(runs, "fedavg" if "fedavg" in runs else next(iter(runs)))
    cols = ["method", "rounds", "final_metric", "best_metric", "bytes_up_per_client_round", "bytes_down_per_client_round",
            "bytes_up_total", "compression_vs_fedavg", "t_local", "t_project", "t_aggregate", "t_eval"]
    print()
    print(report.table(summary, cols))
    paths = report.write(cfg["out"], runs, summary, dict(cfg, trained_parameters=n_params), metric_name)
    print(f"\nwrote {', '.join(paths)} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
