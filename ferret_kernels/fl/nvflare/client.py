"""Ferret on NVIDIA FLARE, the site half, for FLARE's Client API (`nvflare.client`): a
FerretSite keeps the site's copy of the global model in the training script's memory (it
does not cross the network), brings it to the round the server names (loading the full
model when the task carries one, else applying the updates the task carries), lets the
user's function train it, and answers with the Ferret update (K coefficients per block of
w_old - w_new) instead of weights. Wire protocol: protocol.py.

    import nvflare.client as flare
    from ferret_kernels.fl.nvflare import FerretSite

    flare.init()
    site = FerretSite(build_model(), flare.get_site_name())
    site.run(lambda model, config: my_local_training(model, config["round"]))  # returns {"num-examples": n, ...}

`run` is the Client API loop (flare.receive / site.train / flare.send) for a script that
only trains; a script that also evaluates calls `site.train(task, train_fn)` itself.

Contract: `train` raises (and sends nothing) if the task does not bring the copy to the
named round: a site without a copy and no model sent, a sync that skips rounds, an update
that does not decode or fit the model. The copy is replaced only once the task has been
applied completely, so a refused task leaves it as it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from ..codec import UpdateCodec
from ..message import encode
from ..sync import apply_updates, model_digest
from .protocol import CONFIG, SYNC, UPDATE, ferret_config, from_numpy, quote

log = logging.getLogger("ferret_kernels.fl.nvflare")


class FerretSite:
    """One site's state across rounds: its copy of the global model and the round it is at.

    `model` is the architecture (its weights are replaced by the server's); `name` is the
    site's name as FLARE knows it (flare.get_site_name()): the server refuses an update that
    names another client."""

    def __init__(self, model: torch.nn.Module, name: str):
        self.model = model
        self.name = str(name)
        self.copy: dict | None = None  # the global model at round self.round
        self.round: int | None = None

    @torch.no_grad()
    def sync(self, task):
        """Bring the copy to the task's base round; returns (model holding the copy, codec, config)."""
        from nvflare.app_common.abstract.fl_model import FLModel

        if not isinstance(task, FLModel):
            raise TypeError(f"a Ferret task is an FLModel, got {type(task).__name__}")
        cfg, sync = task.meta[CONFIG], task.meta[SYNC]
        base = int(cfg["base-round"])
        codec = UpdateCodec.for_module(self.model, ferret_config(cfg))
        own = self.model.state_dict()
        if task.params:
            state, have = from_numpy(task.params, own), int(sync["model-round"])
        elif self.copy is not None:
            state, have = self.copy, self.round
        else:
            raise RuntimeError(f"site {self.name} holds no copy of the global model and none was sent")
        self.model.load_state_dict(state)
        rounds = [int(r) for r in sync["rounds"]]
        todo = [i for i, r in enumerate(rounds) if r > have]
        if sorted({rounds[i] for i in todo}) != list(range(have + 1, base + 1)):
            raise RuntimeError(
                f"site copy is at round {have}; the sync covers rounds {sorted(set(rounds))}, not {have + 1}..{base}"
            )
        try:
            apply_updates(codec, self.model, [sync["updates"][i] for i in todo], [sync["alphas"][i] for i in todo])
        except Exception:
            if self.copy is not None:
                self.model.load_state_dict(self.copy)
            raise
        self.copy = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.round = base
        return self.model, codec, cfg

    def train(self, task, train_fn: Callable[[torch.nn.Module, dict], dict]):
        """Sync, train in place with `train_fn(model, config) -> metrics` (include "num-examples":
        the aggregation weight the site claims; config is the task's meta["ferret.config"]:
        round, seed, ..., and the job's train config under "train"), and return the reply
        FLModel carrying the Ferret update. The model is reset to the global copy afterwards."""
        from nvflare.app_common.abstract.fl_model import FLModel

        model, codec, cfg = self.sync(task)
        digest = model_digest(model, codec)
        try:
            metrics = {k: float(v) for k, v in dict(train_fn(model, dict(cfg))).items()}
            upd = codec.compress(
                self.copy,
                model,
                int(cfg["seed"]),
                weight=float(metrics.get("num-examples", 1)),
                round=int(cfg["round"]),
                client=self.name,
            )
        finally:
            model.load_state_dict(self.copy)  # the site's model stays the global copy
        meta = {UPDATE: {"update": encode(upd), "base-round": int(cfg["base-round"]), "digest": digest}}
        return FLModel(params=None, metrics=metrics, meta=meta, current_round=task.current_round)

    def error_reply(self, task, error: BaseException):
        """The reply to a task this site could not carry out: no update (the server rejects it,
        lists why, and sends this site the full model next time); the copy is dropped."""
        from nvflare.app_common.abstract.fl_model import FLModel

        self.copy, self.round = None, None
        return FLModel(
            params=None,
            metrics={"ferret-error": 1.0},
            meta={"ferret.error": quote(f"{type(error).__name__}: {error}")},
            current_round=getattr(task, "current_round", None),
        )

    def run(self, train_fn: Callable[[torch.nn.Module, dict], dict]) -> None:
        """The Client API loop: receive a task, train and reply, until FLARE ends the job. A task
        that cannot be carried out is answered with `error_reply` (logged); the loop goes on."""
        import nvflare.client as flare

        while flare.is_running():
            task = flare.receive()
            if task is None:
                break
            try:
                reply = self.train(task, train_fn)
            except Exception as e:  # noqa: BLE001 - one bad task must not end the site
                log.exception("site %s could not carry out round %s's task", self.name, task.current_round)
                reply = self.error_reply(task, e)
            flare.send(reply)
