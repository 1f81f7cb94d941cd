"""ferret-demo: Ferret vs FedAvg vs zeroth-order on the same clients, split, rounds and seeds.

Default (the main job): all-MiniLM-L6-v2 (22.6M parameters, every one trained) classifies BBC
News articles by topic (5 topics, from the headline and first sentences), 16 clients split
non-IID (Dirichlet 0.5 over topics); FedAvg, Ferret over a sweep of K (bases per block) and the
zeroth-order baseline. `--preset llm` fine-tunes Gemma 3 270M to write an article's headline
(clients = topic desks, metric = Rouge-L of generated headlines). `--preset tiny` is a
seconds-long smoke run. `--data tweets` switches to the health-news tweets (16 outlets).

Privacy and robustness (Ferret runs only; docs/privacy.md): `--dp-clip C --dp-noise SIGMA` turns
on client-level DP (each update clipped to C in coefficient space, N(0, (SIGMA C)^2) on the sum,
fixed denominator clients-per-round; needs uniform K, so `--no-adaptive` with the main job) and
adds an epsilon column (at `--dp-delta`); `--aggregator median|trimmed_mean|krum|multi_krum`
picks a robust rule; `--attack sign_flip|scale|random --attack-clients 0,1 --attack-scale S`
makes those clients send a hostile update instead of their own.

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
from ferret_kernels.fl.codec import fedavg_bytes
from ferret_kernels.fl.harness.loop import LoopConfig, run
from ferret_kernels.fl.layout import ParamLayout

from . import assets, report

PRESETS = {
    # The README's main job. Every tensor is projected (full_threshold=0) with the paper's adaptive
    # K (k_b proportional to ||delta_b||, the same total); with blocks of 65,536 each K uploads
    # about 4 K x 427 bytes: K = 512 is 1/103 of FedAvg's bytes, 128 1/410, 32 1/1623, 8 1/6178.
    # The default K = 32 is the knee of the sweep (docs/demo.md): within a point of FedAvg, K = 8 is not.
    "minilm": dict(
        model="minilm",
        data="bbc",
        task="classify",
        clients=16,
        clients_per_round=4,
        rounds=10,
        local_steps=4,
        batch_size=16,
        local_lr=1e-4,
        optimizer="adamw",
        K=32,
        block_size=65536,
        adaptive=True,
        compare_K=[128, 8],  # --compare-K 512,128,8 adds the 103x point (356 s more on 2 cores)
        max_per_label=None,
        eval_size=800,
        eval_subsample=64,
        max_len=48,
        server_lr=1.0,
        zo_lr=2e-5,
        zo_eps=1e-3,
        methods=["fedavg", "ferret", "zo"],
        full_threshold=0,
        wire_dtype="float32",
    ),
    # smoke runs and the tests: a 2-layer BERT from a config (0.2M parameters), one thread
    "tiny": dict(
        model="tiny",
        data="bbc",
        task="classify",
        clients=4,
        clients_per_round=4,
        rounds=5,
        local_steps=6,
        batch_size=16,
        local_lr=2e-3,
        optimizer="adamw",
        K=8,
        block_size=4096,
        compare_K=[],
        max_per_label=80,
        eval_size=100,
        eval_subsample=50,
        max_len=32,
        server_lr=1.0,
        zo_lr=1e-4,
        zo_eps=1e-3,
        alpha=5.0,
        methods=["fedavg", "ferret", "zo"],
        full_threshold=2048,
        wire_dtype="float32",
        threads=1,
    ),
    # Gemma 3 270M writes BBC headlines (instruction-style, Rouge-L, as the paper's Natural
    # Instructions / Dolly tasks); clients are the 5 topic desks.
    "llm": dict(
        model="gemma",
        data="bbc",
        task="headline",
        split="label",
        clients=5,
        clients_per_round=2,
        rounds=5,
        local_steps=2,
        batch_size=4,
        local_lr=2e-5,
        optimizer="adamw",
        K=64,
        block_size=1 << 16,
        compare_K=[],
        max_per_label=None,
        eval_size=32,
        eval_subsample=8,
        max_len=64,
        server_lr=1.0,
        zo_lr=1e-6,
        zo_eps=1e-3,
        methods=["fedavg", "ferret", "zo"],
        full_threshold=0,
        wire_dtype="bfloat16",
    ),
}


def build_parser():
    p = argparse.ArgumentParser(
        prog="ferret-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
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
    p.add_argument(
        "--compare-K", type=lambda s: [int(x) for x in s.split(",") if x], help="extra Ferret runs with these K"
    )
    p.add_argument("--block-size", type=int)
    p.add_argument("--dist", choices=["rademacher", "uniform", "gaussian"])
    p.add_argument(
        "--adaptive",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="K per block proportional to ||delta_b|| (the same total; the main job's default)",
    )
    p.add_argument(
        "--pack",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="blocks of one virtual vector of all tensors (blocks cross tensor edges; fewer blocks)",
    )
    p.add_argument("--seed-scheme", choices=["shared", "per_client"])
    p.add_argument("--server-lr", type=float)
    p.add_argument("--server-schedule", choices=["constant", "cosine", "linear", "step"])
    p.add_argument("--server-momentum", type=float)
    p.add_argument("--full-threshold", type=int, help="tensors with fewer elements travel in full")
    p.add_argument("--wire-dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--zo-lr", type=float)
    p.add_argument("--zo-eps", type=float)
    p.add_argument("--zo-candidates", type=int)
    p.add_argument("--data", choices=["bbc", "tweets"], help="bbc: news articles, 5 topics; tweets: 16 outlets")
    p.add_argument(
        "--task",
        choices=["classify", "lm", "headline"],
        help="classify the label; lm: causal LM of the texts (perplexity); headline: write a BBC headline (Rouge-L)",
    )
    p.add_argument("--split", choices=["dirichlet", "label", "outlet"], help="label (or outlet): one client per label")
    p.add_argument("--alpha", type=float, help="Dirichlet concentration (smaller = more non-IID)")
    p.add_argument(
        "--max-per-label",
        "--max-per-outlet",
        dest="max_per_label",
        type=int,
        help="examples kept per label (topic or outlet)",
    )
    p.add_argument("--eval-size", type=int, help="held-out examples (all evaluated at the end of each method's run)")
    p.add_argument("--eval-subsample", type=int, help="held-out examples evaluated after each round (a fixed subset)")
    p.add_argument("--max-len", type=int)
    p.add_argument("--device", default="auto", help="auto (cuda when torch sees a GPU, else cpu), cpu, cuda, cuda:N")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache-dir", default=os.path.join(os.path.expanduser("~"), ".cache", "ferret_kernels"))
    p.add_argument("--dp-clip", type=float, help="client-level DP: clip each update to this norm (Ferret runs)")
    p.add_argument(
        "--dp-noise", type=float, help="client-level DP: noise multiplier sigma (std sigma x clip on the sum)"
    )
    p.add_argument("--dp-delta", type=float, help="client-level DP: the delta epsilon is reported at (default 1e-5)")
    p.add_argument("--aggregator", choices=["mean", "median", "trimmed_mean", "krum", "multi_krum"])
    p.add_argument("--attack", choices=["none", "sign_flip", "scale", "random"], help="simulated hostile clients")
    p.add_argument(
        "--attack-clients", type=lambda s: [int(x) for x in s.split(",") if x], help="ids of the hostile clients"
    )
    p.add_argument("--attack-scale", type=float, help="hostile update = scale x the honest one (sign_flip: -scale)")
    p.add_argument("--no-progress", action="store_true")
    return p


DEFAULTS = dict(
    dist="rademacher",
    adaptive=False,
    pack=False,
    seed_scheme="shared",
    server_schedule="constant",
    server_momentum=0.0,
    zo_candidates=64,
    split="dirichlet",
    alpha=0.5,
    data="bbc",
    task="classify",
    eval_subsample=None,
    dp_clip=None,
    dp_noise=0.0,
    dp_delta=1e-5,
    aggregator="mean",
    attack="none",
    attack_clients=[0],
    attack_scale=1.0,
)


def resolve(args) -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(PRESETS[args.preset])
    if args.config:
        try:
            with open(args.config) as f:
                file_cfg = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise SystemExit(f"ferret-demo: cannot read --config {args.config}: {e}") from e
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
    if "max_per_outlet" in cfg:  # the key's name in configs written before --max-per-label
        cfg["max_per_label"] = cfg.pop("max_per_outlet")
    if cfg["task"] == "headline" and cfg["data"] != "bbc":
        raise SystemExit("ferret-demo: --task headline needs --data bbc (the tweets have no headlines)")
    if (
        cfg["task"] in ("lm", "headline")
        and cfg["model"] != "gemma"
        or cfg["task"] == "classify"
        and cfg["model"] == "gemma"
    ):
        raise SystemExit(
            f"ferret-demo: --task {cfg['task']} does not fit the {cfg['model']} model (--preset llm for the LLM tasks)"
        )
    for k in (
        "clients",
        "clients_per_round",
        "rounds",
        "local_steps",
        "batch_size",
        "K",
        "block_size",
        "eval_size",
        "max_len",
    ):
        if cfg[k] <= 0:
            raise SystemExit(f"ferret-demo: --{k.replace('_', '-')} must be positive, got {cfg[k]}")
    if any(k <= 0 for k in cfg["compare_K"]) or (cfg.get("eval_subsample") or 1) <= 0:
        raise SystemExit("ferret-demo: --compare-K and --eval-subsample take positive numbers")
    if cfg["clients_per_round"] > cfg["clients"] and cfg["split"] == "dirichlet":
        raise SystemExit("ferret-demo: --clients-per-round cannot exceed --clients")
    if cfg["dp_noise"] and cfg["dp_clip"] is None:
        raise SystemExit("ferret-demo: --dp-noise needs --dp-clip (the noise is calibrated to the clip bound)")
    if cfg["dp_clip"] is not None:
        if not cfg["dp_clip"] > 0 or not cfg["dp_noise"] >= 0:
            raise SystemExit("ferret-demo: --dp-clip must be positive and --dp-noise non-negative")
        if cfg["adaptive"]:
            raise SystemExit(
                "ferret-demo: --dp-clip needs a uniform K (adaptive K leaks block norms): add --no-adaptive"
            )
        if cfg["aggregator"] != "mean":
            raise SystemExit("ferret-demo: --dp-clip works with --aggregator mean only")
    return cfg


def build(cfg):
    from .data import HeadlineTask, LMTask, TextTask, load_bbc, load_tweets

    dtype = getattr(torch, cfg["dtype"])
    if cfg["data"] == "bbc":
        corpus = load_bbc(assets.bbcnews_dir(), cfg["max_per_label"], cfg["seed"])
    else:
        corpus = load_tweets(assets.healthtweets_zip(), cfg["max_per_label"], cfg["seed"])
    n = len(corpus.names)
    if cfg["model"] == "minilm":
        from .models import minilm_classifier

        model, tok = minilm_classifier(n, dtype)
    elif cfg["model"] == "tiny":
        from .models import tiny_classifier

        model, tok = tiny_classifier(n, dtype)
    else:
        from .models import gemma_lm

        model, tok = gemma_lm(cfg["cache_dir"], dtype)
    cls = {"classify": TextTask, "lm": LMTask, "headline": HeadlineTask}[cfg["task"]]
    split = "label" if cfg["task"] == "lm" else cfg["split"]
    if cfg["eval_size"] >= len(corpus.texts):
        raise SystemExit(
            f"ferret-demo: --eval-size {cfg['eval_size']} leaves no training data ({len(corpus.texts)} examples)"
        )
    task = cls(
        corpus,
        tok,
        num_clients=cfg["clients"],
        split=split,
        alpha=cfg["alpha"],
        eval_size=cfg["eval_size"],
        max_len=cfg["max_len"],
        seed=cfg["seed"],
        device=cfg["device"],
        eval_subsample=cfg.get("eval_subsample"),
    )
    return model.to(cfg["device"]), task, corpus.names


def loop_config(cfg, method, K):
    fc = FerretConfig(
        num_bases=K,
        block_size=cfg["block_size"],
        dist=cfg["dist"],
        adaptive=cfg["adaptive"],
        pack=cfg["pack"],
        full_threshold=cfg["full_threshold"],
        wire_dtype=cfg["wire_dtype"],
    )
    sc = ServerConfig(
        lr=cfg["server_lr"] if method != "zo" else 1.0,
        schedule=cfg["server_schedule"],
        rounds=cfg["rounds"],
        momentum=cfg["server_momentum"] if method == "ferret" else 0.0,
        seed_scheme=cfg["seed_scheme"],
        base_seed=cfg["seed"],
        **(
            dict(
                aggregator=cfg["aggregator"],
                dp_clip=cfg["dp_clip"],
                dp_noise_multiplier=cfg["dp_noise"] if cfg["dp_clip"] is not None else 0.0,
                dp_expected_clients=cfg["clients_per_round"] if cfg["dp_clip"] is not None else None,
                dp_delta=cfg["dp_delta"],
            )
            if method == "ferret"
            else {}
        ),
    )
    return LoopConfig(
        method=method,
        rounds=cfg["rounds"],
        clients_per_round=cfg["clients_per_round"],
        local_steps=cfg["local_steps"],
        batch_size=cfg["batch_size"],
        local_lr=cfg["local_lr"],
        optimizer=cfg["optimizer"],
        seed=cfg["seed"],
        zo_candidates=cfg["zo_candidates"],
        zo_eps=cfg["zo_eps"],
        zo_lr=cfg["zo_lr"],
        progress=not cfg.get("no_progress", False),
        ferret=fc,
        server=sc,
        **(
            dict(attack=cfg["attack"], attack_clients=tuple(cfg["attack_clients"]), attack_scale=cfg["attack_scale"])
            if method == "ferret"
            else {}
        ),
    )


def _plan(cfg):
    """(name, method, K): FedAvg, then Ferret from the most to the fewest bases, then zeroth-order."""
    plan = []
    for m in ("fedavg", "ferret", "zo"):
        if m not in cfg["methods"]:
            continue
        if m == "ferret":
            ks = sorted({cfg["K"], *cfg["compare_K"]}, reverse=True)
            plan += [(f"ferret K={k}", m, k) for k in ks]
        else:
            plan.append((m, m, cfg["K"]))
    return plan


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve(args)
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    if cfg["device"] == "auto":
        cfg["device"] = "cuda" if torch.cuda.is_available() else "cpu"
    if cfg["device"].startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("ferret-demo: --device cuda but torch sees no GPU")
    t0 = time.perf_counter()
    try:
        model0, task, labels = build(cfg)
    except assets.MissingAsset as e:
        raise SystemExit(f"ferret-demo: {e}") from e
    n_params = sum(p.numel() for p in model0.parameters() if p.requires_grad)
    n_sub, n_full = task.eval_sizes()
    lm = cfg["task"] in ("lm", "headline")
    print(
        f"ferret-demo: {cfg['model']} ({n_params / 1e6:.1f}M trained parameters) on {cfg['device']}, {cfg['data']} "
        f"({len(labels)} labels), task {cfg['task']}; {task.num_clients()} clients (mean share of a client's top label "
        f"{task.skew():.2f}), {cfg['clients_per_round']} per round, {cfg['rounds']} rounds of {cfg['local_steps']} local "
        f"steps; {n_sub} held-out examples per round, {n_full} at the end; FedAvg uploads "
        f"{fedavg_bytes(ParamLayout.from_module(model0, cfg['block_size'])) / 1e6:.1f} MB per client per round",
        flush=True,
    )
    metric_name = {
        "classify": "held-out accuracy",
        "lm": "held-out perplexity (negated)",
        "headline": "held-out Rouge-L",
    }[cfg["task"]]
    start = None
    if cfg["task"] == "headline":  # where every method starts (the same model)
        te = time.perf_counter()
        model0.eval()
        start = task.evaluate(model0, full=True, return_text=True)
        start["t_eval"] = time.perf_counter() - te
        print(f"  start: Rouge-L {start['metric']:.4f}, headline perplexity {_ppl(start['loss']):.2f}", flush=True)
    runs, finals = {}, {}
    for name, method, K in _plan(cfg):
        model = copy.deepcopy(model0)  # same start, clients, split, rounds and seeds for every method
        t = time.perf_counter()
        runs[name] = run(task, model, loop_config(cfg, method, K))
        te = time.perf_counter()
        model.eval()
        kw = {"return_text": True} if cfg["task"] == "headline" else {}
        finals[name] = dict(task.evaluate(model, full=True, **kw))  # the whole held-out set, once, at the end
        finals[name].update(t_eval_full=time.perf_counter() - te, wall=time.perf_counter() - t)
        final = finals[name]["metric"]
        if cfg["task"] == "lm":
            shown = f"held-out perplexity {-final:.2f}"
        elif cfg["task"] == "headline":
            shown = f"Rouge-L {final:.4f}, headline perplexity {_ppl(finals[name]['loss']):.2f}"
        else:
            shown = f"{metric_name} {final:.4f}"
        print(f"  {name}: {cfg['rounds']} rounds in {finals[name]['wall']:.0f} s, final {shown}", flush=True)
        del model
    summary = report.summarize(runs, finals, "fedavg" if "fedavg" in runs else next(iter(runs)))
    cols = [
        "method",
        "rounds",
        "final_metric",
        "last_round_metric",
        "bytes_up_per_client_round",
        "bytes_down_per_client_round",
        "compression_vs_fedavg",
        "t_local",
        "t_project",
        "t_aggregate",
        "t_eval",
        "wall",
    ]
    if lm:
        for r in summary:
            r["final_perplexity"] = _ppl(r["final_loss"])
        cols.insert(2, "final_perplexity")
    if cfg["dp_clip"] is not None:  # Ferret runs carry epsilon; the others are not private
        cols.insert(2, "epsilon")
    print()
    print(report.table(summary, cols))
    extra = dict(
        trained_parameters=n_params,
        eval_examples_per_round=n_sub,
        eval_examples_final=n_full,
        labels=list(labels),
        client_top_label_share=task.skew(),
        total_seconds=time.perf_counter() - t0,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
    )
    if not lm:
        extra["chance"] = 1 / len(labels)
    if start is not None:
        extra["start"] = start
    if cfg["task"] == "headline":
        extra["examples"] = {k: v.get("examples") for k, v in finals.items()}
    paths = report.write(cfg["out"], runs, summary, dict(cfg, **extra), metric_name)
    print(f"\nwrote {', '.join(paths)} in {time.perf_counter() - t0:.0f} s")
    return 0


def _ppl(loss):
    import math

    return math.exp(min(loss, 50.0))


if __name__ == "__main__":
    sys.exit(main())
