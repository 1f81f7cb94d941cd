"""Ferret on Flower, the server half: FerretStrategy, a Flower Strategy (Message API, flwr
>= 1.42) that samples nodes, sends (seed, config) and the updates each node has not applied,
validates every reply, aggregates in coefficient space and applies the aggregate to the
global model it owns. Wire protocol: protocol.py; the client half: client.py.

Contract of the strategy (docs/threat_model.md): every reply is hostile until validated.
Each one is either accepted (a valid update for this round, from a node sampled for it,
the first from that node) or rejected with a reason naming the node, kept in a bounded
log; whatever a reply holds (wrong record types, str/list/NaN values, an error, a
crafted update) the round goes on with the others and nothing of it reaches the model.
Accepted updates are aggregated in an order that does not depend on arrival (sorted by
the digest of their bytes), so a round's result is a function of its accepted updates.

Each node keeps its copy of the global model in its Context.state (local to the SuperNode;
it does not cross the network), so after the first contact neither direction carries
weights: up goes K coefficients per block, down goes the round's aggregate coefficients.
The server applies exactly the updates it broadcasts (decoded from the same bytes, in the
same order, with the same alphas), so its model and every node's copy stay identical.

Crash safety: with `checkpoint_dir`, the strategy writes a checkpoint after every round
(ferret_kernels.fl.checkpoint: one file replaced atomically) holding the global model,
the round, the seed and sampling state (both derive from base_seed and the round), the
momentum window and the catch-up log (bounded by the model's size). A strategy created
on a directory that holds a checkpoint resumes from it: the next round is the one after
the checkpoint's, none is lost or repeated, and the final model is bit-identical to an
uninterrupted run's. Nodes keep their copies per run, so after a restart each node gets
the full model at first contact. A truncated or corrupted checkpoint raises
CheckpointError; it is never loaded.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy

from ..checkpoint import CheckpointError, blob_name, load_checkpoint, save_checkpoint
from ..codec import FerretConfig, UpdateCodec
from ..message import MAX_WEIGHT, DecodeError
from ..replies import check_base, reply_metrics, update_bytes
from ..server import FerretServer, ServerConfig, capped_shares
from ..sync import aggregate_round, missed_updates, trim_catchup
from .protocol import (
    CONFIG,
    MODEL,
    SYNC,
    UPDATE,
    content_bytes,
    model_digest,
    number,
    quote,
)


@dataclass
class RoundLog:
    round: int
    seed: int
    sampled: list[int] = field(default_factory=list)
    received_bytes: dict[int, int] = field(default_factory=dict)  # node -> serialized "ferret.update" record
    update_bytes: dict[int, int] = field(default_factory=dict)  # node -> encoded UpdateMessage
    sent_bytes: dict[int, int] = field(default_factory=dict)  # node -> serialized sync + model records
    full_model_sent: list[int] = field(default_factory=list)
    rejected: dict[int, str] = field(default_factory=dict)
    missing: list[int] = field(default_factory=list)  # sampled nodes that did not reply in time
    accepted: dict[int, bytes] = field(default_factory=dict)  # node -> its validated update
    applied: list[tuple[bytes, float]] = field(default_factory=list)
    digest: str = ""  # global model after the round
    resumed: bool = False  # first round after a restart from a checkpoint

    def as_dict(self) -> dict:
        return {
            "round": self.round,
            "seed": str(self.seed),
            "sampled": [str(n) for n in self.sampled],
            "received_bytes": {str(k): v for k, v in self.received_bytes.items()},
            "update_bytes": {str(k): v for k, v in self.update_bytes.items()},
            "sent_bytes": {str(k): v for k, v in self.sent_bytes.items()},
            "full_model_sent": [str(n) for n in self.full_model_sent],
            "rejected": {str(k): v for k, v in self.rejected.items()},
            "missing": [str(n) for n in self.missing],
            "alphas": [a for _, a in self.applied],
            "digest": self.digest,
            "resumed": self.resumed,
        }


class FerretStrategy(Strategy):
    """Ferret rounds over a Flower Grid: (seed, config) out, coefficients in, aggregation in
    coefficient space, and the applied aggregate broadcast to nodes as coefficients.

    The strategy owns the global model (`model`, updated in place). Nodes receive the full
    model once; afterwards only the updates they have not applied yet. Memory is bounded:
    the catch-up log holds at most the model's size of updates, `keep_rounds` RoundLogs are
    kept, rejections go to the server's bounded log. `catchup_bytes` lowers the catch-up log's
    budget below the model's size (fewer rounds kept, the model sent sooner)."""

    def __init__(
        self,
        model: torch.nn.Module,
        ferret: FerretConfig | None = None,
        server: ServerConfig | None = None,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        min_available_nodes: int = 2,
        fraction_evaluate: float = 0.0,
        min_evaluate_nodes: int = 1,
        wait_for_nodes_s: float = 120.0,
        verify_sync: bool = True,
        checkpoint_dir: str | None = None,
        keep_rounds: int = 16,
        on_round: Callable[["RoundLog"], None] | None = None,
        catchup_bytes: int | None = None,
    ):
        if not 0 < fraction_train <= 1 or not 0 <= fraction_evaluate <= 1:
            raise ValueError("fraction_train must be in (0, 1] and fraction_evaluate in [0, 1]")
        if min(min_train_nodes, min_available_nodes) < 1 or keep_rounds < 1:
            raise ValueError("min_train_nodes, min_available_nodes and keep_rounds must be at least 1")
        self.model = model
        self.ferret = ferret or FerretConfig()
        self.codec = UpdateCodec.for_module(model, self.ferret)
        self.server = FerretServer(self.codec, server or ServerConfig())
        self.fraction_train, self.fraction_evaluate = fraction_train, fraction_evaluate
        self.min_train_nodes, self.min_available_nodes = min_train_nodes, min_available_nodes
        self.min_evaluate_nodes, self.wait_for_nodes_s = min_evaluate_nodes, wait_for_nodes_s
        self.verify_sync = verify_sync
        self.checkpoint_dir, self.on_round = checkpoint_dir, on_round
        self.round_of_node: dict[int, int] = {}  # node -> global round its copy is at
        self.momentum_window: list[list[tuple[bytes, float]]] = []  # earlier rounds' own updates, for momentum
        self.catchup: collections.OrderedDict[int, list[tuple[bytes, float]]] = collections.OrderedDict()
        self.rounds: collections.deque[RoundLog] = collections.deque(maxlen=keep_rounds)
        self.current_round = 0
        self.resumed_from: int | None = None
        self.digests = {0: model_digest(model, self.codec)}
        self._keep_rounds = keep_rounds
        self.catchup_bytes = catchup_bytes  # the catch-up log's budget (default: the model's size)
        if checkpoint_dir:
            self._restore()

    # ------------------------------------------------------------------ checkpoint
    def _identity(self) -> dict:
        """What a checkpoint must agree with to be resumed by this strategy."""
        srv = dataclasses.asdict(self.server.config)
        return {
            "fingerprint": self.codec.layout.fingerprint,
            "ferret": dataclasses.asdict(self.ferret),
            "server": {k: srv[k] for k in ("seed_scheme", "base_seed", "momentum", "momentum_window")},
            "fraction_train": self.fraction_train,
            "min_train_nodes": self.min_train_nodes,
        }

    def checkpoint(self) -> str:
        """Write the run's state after the current round (atomic; see ferret_kernels.fl.checkpoint)."""
        blobs: dict[str, bytes] = {}

        def ref(b: bytes) -> str:
            name = blob_name(b)
            blobs[name] = b
            return name

        state = {
            "kind": "ferret-flower-strategy",
            "identity": self._identity(),
            "round": self.current_round,
            "digest": self.digests[self.current_round],
            "catchup": [[r, [[ref(b), a] for b, a in entry]] for r, entry in self.catchup.items()],
            "momentum": [[[ref(b), w] for b, w in entry] for entry in self.momentum_window],
            "rejected_total": self.server.rejected_total,
        }
        return save_checkpoint(self.checkpoint_dir, self.model.state_dict(), state, blobs)

    def _restore(self) -> None:
        got = load_checkpoint(self.checkpoint_dir)
        if got is None:
            return
        tensors, state, blobs = got
        if state.get("kind") != "ferret-flower-strategy":
            raise CheckpointError(
                f"{self.checkpoint_dir} holds a checkpoint of kind {state.get('kind')!r}, not a Flower strategy's"
            )
        mine = self._identity()
        theirs = state["identity"]
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise CheckpointError(
                f"checkpoint in {self.checkpoint_dir} was written by a strategy with another {', '.join(diff)}; "
                f"refusing to resume from it"
            )
        sd = self.model.state_dict()
        if set(tensors) != set(sd) or any(
            tensors[k].shape != sd[k].shape or tensors[k].dtype != sd[k].dtype for k in sd
        ):
            raise CheckpointError(f"checkpoint in {self.checkpoint_dir} holds tensors that do not fit the model")
        # everything is read and checked before the model or the strategy changes (the model had been
        # loaded before the digest and the state were checked: a bad state left it overwritten)
        try:
            missing = [n for r, e in state["catchup"] for n, _ in e if n not in blobs] + [
                n for e in state["momentum"] for n, _ in e if n not in blobs
            ]
            if missing:
                raise CheckpointError(f"checkpoint in {self.checkpoint_dir} lacks {len(missing)} update blob(s)")
            rnd = int(state["round"])
            catchup = collections.OrderedDict(
                (int(r), [(blobs[n], float(a)) for n, a in e]) for r, e in state["catchup"]
            )
            momentum = [[(blobs[n], float(w)) for n, w in e] for e in state["momentum"]]
            rejected_total = int(state["rejected_total"])
            recorded = state["digest"]
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(
                f"checkpoint in {self.checkpoint_dir} has a malformed state ({type(e).__name__}: {str(e)[:200]})"
            ) from None
        digest = model_digest(self._loaded_params(tensors), self.codec)
        if digest != recorded:
            raise CheckpointError(
                f"checkpoint in {self.checkpoint_dir}: the model's digest differs from the one recorded"
            )
        with torch.no_grad():
            self.model.load_state_dict(tensors)
        self.current_round = rnd
        self.digests = {rnd: digest}
        self.catchup = catchup
        self.momentum_window = momentum
        self.server.rejected_total = rejected_total
        self.round_of_node = {}  # nodes keep their copies per run: a restarted run sends each the model once
        self.resumed_from = rnd
        log(INFO, "resumed from the checkpoint of round %d in %s", rnd, self.checkpoint_dir)

    def _loaded_params(self, tensors: dict) -> dict:
        """The values the model's parameters would hold after load_state_dict(tensors), by layout
        name, without loading: a parameter's state-dict keys found by identity (tied weights have
        several, state-dict hooks may rename them), which must hold equal values in the file
        (load_state_dict would leave the last, and the digest recorded was of one value)."""
        keys: dict[int, list[str]] = {}
        for k, v in self.model.state_dict(keep_vars=True).items():
            keys.setdefault(id(v), []).append(k)
        out = {}
        for name, p in self.codec.layout.params(self.model).items():
            ks = keys.get(id(p), [])
            if not ks:
                raise CheckpointError(
                    f"the model's parameter {name} is not in its state dict; cannot check a checkpoint"
                )
            if any(not torch.equal(tensors[ks[0]], tensors[k]) for k in ks[1:]):
                raise CheckpointError(
                    f"checkpoint in {self.checkpoint_dir} holds different values for the tied tensors {ks}"
                )
            out[name] = tensors[ks[-1]]
        return out

    # ------------------------------------------------------------------ sampling and sending
    def _sample(self, grid: Grid, fraction: float, min_nodes: int, server_round: int, salt: int) -> list[int]:
        deadline = time.monotonic() + self.wait_for_nodes_s
        nodes = list(grid.get_node_ids())
        while len(nodes) < max(self.min_available_nodes, min_nodes) and time.monotonic() < deadline:
            time.sleep(0.5)
            nodes = list(grid.get_node_ids())
        if len(nodes) < max(self.min_available_nodes, min_nodes):
            raise RuntimeError(
                f"only {len(nodes)} nodes connected after {self.wait_for_nodes_s:.0f} s; "
                f"the strategy needs {max(self.min_available_nodes, min_nodes)}"
            )
        n = min(len(nodes), max(min_nodes, int(round(fraction * len(nodes)))))
        rng = random.Random(f"sample:{self.server.config.base_seed}:{server_round}:{salt}")  # not the bases' seeds
        return sorted(rng.sample(sorted(nodes), n))

    def _sync_records(self, node: int) -> tuple[RecordDict, bool]:
        """The records that bring `node` to the current global round (full model if needed)."""
        have = self.round_of_node.get(node)
        missed = missed_updates(self.catchup, have, self.current_round, self._model_bytes())
        full = missed is None
        rounds, updates, alphas = ([], [], []) if full else missed
        rd = RecordDict()
        if full:
            rd[MODEL] = ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})
        rd[SYNC] = ConfigRecord(
            {
                "rounds": rounds,
                "updates": updates,
                "alphas": alphas,
                "model-round": self.current_round if full else have,
            }
        )
        return rd, full

    def _model_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.state_dict().values())

    def _node_seed(self, server_round: int, node: int) -> int:
        return self.server.seed_for(server_round, node % (1 << 31))

    def _messages(self, server_round: int, nodes: list[int], config: ConfigRecord, mtype: str, log_: RoundLog | None):
        out = []
        for node in nodes:
            rd, full = self._sync_records(node)
            cfg = ConfigRecord(dict(config))
            cfg.update(
                {
                    "round": server_round,
                    "base-round": self.current_round,
                    "seed": str(self._node_seed(server_round, node)),
                    **self.ferret.to_fields(),
                }
            )
            rd[CONFIG] = cfg
            msg = Message(rd, dst_node_id=node, message_type=mtype)
            if log_ is not None:
                log_.sent_bytes[node] = content_bytes(msg, SYNC) + (
                    sum(len(a.data) for a in rd[MODEL].values()) if full else 0
                )  # model: its arrays' bytes
                if full:
                    log_.full_model_sent.append(node)
            out.append(msg)
        return out

    # ------------------------------------------------------------------ Strategy API
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        nodes = self._sample(grid, self.fraction_train, self.min_train_nodes, server_round, 0)
        seed = self.server.seed_for(server_round, 0)
        rl = RoundLog(server_round, seed, nodes, resumed=self.resumed_from == server_round - 1)
        self.rounds.append(rl)
        self.server.begin_round(server_round)
        log(INFO, "configure_train: %d nodes, base round %d", len(nodes), self.current_round)
        return self._messages(server_round, nodes, config, MessageType.TRAIN, rl)

    def _reply_update(self, rep: Message, rl: RoundLog, node: int) -> tuple[bytes, dict]:
        """The reply's update bytes and validated metrics, or DecodeError saying what is wrong."""
        if not rep.has_content():
            raise DecodeError("reply has neither content nor an error")
        content = rep.content
        rec = content.get(UPDATE)
        if not isinstance(rec, ConfigRecord):
            raise DecodeError(f"reply has no {UPDATE!r} ConfigRecord (got {type(rec).__name__})")
        data = update_bytes(rec, UPDATE)  # the record's shape is checked as on every engine (fl.replies)
        rl.update_bytes[node] = len(data)
        check_base(
            rec, base_round=self.current_round, digest=self.digests[self.current_round] if self.verify_sync else None
        )
        metrics = {}
        if "metrics" in content:
            mr = content["metrics"]
            if not isinstance(mr, MetricRecord):
                raise DecodeError(f"'metrics' is a {type(mr).__name__}, expected a MetricRecord")
            metrics = reply_metrics(mr)
        return data, metrics

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        rl = self.rounds[-1] if self.rounds and self.rounds[-1].round == server_round else None
        if rl is None:
            raise RuntimeError(f"aggregate_train for round {server_round} without configure_train")
        sampled, seen = set(rl.sampled), set()
        accepted = []  # (sha256 of the bytes, bytes, message, node, metrics)

        def refuse(node, why):
            rl.rejected[node] = why
            self.server.reject(node, why)

        for rep in replies:
            node = None
            try:
                node = int(rep.metadata.src_node_id)
                if node not in sampled:
                    refuse(node, "reply from a node that was not sampled this round")
                    continue
                if node in seen:
                    refuse(node, "a second reply from this node this round")
                    continue
                seen.add(node)
                if rep.has_error():
                    refuse(node, f"node error: {quote(rep.error.reason)}")
                    self.round_of_node.pop(node, None)  # resend the full model next time
                    continue
                try:
                    data, metrics = self._reply_update(rep, rl, node)
                except DecodeError as e:
                    refuse(node, f"malformed reply: {e}")
                    self.round_of_node.pop(node, None)
                    continue
                rl.received_bytes[node] = content_bytes(rep, UPDATE)
                self.round_of_node[node] = self.current_round  # its copy is in sync, whatever its update holds
                m = self.server.receive(
                    data, expected_seed=self._node_seed(server_round, node), round=server_round, node=node
                )
                if m is None:
                    rl.rejected[node] = self.server.rejected[-1][1]
                    continue
                accepted.append((hashlib.sha256(data).digest(), data, m, node, metrics))
            except Exception as e:  # noqa: BLE001 - nothing one reply holds may end the round
                refuse(node, f"reply could not be processed ({type(e).__name__}: {str(e)[:200]})")
        rl.missing = sorted(sampled - seen)
        accepted.sort(key=lambda a: a[0])  # arrival order must not change the result (float sums)
        msgs = [m for _, _, m, _, _ in accepted]
        rl.accepted = {node: data for _, data, _, node, _ in accepted}
        if rl.missing:
            log(WARNING, "round %d: no reply from %d node(s): %s", server_round, len(rl.missing), rl.missing[:10])
        self._apply_round(server_round, msgs)
        rl.digest = self.digests[self.current_round]
        out = MetricRecord(
            {
                "accepted": len(msgs),
                "rejected": len(rl.rejected),
                "mean-update-bytes": (sum(rl.received_bytes.values()) / max(len(rl.received_bytes), 1)),
            }
        )
        shares = capped_shares([m.weight for m in msgs], self.server.config.max_share)
        losses = [(a[4].get("train-loss"), s) for a, s in zip(accepted, shares) if a[4].get("train-loss") is not None]
        if losses and sum(s for _, s in losses) > 0:
            out["train-loss"] = sum(v * s for v, s in losses) / sum(s for _, s in losses)
        if self.checkpoint_dir:
            self.checkpoint()
        if self.on_round:
            self.on_round(rl)
        return None, out

    @torch.no_grad()
    def _apply_round(self, server_round: int, msgs) -> None:
        """Aggregate in coefficient space, encode what is applied, and apply those very bytes.

        Under the shared seed one aggregate of every accepted update (whatever its K); under
        per-client seeds each (clipped) update; each with its share. Nothing of the strategy's
        state changes before the model is updated."""
        lr = self.server.lr_at(server_round)
        # heavy-ball momentum in coefficient space: lr_t * sum_age beta^age * U_(t-age) (fl.sync)
        entry, window = aggregate_round(self.server, self.model, msgs, server_round, self.momentum_window)
        self.momentum_window = window
        self.current_round = server_round
        self.rounds[-1].applied = entry
        self.digests[server_round] = model_digest(self.model, self.codec)
        while len(self.digests) > self._keep_rounds:
            del self.digests[min(self.digests)]
        self.catchup[server_round] = entry
        # beyond the model's size a lagging node gets the model: the log never holds more
        budget = min(self._model_bytes(), self.catchup_bytes or self._model_bytes())
        self.round_of_node = trim_catchup(self.catchup, budget, self.round_of_node, server_round + 1)
        log(INFO, "round %d: applied %d update(s) from %d node(s), lr %.4g", server_round, len(entry), len(msgs), lr)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        if self.fraction_evaluate == 0:
            return []
        nodes = self._sample(grid, self.fraction_evaluate, self.min_evaluate_nodes, server_round, 1)
        self._evaluate_nodes = set(nodes)
        return self._messages(server_round, nodes, config, MessageType.EVALUATE, None)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Means of the scalar metrics of well-formed replies (others are skipped and logged), each
        node weighted by its claimed examples with the weights capped as the training shares are
        (`max_share`, capped_shares; all zero: equal weights): one node claiming 2^53 examples set
        the round's metrics, and 1e300 overflowed their sum to inf."""
        got, seen = [], set()
        for rep in replies:
            try:
                node = int(rep.metadata.src_node_id)
                if node not in getattr(self, "_evaluate_nodes", set()) or node in seen:
                    continue
                seen.add(node)
                if rep.has_error() or not rep.has_content() or not isinstance(rep.content.get("metrics"), MetricRecord):
                    continue
                mr = rep.content["metrics"]
                n = number(mr, "num-examples", lo=0, hi=MAX_WEIGHT)
                n = 1.0 if n is None else n
                vals = {k: number(mr, k) for k in mr if k != "num-examples" and not isinstance(mr[k], list)}
                self.round_of_node[node] = self.current_round
            except Exception as e:  # noqa: BLE001
                log(WARNING, "round %d: skipped the evaluate reply of a node: %s", server_round, quote(e))
                continue
            got.append((n, vals))
        if not got:
            return None
        terms: dict[str, list[tuple[float, float]]] = {}
        for (_, vals), share in zip(got, capped_shares([n for n, _ in got], self.server.config.max_share)):
            for k, v in vals.items():
                terms.setdefault(k, []).append((share, v))
        out = {}
        for k, tv in terms.items():
            tot = math.fsum(s for s, _ in tv)
            if tot > 0:  # shares sum to at most 1 and the values are finite (number): so is the mean
                out[k] = math.fsum(s * v for s, v in tv) / tot
        return MetricRecord(out) if out else None

    def summary(self) -> None:
        f, s = self.ferret, self.server.config
        log(
            INFO,
            "\t├── Ferret: K=%d per block, block size %d, %s, adaptive=%s, full below %d elements, wire %s",
            f.num_bases,
            f.block_size,
            f.dist,
            f.adaptive,
            f.full_threshold,
            f.wire_dtype,
        )
        log(INFO, "\t├── layout: %s", self.codec.layout)
        log(
            INFO,
            "\t├── server: lr %g (%s), momentum %g, clip %s / %s x median, max norm %s, max share %g, seeds %s, weighting %s",
            s.lr,
            s.schedule,
            s.momentum,
            s.clip_norm,
            s.clip_relative,
            s.max_norm,
            s.max_share,
            s.seed_scheme,
            s.weighting,
        )
        log(
            INFO,
            "\t└── checkpoint: %s%s",
            self.checkpoint_dir or "none",
            f" (resumed after round {self.resumed_from})" if self.resumed_from is not None else "",
        )

    def start(
        self,
        grid: Grid,
        initial_arrays: ArrayRecord | None = None,
        num_rounds: int = 3,
        timeout: float = 3600,
        train_config: ConfigRecord | None = None,
        evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Flower's Strategy.start contract, with the global model owned by the strategy.

        Parameters
        ----------
        grid : Grid
            Sends messages to and receives replies from the nodes' ClientApps.
        initial_arrays : ArrayRecord, optional
            The initial global model. Loaded into `model` (same keys and shapes, else
            ValueError) before round 1; None keeps `model` as it is. A strategy resumed from
            a checkpoint keeps the checkpoint's model and ignores it (logged).
        num_rounds : int
            Rounds current_round + 1 .. num_rounds run (all of them unless resumed).
        timeout : float
            Seconds each round waits for replies; nodes that miss it are logged as missing and
            the round goes on without them.
        train_config, evaluate_config : ConfigRecord, optional
            Sent to the nodes with every train / evaluate message under the user's own keys.
        evaluate_fn : Callable[[int, ArrayRecord], MetricRecord | None], optional
            Central evaluation, as in Flower: called with the round and the global model's
            arrays before the first round (round 0, unless resumed) and after every round.

        Returns
        -------
        Result
            The final global model's arrays and the per-round train / evaluate metrics.
        """
        log(INFO, "Starting %s: rounds %d..%d", type(self).__name__, self.current_round + 1, num_rounds)
        self.summary()
        if initial_arrays is not None:
            if self.current_round > 0:
                log(
                    INFO,
                    "resumed at round %d: initial_arrays ignored, the checkpoint's model is used",
                    self.current_round,
                )
            else:
                self._load_initial(initial_arrays)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        result = Result()

        def central(rnd: int) -> None:
            res = evaluate_fn(rnd, self._arrays())
            if res is not None:
                log(INFO, "Global evaluation: %s", res)
                result.evaluate_metrics_serverapp[rnd] = res

        if evaluate_fn and self.current_round == 0:
            central(0)
        empty = ArrayRecord()
        for rnd in range(self.current_round + 1, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", rnd, num_rounds)
            replies = grid.send_and_receive(self.configure_train(rnd, empty, train_config, grid), timeout=timeout)
            _, metrics = self.aggregate_train(rnd, replies)
            if metrics is not None:
                log(INFO, "\t└──> Aggregated MetricRecord: %s", metrics)
                result.train_metrics_clientapp[rnd] = metrics
            ev = self.configure_evaluate(rnd, empty, evaluate_config, grid)
            if ev:
                agg = self.aggregate_evaluate(rnd, grid.send_and_receive(ev, timeout=timeout))
                if agg is not None:
                    result.evaluate_metrics_clientapp[rnd] = agg
            if evaluate_fn:
                central(rnd)
        result.arrays = self._arrays()
        return result

    def _arrays(self) -> ArrayRecord:
        return ArrayRecord({k: v.detach().cpu() for k, v in self.model.state_dict().items()})

    @torch.no_grad()
    def _load_initial(self, arrays: ArrayRecord) -> None:
        """Load Flower's initial arrays into the global model; every key and shape is checked
        before anything is copied (a mismatch leaves the model as it was)."""
        state = arrays.to_torch_state_dict()
        own = self.model.state_dict()
        missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
        if missing or extra:
            raise ValueError(f"initial_arrays do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
        bad = [k for k in own if tuple(own[k].shape) != tuple(state[k].shape)]
        if bad:
            k = bad[0]
            raise ValueError(
                f"initial_arrays[{k!r}] has shape {tuple(state[k].shape)}, the model's is {tuple(own[k].shape)}"
            )
        self.model.load_state_dict(state)
        self.digests = {0: model_digest(self.model, self.codec)}
