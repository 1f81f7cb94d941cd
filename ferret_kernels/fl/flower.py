"""Ferret on Flower (Message API, flwr >= 1.42): a server strategy and the client side.

Wire protocol (all records are plain Flower records; the update itself is the federated
layer's safetensors message, ferret_kernels.fl.message):

server -> node (TRAIN or EVALUATE message)
    "ferret.config"  ConfigRecord: round, base-round (the global model's round the node must
                     be at), seed (decimal string: seeds span [0, 2^64)), num-bases,
                     block-size, dist, adaptive, full-threshold, wire-dtype, plus the
                     user's train config under their own keys.
    "ferret.sync"    ConfigRecord: rounds (list[int]), updates (list[bytes]), alphas
                     (list[float]): the applied updates the node has not seen yet, in
                     order; the node applies w <- w - alpha * reconstruct(update) for each.
    "ferret.model"   ArrayRecord with the full global model: only the first time a node is
                     contacted (or after it lost its copy); never again afterwards.
node -> server (reply)
    "ferret.update"  ConfigRecord: update (bytes, the encoded UpdateMessage of w_old - w_new),
                     base-round and digest (of the node's copy before training).
    "metrics"        MetricRecord: num-examples and whatever the train function returns.

Each node keeps its copy of the global model in its Context.state (local to the SuperNode;
it does not cross the network), so after the first contact neither direction carries
weights: up goes K coefficients per block, down goes the round's aggregate coefficients.
The server applies exactly the updates it broadcasts (decoded from the same bytes, in the
same order, with the same alphas), so its model and every node's copy stay identical.
"""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from .compress import Compressor, FerretConfig
from .message import DecodeError, decode, encode
from .server import FerretServer, ServerConfig

CONFIG, SYNC, MODEL, UPDATE = "ferret.config", "ferret.sync", "ferret.model", "ferret.update"


