"""The app's task: BlobTask (10-class Gaussian blobs) split over the nodes, the harness's MLP."""

from __future__ import annotations

import numpy as np

from ferret_kernels.fl import FerretConfig, ServerConfig
from ferret_kernels.fl.harness.loop import LoopConfig, local_train
from ferret_kernels.fl.harness.tasks import BlobTask, mlp


def configs(rc) -> tuple[FerretConfig, ServerConfig]:
    fc = FerretConfig(
        num_bases=int(rc["num-bases"]), block_size=int(rc["block-size"]), full_threshold=int(rc["full-threshold"])
    )
    return fc, ServerConfig(lr=float(rc["server-lr"]), base_seed=int(rc["seed"]))


def model(rc):
    return mlp(int(rc["seed"]))


def task(num_partitions: int, rc) -> BlobTask:
    return BlobTask(clients=num_partitions, seed=int(rc["seed"]))


def train(t: BlobTask, m, partition: int, rc, rnd: int) -> None:
    cfg = LoopConfig(
        local_steps=int(rc["local-steps"]), batch_size=int(rc["batch-size"]), local_lr=float(rc["local-lr"])
    )
    local_train(t, m, partition, cfg, np.random.default_rng(1000 * rnd + partition))
