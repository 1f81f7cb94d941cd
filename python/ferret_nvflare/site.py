"""The FLARE Client API script each site runs: it keeps the site's copy of the global model
(FerretSite), trains the job's model on the site's partition each round and sends back a
Ferret update (K coefficients per block), never weights.

    python site.py key=value ...   (FLARE runs it; the keys are ferret_task.DEFAULTS')
"""

from __future__ import annotations

import sys

import nvflare.client as flare
import torch

from ferret_kernels.fl.nvflare import FerretSite


def main(argv: list[str]) -> None:
    import ferret_task
    from ferret_flower_app import task

    pairs = [a.split("=", 1) for a in argv]
    if any(len(p) != 2 for p in pairs):
        raise SystemExit(f"arguments are key=value, got {argv}")
    cfg = ferret_task.config(dict(pairs))
    torch.set_num_threads(1)
    flare.init()
    name = flare.get_site_name()
    model, tok = task.build_model(cfg)
    data = task.build_task(cfg, tok, int(cfg["num-partitions"]))
    part = ferret_task.partition(name, cfg)
    site = FerretSite(model, name)

    def train(model, task_cfg):  # task_cfg: the task's meta["ferret.config"] (round, seed, ...)
        return task.train(data, model, part, cfg, int(task_cfg["round"]))

    site.run(train)


if __name__ == "__main__":
    main(sys.argv[1:])