def model_digest(module: torch.nn.Module, compressor: Compressor) -> str:
    """SHA-256 (first 16 hex digits) of the trainable parameters' bytes in layout order."""
    h = hashlib.sha256()
    params = compressor.layout.params(module)
    for s in compressor.layout.specs:
        h.update(params[s.name].detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def apply_updates(compressor: Compressor, module: torch.nn.Module, updates: Iterable[bytes], alphas: Iterable[float]) -> None:
    """w <- w - alpha_i * reconstruct(update_i) for each encoded update, in order, in place.

    Every update is decoded and checked before the first one is applied."""
    updates, alphas = list(updates), [float(a) for a in alphas]
    if len(updates) != len(alphas):
        raise DecodeError(f"{len(updates)} updates but {len(alphas)} alphas")
    msgs = [decode(u, compressor.layout, max_bases=compressor.config.max_bases) for u in updates]
    for m in msgs:
        compressor.check(m)
    for m, a in zip(msgs, alphas):
        compressor.apply(module, [m], lr=a, weights=[1.0])


def _ferret_config(cfg: ConfigRecord) -> FerretConfig:
    return FerretConfig(num_bases=int(cfg["num-bases"]), block_size=int(cfg["block-size"]), dist=str(cfg["dist"]),
                        adaptive=bool(cfg["adaptive"]), full_threshold=int(cfg["full-threshold"]),
                        wire_dtype=str(cfg["wire-dtype"]))


def _content_bytes(msg: Message, record: str) -> int:
    """Serialized size of one record of a message's content (what crossed the wire for it)."""
    from flwr.common.serde import recorddict_to_proto

    return recorddict_to_proto(RecordDict({record: msg.content[record]})).ByteSize()


@dataclass
class RoundLog:
    round: int
    seed: int
    sampled: list[int] = field(default_factory=list)
    received_bytes: dict[int, int] = field(default_factory=dict)   # node -> serialized "ferret.update" record
    update_bytes: dict[int, int] = field(default_factory=dict)     # node -> encoded UpdateMessage
    sent_bytes: dict[int, int] = field(default_factory=dict)       # node -> serialized sync + model records
    full_model_sent: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    accepted: dict[int, bytes] = field(default_factory=dict)       # node -> its validated update
    applied: list[tuple[bytes, float]] = field(default_factory=list)
    digest: str = ""                                               # global model after the round

    def as_dict(self) -> dict:
        return {"round": self.round, "seed": str(self.seed), "sampled": [str(n) for n in self.sampled],
                "received_bytes": {str(k): v for k, v in self.received_bytes.items()},
                "update_bytes": {str(k): v for k, v in self.update_bytes.items()},
                "sent_bytes": {str(k): v for k, v in self.sent_bytes.items()},
                "full_model_sent": [str(n) for n in self.full_model_sent],
                "rejected": {str(k): v for k, v in self.rejected.items()},
                "alphas": [a for _, a in self.applied], "digest": self.digest}


class FerretStrategy(Strategy):
    """Ferret rounds over a Flower Grid: (seed, config) out, coefficients in, aggregation in
    coefficient space, and the applied aggregate broadcast to nodes as coefficients.

    The strategy owns the global model (`model`, updated in place). Nodes receive the full
    model once; afterwards only the updates they have not applied yet."""

    def __init__(self, model: torch.nn.Module, ferret: FerretConfig | None = None, server: ServerConfig | None = None, *,
                 fraction_train: float = 1.0, min_train_nodes: int = 2, min_available_nodes: int = 2,
                 fraction_evaluate: float = 0.0, min_evaluate_nodes: int = 1, wait_for_nodes_s: float = 120.0,
                 verify_sync: bool = True):
        if not 0 < fraction_train <= 1 or not 0 <= fraction_evaluate <= 1:
            raise ValueError("fraction_train must be in (0, 1] and fraction_evaluate in [0, 1]")
        if min(min_train_nodes, min_available_nodes) < 1:
            raise ValueError("min_train_nodes and min_available_nodes must be at least 1")
        self.model = model
        self.ferret = ferret or FerretConfig()
        self.compressor = Compressor.for_module(model, self.ferret)
        self.server = FerretServer(self.compressor, server or ServerConfig())
        self.fraction_train, self.fraction_evaluate = fraction_train, fraction_evaluate
        self.min_train_nodes, self.min_available_nodes = min_train_nodes, min_available_nodes
        self.min_evaluate_nodes, self.wait_for_nodes_s = min_evaluate_nodes, wait_for_nodes_s
        self.verify_sync = verify_sync
        self.round_of_node: dict[int, int] = {}   # node -> global round its copy is at
        self.momentum_window: list[list[tuple[bytes, float]]] = []  # earlier rounds' own updates, for momentum
        self.rounds: list[RoundLog] = []
        self.current_round = 0
        self.digests = {0: model_digest(model, self.compressor)}

    # ------------------------------------------------------------------ sampling and sending
    def _sample(self, grid: Grid, fraction: float, min_nodes: int, server_round: int, salt: int) -> list[int]:
        deadline = time.monotonic() + self.wait_for_nodes_s
        nodes = list(grid.get_node_ids())
        while len(nodes) < max(self.min_available_nodes, min_nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(grid.get_node_ids())
        if len(nodes) < max(self.min_available_nodes, min_nodes):
            raise RuntimeError(f"only {len(nodes)} nodes connected after {self.wait_for_nodes_s:.0f} s; "
                               f"the strategy needs {max(self.min_available_nodes, min_nodes)}")
        n = min(len(nodes), max(min_nodes, int(round(fraction * len(nodes)))))
        rng = random.Random(f"sample:{self.server.config.base_seed}:{server_round}:{salt}")  # not the bases' seeds
        return sorted(rng.sample(sorted(nodes), n))

    def _sync_records(self, node: int) -> tuple[RecordDict, bool]:
        """The records that bring `node` to the current global round (full model only if needed)."""
        have = self.round_of_node.get(node)
        rounds, updates, alphas = [], [], []
        if have is not None:
            for rl in self.rounds:
                if have < rl.round <= self.current_round:
                    for u, a in rl.applied:
                        rounds.append(rl.round), updates.append(u), alphas.append(a)
        full = have is None or sum(len(u) for u in updates) > self._model_bytes()
        rd = RecordDict()
        if full:
            rd[MODEL] = ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
            rounds, updates, alphas = [], [], []
        rd[SYNC] = ConfigRecord({"rounds": rounds, "updates": updates, "alphas": alphas,
                                 "model-round": self.current_round if full else have})
        return rd, full

    def _model_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.state_dict().values())

    def _messages(self, server_round: int, nodes: list[int], config: ConfigRecord, mtype: str, log_: RoundLog | None):
        out = []
        for node in nodes:
            rd, full = self._sync_records(node)
            cfg = ConfigRecord(dict(config))
            cfg.update({"round": server_round, "base-round": self.current_round,
                        "seed": str(self.server.seed_for(server_round, node % (1 << 31))),
                        "num-bases": self.ferret.num_bases, "block-size": self.ferret.block_size,
                        "dist": self.ferret.dist, "adaptive": self.ferret.adaptive,
                        "full-threshold": self.ferret.full_threshold, "wire-dtype": self.ferret.wire_dtype})
            rd[CONFIG] = cfg
            msg = Message(rd, dst_node_id=node, message_type=mtype)
            if log_ is not None:
                log_.sent_bytes[node] = _content_bytes(msg, SYNC) + (
                    sum(len(a.data) for a in rd[MODEL].values()) if full else 0)  # model: its arrays' bytes
                if full:
                    log_.full_model_sent.append(node)
            out.append(msg)
        return out

    # ------------------------------------------------------------------ Strategy API
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, server_round, 0)
        seed = self.server.seed_for(server_round, 0)
        rl = RoundLog(server_round, seed, nodes)
        self.rounds.append(rl)
        log(INFO, "configure_train: %d nodes, base round %d", len(nodes), self.current_round)
        return self._messages(server_round, nodes, config, MessageType.TRAIN, rl)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rl = self.rounds[-1]
        msgs, losses = [], []
        for rep in replies:
            node = rep.metadata.src_node_id
            if rep.has_error():
                rl.rejected[node] = f"node error: {rep.error.reason}"
                self.round_of_node.pop(node, None)  # resend the full model next time
                continue
            try:
                rec = rep.content[UPDATE]
                data = rec["update"]
                rl.received_bytes[node] = _content_bytes(rep, UPDATE)
                rl.update_bytes[node] = len(data)
                if int(rec["base-round"]) != self.current_round:
                    raise DecodeError(f"update made on round {rec['base-round']}'s model, expected {self.current_round}")
                if self.verify_sync and str(rec["digest"]) != self.digests[self.current_round]:
                    raise DecodeError("the node's model copy differs from the global model (digest mismatch)")
            except (KeyError, TypeError, DecodeError) as e:
                rl.rejected[node] = f"malformed reply: {e}"
                self.round_of_node.pop(node, None)
                continue
            self.round_of_node[node] = self.current_round  # its copy is in sync, whatever its update holds
            m = self.server.receive(bytes(data), expected_seed=self.server.seed_for(server_round, node % (1 << 31)))
            if m is None:
                rl.rejected[node] = self.server.rejected[-1][1]
                continue
            rl.accepted[node] = bytes(data)
            metrics = rep.content["metrics"] if "metrics" in rep.content else MetricRecord()
            n = float(metrics.get("num-examples", m.weight))
            msgs.append(m)
            if "train-loss" in metrics:
                losses.append((float(metrics["train-loss"]), n))
        for node, why in rl.rejected.items():
            log(WARNING, "round %d: rejected the update of node %d: %s", server_round, node, why)
        self._apply_round(server_round, msgs)
        rl.digest = self.digests[self.current_round]
        out = MetricRecord({"accepted": len(msgs), "rejected": len(rl.rejected),
                            "mean-update-bytes": (sum(rl.received_bytes.values()) / max(len(rl.received_bytes), 1))})
        if losses:
            out["train-loss"] = sum(l * n for l, n in losses) / max(sum(n for _, n in losses), 1e-12)
        return None, out

    @torch.no_grad()
    def _apply_round(self, server_round: int, msgs) -> None:
        """Aggregate in coefficient space, encode what is applied, and apply those very bytes."""
        cfg = self.server.config
        lr = self.server.lr_at(server_round)
        if not msgs:
            own: list[tuple[bytes, float]] = []
        elif cfg.seed_scheme == "shared":  # one aggregate: averaged coefficients, one reconstruction
            own = [(encode(self.server.broadcast(msgs)[0]), 1.0)]
        else:  # per-client seeds: each (clipped) update with its normalized weight
            own = [(encode(m), w) for m, w in self.server.aggregate(msgs)]
        # heavy-ball momentum in coefficient space: lr_t * sum_age beta^age * U_(t-age)
        entry = [(b, lr * w) for b, w in own]
        for age, old in enumerate(reversed(self.momentum_window), start=1):
            entry += [(b, lr * w * cfg.momentum**age) for b, w in old]
        if cfg.momentum and cfg.momentum_window > 1:
            self.momentum_window = (self.momentum_window + [own])[-(cfg.momentum_window - 1):]
        apply_updates(self.compressor, self.model, [b for b, _ in entry], [a for _, a in entry])
        self.current_round = server_round
        self.rounds[-1].applied = entry
        self.digests[server_round] = model_digest(self.model, self.compressor)
        log(INFO, "round %d: applied %d update(s) from %d node(s), lr %.4g", server_round, len(entry), len(msgs), lr)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round, 1)
        return self._messages(server_round, nodes, config, MessageType.EVALUATE, None)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        tot, acc = 0.0, {}
        for rep in replies:
            if rep.has_error() or "metrics" not in rep.content:
                continue
            mr = rep.content["metrics"]
            n = float(mr.get("num-examples", 1.0))
            tot += n
            for k, v in mr.items():
                if k != "num-examples" and isinstance(v, (int, float)):
                    acc[k] = acc.get(k, 0.0) + n * float(v)
            self.round_of_node[rep.metadata.src_node_id] = self.current_round
        return MetricRecord({k: v / tot for k, v in acc.items()}) if tot else None

    def summary(self) -> None:
        f, s = self.ferret, self.server.config
        log(INFO, "\t├── Ferret: K=%d per block, block size %d, %s, adaptive=%s, full below %d elements, wire %s",
            f.num_bases, f.block_size, f.dist, f.adaptive, f.full_threshold, f.wire_dtype)
        log(INFO, "\t├── layout: %s", self.compressor.layout)
        log(INFO, "\t└── server: lr %g (%s), momentum %g, clip %s, seeds %s, weighting %s",
            s.lr, s.schedule, s.momentum, s.clip_norm, s.seed_scheme, s.weighting)

    def start(self, grid: Grid, num_rounds: int = 3, timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, torch.nn.Module], MetricRecord | None] | None = None, **_) -> Result:
        """Run `num_rounds` rounds; `evaluate_fn(round, model)` evaluates the global model
        centrally. The result's arrays hold the final global model."""
        ev = (lambda r, _a: evaluate_fn(r, self.model)) if evaluate_fn else None
        res = super().start(grid, ArrayRecord(), num_rounds=num_rounds, timeout=timeout, train_config=train_config,
                            evaluate_config=evaluate_config, evaluate_fn=ev)
        res.arrays = ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        return res


