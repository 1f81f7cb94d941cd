"""Privacy and robustness on the demo's task at reduced scale (docs/privacy.md): accuracy of
Ferret with client-level DP at several epsilons, and of the mean against robust aggregators
with one hostile client of four. Every run shares the demo's tiny model, data, split and seeds;
rows go to benchmarks/results/privacy_dp.csv and privacy_robust.csv with the machine.

    python benchmarks/privacy_robust.py [--exp dp,robust] [--rounds 10] [--no-csv]

Both use the tiny preset's 0.2M-parameter BERT on all BBC training articles (the preset caps
them at 80 per topic; with that cap and K = 8 Ferret stayed near chance: 0.28 after 10 rounds,
FedAvg 0.72), K = 64 (Ferret 0.75 after 10 rounds with 4 clients) and 400 held-out articles.
dp: 16 clients, 8 per round (q = 1/2, sampled without replacement: replace-one accounting),
every tensor projected (full_threshold 0: 76 blocks x 64 = 4,864 released coordinates), clip
C = 1 (honest update norms measured 1.6-2.1 with K = 8: every update is clipped), noise
multipliers calibrated to epsilon 1, 3, 8 at delta 1e-5 over the run and smaller ones (0.1,
0.3, 1) to see where accuracy starts to drop; beside them clipping alone (sigma 0) and no DP.
FedAvg gets the same mechanism in parameter space through Flower's own wrapper
(`_fedavg_dp`: DifferentialPrivacyServerSideFixedClipping around FedAvg, each client's whole
update clipped to C, equal weights, noise std sigma C / m on all 206,853 parameters), with
the same sampling and so the same epsilon.
robust: 4 clients, all 4 per round, client 0 hostile: sign_flip or random at 3.5x its honest
update (under the default relative clip of 4x the round's median norm, so it is not clipped),
each aggregator, and the clean run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch  # noqa: E402

from ferret_demo import main as demo  # noqa: E402
from ferret_kernels.fl.harness.loop import run  # noqa: E402
from ferret_kernels.fl.privacy import epsilon, noise_multiplier_for  # noqa: E402

import common  # noqa: E402


def _cfg(rounds, **over):
    cfg = demo.resolve(demo.build_parser().parse_args(["--preset", "tiny"]))
    cfg.update(device="cpu", rounds=rounds, no_progress=True, max_per_label=None, K=64, eval_size=400)
    cfg.update(over)
    return cfg


def _run(cfg, model0, task, method, K, **server_over):
    lc = demo.loop_config(cfg, method, K)
    for k, v in server_over.items():
        setattr(lc.server, k, v)
    lc.server.__post_init__()  # the overrides are validated as a config would be
    model = copy.deepcopy(model0)
    t = time.perf_counter()
    recs = run(task, model, lc)
    model.eval()
    final = task.evaluate(model, full=True)
    return recs, final, time.perf_counter() - t


def _fedavg_dp(clip, sigma, m, seed):
    """The loop's FedAvg step through Flower's DifferentialPrivacyServerSideFixedClipping around
    FedAvg: each client's update clipped to `clip`, the mean (every client weight 1), noise of
    std sigma clip / m on every parameter (Flower draws it from numpy's global generator)."""
    import numpy as np
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping, FedAvg

    np.random.seed(seed)
    dp = DifferentialPrivacyServerSideFixedClipping(FedAvg(), sigma, clip, m)

    @torch.no_grad()
    def apply(model, deltas, lr):
        if lr != 1.0:
            raise ValueError("the Flower DP comparison applies the aggregate as the new model (server lr 1)")
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        dp.current_round_params = [p.detach().double().numpy() for _, p in params]
        results = [
            (
                None,
                FitRes(
                    Status(Code.OK, ""),
                    ndarrays_to_parameters([(p.double() - d[n].double()).numpy() for n, p in params]),
                    1,
                    {},
                ),
            )
            for _, d in deltas
        ]
        new, _ = dp.aggregate_fit(1, results, [])
        for (_, p), a in zip(params, parameters_to_ndarrays(new)):
            p.copy_(torch.as_tensor(a).to(p.dtype))

    return apply


def exp_dp(rounds, delta=1e-5, clip=1.0):
    cfg = _cfg(rounds, clients=16, clients_per_round=8, full_threshold=0)
    model0, task, _ = demo.build(cfg)
    N, m = task.num_clients(), cfg["clients_per_round"]
    rows = []
    from ferret_kernels.fl.harness import loop

    calibrated = {e: noise_multiplier_for(e, m / N, rounds, delta, sampling="fixed", population=N) for e in (8, 3, 1)}
    sigmas = [None, 0.0, 0.1, 0.3, 1.0, *calibrated.values()]
    plan = [(meth, s) for meth in ("fedavg", "ferret") for s in sigmas]
    plain = loop._fedavg_apply
    for method, sigma in plan:
        over = {}
        if sigma is not None and method == "ferret":
            over = dict(dp_clip=clip, dp_noise_multiplier=sigma, dp_expected_clients=m, dp_delta=delta, dp_seed=0)
        loop._fedavg_apply = plain if sigma is None else _fedavg_dp(clip, sigma, m, 0)
        try:
            recs, final, wall = _run(cfg, model0, task, method, cfg["K"], **over)
        finally:
            loop._fedavg_apply = plain
        eps = recs[-1].get("epsilon", float("nan"))
        if method == "fedavg" and sigma is not None:  # the same sampling and mechanism: the same epsilon
            eps = epsilon(sigma, m / N, rounds, delta, sampling="fixed", population=N) if sigma > 0 else float("inf")
        if sigma is not None and sigma > 0:
            assert eps == epsilon(sigma, m / N, rounds, delta, sampling="fixed", population=N)
        rows.append(
            dict(
                method=method,
                dp="none" if sigma is None else ("clip only" if sigma == 0 else f"sigma={sigma:.3f}"),
                clip=clip if sigma is not None else "",
                noise_multiplier=sigma if sigma is not None else "",
                epsilon=eps,
                delta=delta if sigma is not None else "",
                clients=N,
                clients_per_round=m,
                rounds=rounds,
                K=cfg["K"] if method == "ferret" else "",
                bytes_down_per_client=int(recs[-1]["bytes_down_per_client"]),
                accuracy=final["metric"],
                loss=final["loss"],
                seconds=wall,
            )
        )
        print(
            f"dp {rows[-1]['method']:7s} {rows[-1]['dp']:14s} eps {eps:8.3f} acc {final['metric']:.4f} ({wall:.0f} s)"
        )
    return rows


def exp_robust(rounds):
    cfg = _cfg(rounds)
    model0, task, _ = demo.build(cfg)
    rows = []
    plan = [(a, g) for a in ("none", "sign_flip", "random") for g in robust_aggs()]
    for attack, agg in plan:
        c = dict(cfg, attack=attack, attack_clients=[0], attack_scale=3.5, aggregator=agg)
        recs, final, wall = _run(c, model0, task, "ferret", cfg["K"])
        rows.append(
            dict(
                attack=attack,
                hostile_clients="0 of 4" if attack != "none" else "",
                attack_scale=3.5 if attack != "none" else "",
                aggregator=agg,
                rounds=rounds,
                K=cfg["K"],
                rejected=sum(r["rejected"] for r in recs),
                accuracy=final["metric"],
                loss=final["loss"],
                seconds=wall,
            )
        )
        print(f"robust {attack:9s} {agg:12s} acc {final['metric']:.4f} ({wall:.0f} s)")
    return rows


def robust_aggs():
    return ("mean", "median", "trimmed_mean", "krum", "multi_krum")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--exp", default="dp,robust")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--no-csv", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    info = common.machine_info()
    for exp in args.exp.split(","):
        rows = {"dp": exp_dp, "robust": exp_robust}[exp](args.rounds)
        if not args.no_csv:
            print(common.append_csv(f"privacy_{exp}.csv", [dict(info, **r) for r in rows]))


if __name__ == "__main__":
    main()
