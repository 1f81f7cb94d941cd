"""The job's run config, model and site training, shared by the server (FerretController's
model_factory) and the sites (site.py). Models and data are the Flower app's (the job ships
python/ferret_flower/ferret_flower_app/task.py in its custom folder), so both apps train the
same thing: "minilm" (all-MiniLM-L6-v2, 22.6 M parameters, health tweets by outlet), "tiny"
(a 2-layer BERT on the same data) or "mlp" (a 301k-parameter MLP on synthetic blobs: no
data files, no transformers import).

A site's partition is its node config's `partition-id` if given, else the number at the end
of its FLARE name minus one (site-1 -> 0), modulo `num-partitions`.
"""

from __future__ import annotations

import re

DEFAULTS = {
    "model": "minilm",
    "seed": 0,
    "local-steps": 4,
    "batch-size": 16,
    "local-lr": 5e-5,
    "max-per-outlet": 300,
    "eval-size": 400,
    "max-len": 48,
    "alpha": 0.5,
    "num-partitions": 2,
}


def config(overrides: dict | None = None) -> dict:
    """DEFAULTS updated with `overrides` (unknown keys are refused: a typo must not pass silently)."""
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(DEFAULTS) - {"partition-id"})
    if unknown:
        raise ValueError(f"unknown run config keys {unknown}; known: {sorted(DEFAULTS)}")
    cfg = dict(DEFAULTS)
    for k, v in overrides.items():
        cfg[k] = type(DEFAULTS[k])(v) if k in DEFAULTS else int(v)
    return cfg


def build_model(overrides: dict | None = None):
    """The initial global model (the same on every process: seeded)."""
    from ferret_flower_app import task

    return task.build_model(config(overrides))[0]


def partition(site: str, cfg: dict) -> int:
    if "partition-id" in cfg:
        return int(cfg["partition-id"]) % int(cfg["num-partitions"])
    m = re.search(r"(\d+)$", site)
    if not m:
        raise ValueError(f"site name {site!r} ends in no number; give partition-id=")
    return (int(m.group(1)) - 1) % int(cfg["num-partitions"])