# ---------------------------------------------------------------------- client side
def _synced_model(msg: Message, context: Context, model_fn) -> tuple[torch.nn.Module, Compressor, ConfigRecord, dict]:
    """The node's copy of the global model, brought to the message's base round and saved in
    Context.state. Returns (model, compressor, config, the copy's tensors)."""
    cfg = msg.content[CONFIG]
    base = int(cfg["base-round"])
    model = model_fn(context)  # the architecture; its weights are replaced below (a cached module is fine)
    compressor = Compressor.for_module(model, _ferret_config(cfg))
    sync = msg.content[SYNC]
    if MODEL in msg.content:
        state, have = msg.content[MODEL].to_torch_state_dict(), int(sync["model-round"])
    elif MODEL in context.state:
        state, have = context.state[MODEL].to_torch_state_dict(), int(context.state[SYNC]["round"])
    else:
        raise RuntimeError("this node holds no copy of the global model and none was sent")
    model.load_state_dict(state)
    rounds = [int(r) for r in sync["rounds"]]
    todo = [i for i, r in enumerate(rounds) if r > have]
    if sorted({rounds[i] for i in todo}) != list(range(have + 1, base + 1)):
        raise RuntimeError(f"node copy is at round {have}; the sync covers rounds {sorted(set(rounds))}, not {have + 1}..{base}")
    apply_updates(compressor, model, [sync["updates"][i] for i in todo], [sync["alphas"][i] for i in todo])
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    context.state[MODEL] = ArrayRecord(snapshot)
    context.state[SYNC] = ConfigRecord({"round": base})
    return model, compressor, cfg, snapshot


