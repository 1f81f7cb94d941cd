"""Model and data shared by the ServerApp and the ClientApp (the demo's MiniLM or tiny BERT
classifying health tweets by outlet). Every process builds the same split from the seed."""

from __future__ import annotations

import functools

import numpy as np
import torch

from ferret_demo import assets
from ferret_demo.data import TweetTask, load_tweets
from ferret_kernels.fl.loop import LoopConfig, local_train


def build_model(cfg):
    from ferret_demo.models import minilm_classifier, tiny_classifier

    if cfg["model"] not in ("minilm", "tiny"):
        raise ValueError(f"run config model must be minilm or tiny, got {cfg['model']!r}")
    _, _, outlets = _tweets(int(cfg["max-per-outlet"]), int(cfg["seed"]))
    fn = minilm_classifier if cfg["model"] == "minilm" else tiny_classifier
    return fn(len(outlets))


@functools.lru_cache(maxsize=2)
def _tweets(max_per_outlet: int, seed: int):
    return load_tweets(assets.healthtweets_zip(), max_per_outlet, seed)


def build_task(cfg, tokenizer, num_partitions: int) -> TweetTask:
    texts, labels, _ = _tweets(int(cfg["max-per-outlet"]), int(cfg["seed"]))
    return TweetTask(texts, labels, tokenizer, num_clients=num_partitions, split="dirichlet", alpha=float(cfg["alpha"]),
                     eval_size=int(cfg["eval-size"]), max_len=int(cfg["max-len"]), seed=int(cfg["seed"]), device="cpu")


def train(task: TweetTask, model, partition: int, cfg, round: int) -> dict:
    lc = LoopConfig(local_steps=int(cfg["local-steps"]), batch_size=int(cfg["batch-size"]), local_lr=float(cfg["local-lr"]),
                    optimizer="adamw")
    gen = np.random.default_rng([int(cfg["seed"]), partition, round])
    loss = local_train(task, model, partition, lc, gen)
    return {"train-loss": loss, "num-examples": float(task.client_size(partition))}


def evaluate(task: TweetTask, model) -> dict:
    model.eval()
    with torch.no_grad():
        r = task.evaluate(model)
    return {"accuracy": r["metric"], "loss": r["loss"], "num-examples": float(len(task.eval[2]))}
