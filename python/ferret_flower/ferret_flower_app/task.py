"""Model and data shared by the ServerApp and the ClientApp. Every process builds the same
split from the seed.

- model = "minilm" / "tiny": the demo's MiniLM or a tiny BERT classifying health tweets by
  outlet (needs ferret_demo's data and model packages).
- model = "mlp": ferret_kernels.fl.harness.tasks' 301k-parameter MLP on synthetic Gaussian blobs, no
  data files and no transformers import: the restart tests and the soak benchmark use it.

Local training is deterministic given (seed, partition, round): a restarted run retrains a
round bit for bit (dropout draws from torch's global generator, seeded here per round).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from ferret_kernels.fl.harness.loop import LoopConfig, local_train

MODELS = ("minilm", "tiny", "mlp")


def build_model(cfg):
    if cfg["model"] not in MODELS:
        raise ValueError(f"run config model must be one of {MODELS}, got {cfg['model']!r}")
    if cfg["model"] == "mlp":
        from ferret_kernels.fl.harness.tasks import mlp

        return mlp(int(cfg["seed"])), None
    from ferret_demo.models import minilm_classifier, tiny_classifier

    _, _, outlets = _tweets(int(cfg["max-per-outlet"]), int(cfg["seed"]))
    fn = minilm_classifier if cfg["model"] == "minilm" else tiny_classifier
    return fn(len(outlets))


@functools.lru_cache(maxsize=2)
def _tweets(max_per_outlet: int, seed: int):
    from ferret_demo import assets
    from ferret_demo.data import load_tweets

    return load_tweets(assets.healthtweets_zip(), max_per_outlet, seed)


def build_task(cfg, tokenizer, num_partitions: int):
    if cfg["model"] == "mlp":
        from ferret_kernels.fl.harness.tasks import BlobTask

        return BlobTask(n=4000, clients=num_partitions, seed=int(cfg["seed"]))
    from ferret_demo.data import TweetTask

    texts, labels, _ = _tweets(int(cfg["max-per-outlet"]), int(cfg["seed"]))
    return TweetTask(
        texts,
        labels,
        tokenizer,
        num_clients=num_partitions,
        split="dirichlet",
        alpha=float(cfg["alpha"]),
        eval_size=int(cfg["eval-size"]),
        max_len=int(cfg["max-len"]),
        seed=int(cfg["seed"]),
        device="cpu",
    )


def train(task, model, partition: int, cfg, round: int) -> dict:
    lc = LoopConfig(
        local_steps=int(cfg["local-steps"]),
        batch_size=int(cfg["batch-size"]),
        local_lr=float(cfg["local-lr"]),
        optimizer="adamw",
    )
    gen = np.random.default_rng([int(cfg["seed"]), partition, round])
    torch.manual_seed(int(gen.integers(2**62)))  # dropout: the same draws whenever this round is trained
    loss = local_train(task, model, partition, lc, gen)
    return {"train-loss": loss, "num-examples": float(task.client_size(partition))}


def evaluate(task, model) -> dict:
    model.eval()
    with torch.no_grad():
        r = task.evaluate(model)
    n = len(task.eval[2]) if hasattr(task, "eval") else len(task.yt)
    return {"accuracy": r["metric"], "loss": r["loss"], "num-examples": float(n)}