def ferret_train(msg: Message, context: Context, *, model_fn: Callable[[Context], torch.nn.Module],
                 train_fn: Callable[[torch.nn.Module, ConfigRecord, Context], dict]) -> Message:
    """ClientApp train handler: sync the node's copy, train locally with `train_fn(model,
    config, context) -> metrics` (must include "num-examples"), reply with the Ferret update."""
    model, compressor, cfg, old = _synced_model(msg, context, model_fn)
    digest = model_digest(model, compressor)
    metrics = dict(train_fn(model, cfg, context))
    upd = compressor.compress(old, model, int(cfg["seed"]), weight=float(metrics.get("num-examples", 1)),
                              round=int(cfg["round"]), client=str(context.node_id))
    model.load_state_dict(old)  # the node's copy stays the global model
    content = RecordDict({UPDATE: ConfigRecord({"update": encode(upd), "base-round": int(cfg["base-round"]), "digest": digest}),
                          "metrics": MetricRecord({k: float(v) for k, v in metrics.items()})})
    return Message(content, reply_to=msg)


def ferret_evaluate(msg: Message, context: Context, *, model_fn: Callable[[Context], torch.nn.Module],
                    evaluate_fn: Callable[[torch.nn.Module, ConfigRecord, Context], dict]) -> Message:
    """ClientApp evaluate handler: sync the node's copy and evaluate it."""
    model, _, cfg, _ = _synced_model(msg, context, model_fn)
    metrics = dict(evaluate_fn(model, cfg, context))
    return Message(RecordDict({"metrics": MetricRecord({k: float(v) for k, v in metrics.items()})}), reply_to=msg)
