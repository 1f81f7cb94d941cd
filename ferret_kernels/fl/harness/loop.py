"""A thin federated loop: simulated clients, client sampling, local first-order steps, a
server, evaluation, and a record per round; Ferret and its baselines in the same loop.

- ``ferret``: clients send Ferret update messages (ferret_kernels.fl.message); the server
  decodes, validates, aggregates and applies them (FerretServer).
- ``fedavg``: clients send full updates (counted at the bytes of their dtype).
- ``zo``: FedKSeed-style zeroth-order: a pool of K candidate seeds; each local step picks
  one, estimates a scalar directional derivative with two forward passes, and steps along
  that seed's direction; clients upload (seed index, scalar) pairs and the server replays
  them. Perturbations use the in-place op (no materialized noise).

A task supplies the data and the model's loss (see FederatedTask).

Client-level DP (ServerConfig.dp_clip, ferret only; with dp_mode "client" each simulated client
clips and noises its own update, privacy.privatize_update): each record carries `epsilon`, the
guarantee after that many rounds at ServerConfig.dp_delta for this loop's sampling (a uniform
sample of clients_per_round of the task's clients without replacement, replace-one
adjacency: privacy.epsilon(sampling="fixed")). The sampling generator is seeded from
cfg.seed, so this is a simulation's epsilon: a deployment must keep its sampling secret.

Crash safety: with `checkpoint_dir`, run() writes a checkpoint after every round
(ferret_kernels.fl.checkpoint: one file replaced atomically): the model, the rounds done,
the sampling generator's state, the server's momentum window and round, and the records.
Called again on the same directory it resumes after the last checkpointed round; the final
model is bit-identical to an uninterrupted run's. A checkpoint of another configuration,
or a truncated or corrupted one, raises CheckpointError.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from ... import reconstruct_
from ..checkpoint import CheckpointError, blob_name, load_checkpoint, save_checkpoint
from ..codec import FerretConfig, UpdateCodec, fedavg_bytes
from ..layout import ParamLayout
from ..message import encode
from ..server import FerretServer, ServerConfig, splitmix64
from .attacks import ATTACKS, poison


class FederatedTask(Protocol):
    def num_clients(self) -> int: ...
    def client_size(self, client: int) -> int: ...
    def batch(self, client: int, gen: np.random.Generator, batch_size: int) -> Any: ...
    def loss(self, model: torch.nn.Module, batch: Any) -> torch.Tensor: ...
    def evaluate(self, model: torch.nn.Module) -> dict: ...  # {"metric": ..., "loss": ...}


@dataclass
class LoopConfig:
    method: str = "ferret"  # ferret | fedavg | zo
    rounds: int = 10
    clients_per_round: int = 4
    local_steps: int = 5
    batch_size: int = 16
    local_lr: float = 1e-2
    optimizer: str = "sgd"  # sgd | adam | adamw
    seed: int = 0
    zo_candidates: int = 64  # zo: size of the seed pool
    zo_eps: float = 1e-3
    zo_lr: float | None = None  # zo: local step size (default local_lr)
    eval_every: int = 1
    progress: bool = True
    # simulated hostile clients (ferret only; harness/attacks.py): these client ids send
    # `attack` at `attack_scale` x their honest update instead of it
    attack: str = "none"  # none | sign_flip | scale | random
    attack_clients: tuple = ()
    attack_scale: float = 1.0
    ferret: FerretConfig = field(default_factory=FerretConfig)
    server: ServerConfig = field(default_factory=ServerConfig)

    def __post_init__(self):
        if self.method not in ("ferret", "fedavg", "zo"):
            raise ValueError(f"unknown method {self.method!r} (ferret, fedavg, zo)")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}")
        for name in ("rounds", "clients_per_round", "local_steps", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.attack not in ATTACKS:
            raise ValueError(f"unknown attack {self.attack!r} (one of {ATTACKS})")
        if self.attack != "none" and self.method != "ferret":
            raise ValueError("simulated attacks are implemented for method 'ferret' only")
        self.attack_clients = tuple(int(c) for c in self.attack_clients)


def _optimizer(cfg: LoopConfig, params):
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.local_lr)
    # the fused kernels where torch has them: on 2 CPU cores AdamW's step over MiniLM's 22.6 M
    # parameters drops from 0.35 s to 0.05 s (one thread), half of a local step
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params) or None
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.local_lr, fused=fused)
    return torch.optim.AdamW(params, lr=cfg.local_lr, fused=fused)


def local_train(task, model, client, cfg, gen):
    model.train()
    opt = _optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    losses = []
    for _ in range(cfg.local_steps):
        opt.zero_grad(set_to_none=True)
        loss = task.loss(model, task.batch(client, gen, cfg.batch_size))
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


class _Timer:
    def __init__(self):
        self.t = {}

    def __call__(self, key):
        timer = self

        class _Ctx:
            def __enter__(self):
                self.s = time.perf_counter()

            def __exit__(self, *a):
                timer.t[key] = timer.t.get(key, 0.0) + time.perf_counter() - self.s

        return _Ctx()


def _zo_perturb(model, layout, seed, dist, alpha):
    """params += alpha * z(seed), z = basis 0 of every block: in place, no noise tensor."""
    for s in layout.projected:
        p = dict(model.named_parameters())[s.name]
        ones = torch.ones(s.num_blocks, 1, device=p.device)
        reconstruct_(p.data, ones, seed, layout.block_size, block_offset=s.block_offset, dist=dist, alpha=alpha)


def _identity(cfg: LoopConfig) -> dict:
    d = config_dict(cfg)
    for k in ("rounds", "progress", "eval_every"):
        d.pop(k)
    return json.loads(json.dumps(d, default=str))


def _checkpoint(directory, model, cfg, r, gen, records, server):
    blobs, hist = {}, []
    if server is not None:
        st = server.state()
        for entry in st.pop("history"):
            hist.append([[blob_name(b), s] for b, s in entry])
            blobs.update((blob_name(b), b) for b, _ in entry)
        st["history"] = hist
    state = {
        "kind": "ferret-loop",
        "identity": _identity(cfg),
        "rounds_done": r,
        "gen": gen.bit_generator.state,
        "records": records,
        "server": None if server is None else st,
    }
    save_checkpoint(directory, model.state_dict(), state, blobs)


def _resume(directory, model, cfg, gen, server) -> tuple[int, list]:
    got = load_checkpoint(directory)
    if got is None:
        return 0, []
    tensors, state, blobs = got
    if state.get("kind") != "ferret-loop":
        raise CheckpointError(f"{directory} holds a checkpoint of kind {state.get('kind')!r}, not the loop's")
    if state["identity"] != _identity(cfg):
        mine, theirs = _identity(cfg), state["identity"]
        diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise CheckpointError(
            f"checkpoint in {directory} was written with another {', '.join(diff)}; refusing to resume from it"
        )
    sd = model.state_dict()
    if set(tensors) != set(sd) or any(tensors[k].shape != sd[k].shape or tensors[k].dtype != sd[k].dtype for k in sd):
        raise CheckpointError(f"checkpoint in {directory} holds tensors that do not fit the model")
    # everything is read and checked before the model, the server or the generator changes (a bad
    # generator state had failed after the model was loaded; load_state parses before it assigns)
    try:
        rounds_done, records = int(state["rounds_done"]), list(state["records"])
        type(gen.bit_generator)().state = state["gen"]  # checked on a scratch generator
        if server is not None:
            st = dict(state["server"])
            try:
                st["history"] = [[(blobs[n], s) for n, s in entry] for entry in st["history"]]
            except KeyError:
                raise CheckpointError(f"checkpoint in {directory} lacks a momentum blob") from None
            server.load_state(st)
    except (KeyError, TypeError, ValueError) as e:  # DecodeError (an undecodable blob) is a ValueError
        raise CheckpointError(
            f"checkpoint in {directory} has a malformed state ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    with torch.no_grad():
        model.load_state_dict(tensors)
    gen.bit_generator.state = state["gen"]
    return rounds_done, records


def run(
    task: FederatedTask, model: torch.nn.Module, cfg: LoopConfig, *, callback=None, checkpoint_dir: str | None = None
) -> list[dict]:
    """Runs cfg.rounds rounds on `model` (the global model, updated in place). Returns one
    record per round: metric, loss, bytes up/down per client, time per phase. With
    `checkpoint_dir`, resumes from its checkpoint if there is one and writes one per round."""
    from tqdm.auto import tqdm

    gen = np.random.default_rng(cfg.seed)
    n_clients = task.num_clients()
    k = min(cfg.clients_per_round, n_clients)
    records = []
    server = None
    if cfg.method == "ferret":
        codec = UpdateCodec.for_module(model, cfg.ferret)
        server = FerretServer(codec, cfg.server)
        layout = codec.layout
    else:
        layout = ParamLayout.from_module(model, cfg.ferret.block_size, 0)
    done = 0
    if checkpoint_dir:
        done, records = _resume(checkpoint_dir, model, cfg, gen, server)
    zo_pool = [splitmix64(cfg.seed * 1_000_003 + i) for i in range(cfg.zo_candidates)]
    rounds = tqdm(range(done, cfg.rounds), desc=cfg.method, disable=not cfg.progress)
    for r in rounds:
        tm = _Timer()
        clients = sorted(gen.choice(n_clients, size=k, replace=False).tolist())
        up, local_loss, msgs, deltas, zo_updates = [], [], [], [], []
        for c in tqdm(clients, desc=f"round {r}", leave=False, disable=not cfg.progress):
            with tm("local"):
                local = copy.deepcopy(model)
                if cfg.method == "zo":
                    zo_updates.append(_zo_local(task, local, layout, c, cfg, gen, zo_pool))
                    local_loss.append(zo_updates[-1][1])
                else:
                    local_loss.append(local_train(task, local, c, cfg, gen))
            weight = float(task.client_size(c))
            if cfg.method == "ferret":
                with tm("project"):
                    seed = server.seed_for(r, c)
                    msg = codec.compress(model, local, seed, weight=weight, round=r, client=str(c))
                    if cfg.server.dp and cfg.server.dp_mode == "client":  # the client clips and noises its own update
                        msg = _privatize(msg, cfg.server, gen)
                    if c in cfg.attack_clients:
                        msg = poison(msg, cfg.attack, cfg.attack_scale, gen)
                    data = encode(msg)
                up.append(len(data))
                with tm("aggregate"):
                    m = server.receive(data, expected_seed=seed, round=r, node=str(c))
                if m is not None:
                    msgs.append(m)
            elif cfg.method == "fedavg":
                with tm("project"):
                    g = dict(model.named_parameters())
                    deltas.append(
                        (
                            weight,
                            {n: (g[n].detach() - p.detach()) for n, p in local.named_parameters() if p.requires_grad},
                        )
                    )
                up.append(fedavg_bytes(layout))
            else:
                up.append(len(zo_updates[-1][0]) * 8)
                zo_updates[-1] = (weight, zo_updates[-1][0])
            del local
        with tm("aggregate"):
            if cfg.method == "ferret":
                sent = server.step(model, msgs, r)  # None under the plain mean: aggregate once more to count
                down_bytes = sum(
                    len(encode(m)) for m in (sent if sent is not None else server.broadcast(msgs, round=r))
                )
            elif cfg.method == "fedavg":
                _fedavg_apply(model, deltas, cfg.server.lr)
                down_bytes = fedavg_bytes(layout)
            else:
                down_bytes = _zo_apply(model, layout, zo_updates, zo_pool, cfg)
        metrics = {}
        if (r + 1) % cfg.eval_every == 0 or r == cfg.rounds - 1:
            with tm("eval"):
                model.eval()
                with torch.no_grad():
                    metrics = task.evaluate(model)
        rec = dict(
            round=r + 1,
            method=cfg.method,
            clients=len(clients),
            train_loss=float(np.mean(local_loss)),
            metric=metrics.get("metric", float("nan")),
            loss=metrics.get("loss", float("nan")),
            bytes_up_per_client=float(np.mean(up)),
            bytes_down_per_client=float(down_bytes),
            rejected=len(clients) - len(msgs) if cfg.method == "ferret" else 0,
            t_local=tm.t.get("local", 0.0),
            t_project=tm.t.get("project", 0.0),
            t_aggregate=tm.t.get("aggregate", 0.0),
            t_eval=tm.t.get("eval", 0.0),
        )
        if cfg.method == "ferret" and cfg.server.dp:
            rec["epsilon"] = _epsilon(cfg, k, n_clients, r + 1)
        records.append(rec)
        if checkpoint_dir:
            _checkpoint(checkpoint_dir, model, cfg, r + 1, gen, records, server)
        rounds.set_postfix(metric=f"{rec['metric']:.4g}", up=f"{rec['bytes_up_per_client']:.0f}B")
        if callback:
            callback(rec)
    return records


def _privatize(msg, s: ServerConfig, gen: np.random.Generator):
    from ..privacy import client_noise_std, privatize_update

    g = torch.Generator().manual_seed(int(gen.integers(2**62)))  # a simulation: drawn from the loop's seed
    return privatize_update(
        msg, s.dp_clip, client_noise_std(s.dp_clip, s.dp_noise_multiplier, s.dp_expected_clients), g
    )


def _epsilon(cfg: LoopConfig, k: int, n_clients: int, rounds: int) -> float:
    from ..privacy import epsilon

    s = cfg.server  # the denominator m scales noise and sensitivity alike: epsilon does not depend on it
    return epsilon(s.dp_noise_multiplier, k / n_clients, rounds, s.dp_delta, sampling="fixed", population=n_clients)


@torch.no_grad()
def _fedavg_apply(model, deltas, lr):
    tot = sum(w for w, _ in deltas)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        agg = sum((w / tot) * d[name].float() for w, d in deltas)
        p.copy_((p.float() - lr * agg).to(p.dtype))


def _zo_local(task, model, layout, client, cfg, gen, pool):
    """FedKSeed-style local steps; returns ([(seed index, scalar grad)], mean loss)."""
    dist, eps = cfg.ferret.dist, cfg.zo_eps
    lr = cfg.zo_lr if cfg.zo_lr is not None else cfg.local_lr
    out, losses = [], []
    model.eval()
    with torch.no_grad():
        for _ in range(cfg.local_steps):
            i = int(gen.integers(len(pool)))
            batch = task.batch(client, gen, cfg.batch_size)
            _zo_perturb(model, layout, pool[i], dist, eps)
            lp = float(task.loss(model, batch))
            _zo_perturb(model, layout, pool[i], dist, -2 * eps)
            lm = float(task.loss(model, batch))
            g = (lp - lm) / (2 * eps)
            _zo_perturb(model, layout, pool[i], dist, eps - lr * g)  # restore, then step
            out.append((i, g))
            losses.append(0.5 * (lp + lm))
    return out, float(np.mean(losses))


@torch.no_grad()
def _zo_apply(model, layout, updates, pool, cfg):
    """Server replay: w -= lr_server * zo_lr * sum_s mean-weighted g_s z_s; returns downlink bytes."""
    lr = (cfg.zo_lr if cfg.zo_lr is not None else cfg.local_lr) * cfg.server.lr
    tot = sum(w for w, _ in updates)
    acc = np.zeros(len(pool))
    for w, pairs in updates:
        for i, g in pairs:
            acc[i] += (w / tot) * g
    for i in np.flatnonzero(acc):
        _zo_perturb(model, layout, pool[i], cfg.ferret.dist, -lr * float(acc[i]))
    return 4 * len(pool)


def config_dict(cfg: LoopConfig) -> dict:
    return asdict(cfg)
