"""Server side of Ferret: validation, weighting, clipping, aggregation, learning-rate
schedules and momentum in coefficient space, and the seed schemes.

Contract (docs/threat_model.md): `receive` takes a client's bytes and returns a validated
UpdateMessage, or None with the rejection recorded as (node, reason) in a bounded log; it
never raises for anything a client sends and never changes the model. A message is
accepted only if it decodes canonically (message.decode), fits the layout and K bound, has
the server's dist, the round being collected (older: stale; other clients' ids:
replayed), the seed assigned to it, a norm within `max_norm`, and is the first from its
client this round. `step` validates everything before it touches the model or its own
state, so a failed step leaves both as they were.

- Weights (documented policy): "examples" uses each client's claimed example count, at
  most 2^53 (decode refuses more); "equal" ignores claims. Either way, no client's share of
  a round exceeds `max_share` (default 1/2) when two or more updates are accepted: excess
  share goes to the others in proportion to their weights (water-filling). One client
  claiming 1e300 examples gets half a two-client round, not all of it.
- Magnitudes (bounded by default): an update whose norm exceeds `max_norm` (1e4) is
  refused; each accepted update is scaled down to at most `clip_relative` (4) times the
  round's median update norm (it binds with three or more updates: with two the median
  is their mean) and, if set, to `clip_norm`. Norms are measured on the coefficients,
  which keep the update's norm in expectation (a JL sketch), each block's weighted by
  sqrt(K / k_b) (`UpdateMessage.step_norm`): a block's reconstruction is scaled by 1/sqrt(k_b),
  so without the weight a client sending K' = 1 would step sqrt(K) times past the bounds.
- seed_scheme "shared": one seed per round for all clients; coefficients are averaged (also
  across different K: basis k of a block does not depend on K, so smaller-K updates are
  zero-padded) and reconstructed once; the broadcast is one aggregate message.
- seed_scheme "per_client": a fresh seed per client; each update is reconstructed in its
  own fused in-place pass.
- momentum (heavy ball, beta): the update applied in round t is sum_s beta^(t-s) U_s, where
  U_s is round s's aggregate. It is kept as the coefficient sets of the last
  `momentum_window` rounds and re-reconstructed, so no model-sized buffer is needed; terms
  older than the window are dropped (truncated momentum).
- aggregator (robust aggregation, shared seed only; fl/robust.py): "mean" (the default above)
  or "median", "trimmed_mean" (`trim` per end), "krum" / "multi_krum" (`krum_f`,
  `multi_krum_m`) over the clipped updates' vectors, equally weighted; the broadcast is one
  message with weight 1. Per-client seeds are refused: their coefficients are in different
  bases, so a coordinate-wise rule would compare unrelated numbers.
- client-level DP (`dp_clip` set; fl/privacy.py, docs/privacy.md): every accepted update must
  use the server's K in every block; the round releases (sum_i clip(x_i, dp_clip) +
  N(0, (dp_noise_multiplier dp_clip)^2)) / dp_expected_clients as its one broadcast message,
  also when no update was accepted. `clip_relative`, `clip_norm`, `weighting` and `max_share`
  do not apply under DP (they depend on other clients' updates or claims and would break the
  sensitivity bound); `max_norm` refusals still do (they depend on the client alone). With
  dp_mode "client" the clients clip and noise (privacy.privatize_update) and the server adds
  none. broadcast() and step() of one round use the same noise (one key per round).
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import math
import statistics
from dataclasses import dataclass

import torch

from . import privacy, robust
from .aggregate import aggregate, block_scale, heavy_ball
from .codec import UpdateCodec
from .message import WIRE_DTYPES, DecodeError, UpdateMessage, decode, encode

log = logging.getLogger("ferret_kernels.fl")


@dataclass
class ServerConfig:
    lr: float = 1.0
    schedule: str = "constant"  # constant | cosine | linear | step
    rounds: int = 1  # for the cosine / linear schedules
    step_gamma: float = 0.5  # step schedule: lr * gamma^(round // step_every)
    step_every: int = 10
    momentum: float = 0.0
    momentum_window: int = 8
    clip_norm: float | None = None  # absolute bound each update is scaled down to
    # Why 4: in the BlobTask loop of tests/test_fl.py (8 rounds x 4 clients, shared and
    # per-client seeds) honest updates stayed within 0.58-1.35x of their round's median norm,
    # so a 4x bound clips none of them, while one hostile update moves a round of n by at
    # most 4/n of a typical update's norm.
    clip_relative: float | None = 4.0
    # Why 1e4: the same honest updates measured 0.14-0.88, and a whole LLM's parameters have a
    # norm of ~1e3 (7B values of ~0.02). An update above it is refused, not applied; below it
    # every element moves by at most 6 x 1e4 x lr (fits fp16's 65504 at lr <= 1).
    max_norm: float | None = 1e4
    max_share: float = 0.5  # the largest share of a round one client can get (with >= 2 updates)
    weighting: str = "examples"  # examples (claimed, bounded) | equal
    seed_scheme: str = "shared"  # shared | per_client
    base_seed: int = 0
    max_rejections_logged: int = 1000  # the rejection log keeps the latest ones; a counter keeps the total
    aggregator: str = "mean"  # mean | median | trimmed_mean | krum | multi_krum (robust ones: shared seed only)
    trim: int = 1  # trimmed_mean: values dropped at each end per coordinate (clamped to (n - 1) // 2)
    krum_f: int = 1  # krum / multi_krum: the number of Byzantine clients assumed
    multi_krum_m: int | None = None  # multi_krum: updates averaged (default n - krum_f)
    dp_clip: float | None = None  # client-level DP: each update's norm bound C (None: no DP)
    dp_noise_multiplier: float = 0.0  # sigma: noise std sigma * C on the sum
    dp_expected_clients: int | None = None  # m, the fixed denominator (expected clients per round)
    dp_mode: str = "server"  # server: the server clips and noises | client: clients do (privacy.privatize_update)
    dp_seed: int | None = None  # None: fresh OS entropy per round; an int: reproducible noise (experiments only)
    dp_delta: float = 1e-5  # the delta at which epsilon is reported

    def __post_init__(self):
        if self.schedule not in ("constant", "cosine", "linear", "step"):
            raise ValueError(f"unknown schedule {self.schedule!r}")
        if self.weighting not in ("examples", "equal"):
            raise ValueError(f"unknown weighting {self.weighting!r}")
        if self.seed_scheme not in ("shared", "per_client"):
            raise ValueError(f"unknown seed_scheme {self.seed_scheme!r}")
        if not 0 <= self.momentum < 1:
            raise ValueError("momentum must be in [0, 1)")
        if not 0 < self.max_share <= 1:
            raise ValueError("max_share must be in (0, 1]")
        for name in ("clip_norm", "clip_relative", "max_norm"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive finite number or None, got {v}")
        if not math.isfinite(self.lr):
            raise ValueError("lr must be finite")
        if self.momentum_window < 1 or self.max_rejections_logged < 1:
            raise ValueError("momentum_window and max_rejections_logged must be at least 1")
        if self.aggregator not in robust.AGGREGATORS:
            raise ValueError(f"unknown aggregator {self.aggregator!r} (one of {robust.AGGREGATORS})")
        if self.aggregator != "mean" and self.seed_scheme != "shared":
            raise ValueError(
                f"aggregator {self.aggregator!r} needs seed_scheme 'shared': under per-client seeds each "
                "client's coefficients are in its own random bases, so coordinates cannot be compared"
            )
        if self.trim < 0 or self.krum_f < 0 or (self.multi_krum_m is not None and self.multi_krum_m < 1):
            raise ValueError("trim and krum_f must be >= 0 and multi_krum_m >= 1")
        if self.dp_mode not in ("server", "client"):
            raise ValueError(f"unknown dp_mode {self.dp_mode!r} (server, client)")
        if not (math.isfinite(self.dp_noise_multiplier) and self.dp_noise_multiplier >= 0):
            raise ValueError(f"dp_noise_multiplier must be finite and >= 0, got {self.dp_noise_multiplier}")
        if self.dp_clip is None:
            if self.dp_noise_multiplier > 0:
                raise ValueError("dp_noise_multiplier needs dp_clip (the noise is calibrated to the clip bound)")
        else:
            if not (math.isfinite(self.dp_clip) and self.dp_clip > 0):
                raise ValueError(f"dp_clip must be a positive finite number or None, got {self.dp_clip}")
            if self.dp_expected_clients is None or int(self.dp_expected_clients) != self.dp_expected_clients:
                raise ValueError("dp_clip needs dp_expected_clients, the fixed denominator (an integer >= 1)")
            if self.dp_expected_clients < 1:
                raise ValueError(f"dp_expected_clients must be >= 1, got {self.dp_expected_clients}")
            if self.seed_scheme != "shared":
                raise ValueError(
                    "client-level DP needs seed_scheme 'shared': the noise is added in the shared coefficient space"
                )
            if self.aggregator != "mean":
                raise ValueError(
                    f"client-level DP is defined for the mean; aggregator {self.aggregator!r} has another sensitivity"
                )
            if not 0 < self.dp_delta < 1:
                raise ValueError(f"dp_delta must be in (0, 1), got {self.dp_delta}")

    @property
    def dp(self) -> bool:
        return self.dp_clip is not None


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def capped_shares(weights: list[float], max_share: float) -> list[float]:
    """Normalized shares, none above max(max_share, 1/n): water-filling, in input order.

    Weights are clamped to [0, 2^53] (decode already refuses more; this keeps the sums finite
    for messages built in code). All zero: equal shares. When every client below the cap
    claims 0, the shares sum to less than 1 (the capped excess is dropped, never given to
    the capped client)."""
    n = len(weights)
    if n == 0:
        return []
    w = [min(max(float(x), 0.0), 2.0**53) if math.isfinite(float(x)) else 0.0 for x in weights]
    if not any(w):
        w = [1.0] * n
    cap = max(max_share, 1.0 / n)
    share = [0.0] * n
    free = [i for i in range(n) if w[i] > 0]
    budget = 1.0
    while free and budget > 0:
        tot = math.fsum(w[i] for i in free)
        over = [i for i in free if w[i] / tot * budget > cap]  # ratio first: budget * w underflows for w ~ 1e-323
        if not over:
            for i in free:
                share[i] = w[i] / tot * budget
            break
        for i in over:
            share[i] = cap
        budget -= cap * len(over)
        free = [i for i in free if i not in over]
    return share


class FerretServer:
    def __init__(self, codec: UpdateCodec, config: ServerConfig):
        self.codec = codec
        self.config = config
        self.history: list[list[tuple[UpdateMessage, float]]] = []  # momentum window
        self.rejected: collections.deque[tuple[str, str]] = collections.deque(maxlen=config.max_rejections_logged)
        self.rejected_total = 0
        self.round = 0  # the round being collected: receive() expects its messages
        self._seen: set[tuple[int, str]] = set()
        self._logged_this_round = 0
        self._noise_key: tuple[int, int] | None = None  # (round, key): broadcast and step draw the same noise
        if config.dp and codec.config.adaptive:
            raise ValueError(
                "client-level DP needs a uniform K: adaptive K sets k_b from the block norms, which would leak"
            )

    def seed_for(self, round: int, client: int = 0) -> int:
        """The round's shared seed, or a client's own seed under the per-client scheme."""
        c = client if self.config.seed_scheme == "per_client" else 0
        return splitmix64(splitmix64(self.config.base_seed ^ (round << 20)) ^ c)

    def lr_at(self, round: int) -> float:
        c = self.config
        if c.schedule == "constant":
            return c.lr
        if c.schedule == "cosine":
            return c.lr * 0.5 * (1 + math.cos(math.pi * min(round, c.rounds) / max(c.rounds, 1)))
        if c.schedule == "linear":
            return c.lr * max(0.0, 1 - round / max(c.rounds, 1))
        return c.lr * c.step_gamma ** (round // c.step_every)

    def begin_round(self, round: int) -> None:
        """Collect `round` next: receive() expects its messages; one update per client per round."""
        self.round = int(round)
        self._seen = {k for k in self._seen if k[0] >= self.round}
        self._logged_this_round = 0

    # ------------------------------------------------------------------ validation
    def reject(self, node, reason: str) -> None:
        """Record a rejection (bounded log + total count) and log it (at most 20 lines a round)."""
        node = str(node)
        self.rejected.append((node, reason))
        self.rejected_total += 1
        self._logged_this_round += 1
        if self._logged_this_round <= 20:
            log.warning("round %d: rejected the update of node %s: %s", self.round, node, reason)
        elif self._logged_this_round == 21:
            log.warning("round %d: more rejections this round are counted but not logged", self.round)

    def receive(
        self, data, *, expected_seed: int | None = None, round: int | None = None, node=None
    ) -> UpdateMessage | None:
        """Decode and validate one client's message for `round` (default: the round being
        collected) from `node` (its id must match the message's, if given). A bad one is
        recorded with the node and the reason, and returns None."""
        rnd = self.round if round is None else int(round)
        if expected_seed is None:
            if self.config.seed_scheme == "per_client":
                raise ValueError("with per-client seeds, receive() needs the client's expected_seed")
            expected_seed = self.seed_for(rnd)
        who = "" if node is None else str(node)
        try:
            msg = decode(data, self.codec.layout, max_bases=self.codec.config.max_bases)
            self.codec.check(msg)
            who = who or msg.client
            if msg.dist != self.codec.config.dist:
                raise DecodeError(f"message dist {msg.dist} differs from the server's {self.codec.config.dist}")
            if msg.round != rnd:
                raise DecodeError(
                    f"message is for round {msg.round}, the server collects round {rnd} "
                    f"({'stale or replayed' if msg.round < rnd else 'from the future'})"
                )
            if node is not None and msg.client != str(node):
                raise DecodeError(
                    f"message names client {msg.client!r} but came from node {node} (replayed or forwarded)"
                )
            if msg.seed != expected_seed:
                raise DecodeError(f"message seed {msg.seed} is not the one assigned ({expected_seed})")
            if self.config.dp and (
                msg.num_bases != self.codec.config.num_bases
                or (msg.active.numel() and int(msg.active.min()) != msg.num_bases)
            ):
                raise DecodeError(
                    f"under DP every update must use K={self.codec.config.num_bases} in every block "
                    f"(got K={msg.num_bases} with {int((msg.active < msg.num_bases).sum())} blocks below it)"
                )
            norm = msg.step_norm(self.codec.config.num_bases)
            if self.config.max_norm is not None and not norm <= self.config.max_norm:
                raise DecodeError(
                    f"update norm {norm:.4g} exceeds the server's bound max_norm={self.config.max_norm:g}"
                )
            # one update per client per round; updates that name no client and come from no node
            # count as one unnamed client (they were not counted: one sender could send any number)
            key = (rnd, msg.client or who)
            if key in self._seen:
                raise DecodeError(
                    f"a second update from client {key[1]!r} in round {rnd}"
                    if key[1]
                    else f"a second update from an unnamed client in round {rnd} (name the clients: "
                    "compress(..., client=...) or receive(..., node=...))"
                )
            self._seen.add(key)
        except (DecodeError, ValueError) as e:
            self.reject(who, str(e))
            return None
        except Exception as e:  # noqa: BLE001 - a validator bug must not end the round; recorded as a rejection
            self.reject(who, f"internal error while validating ({type(e).__name__}: {str(e)[:200]})")
            return None
        return msg

    # ------------------------------------------------------------------ aggregation
    def _scaled(self, msg: UpdateMessage, f: float) -> UpdateMessage:
        if f >= 1.0:
            return msg
        return dataclasses.replace(msg, coeffs=msg.coeffs * f, full={k: v * f for k, v in msg.full.items()})

    def aggregate(self, messages: list[UpdateMessage]) -> list[tuple[UpdateMessage, float]]:
        """Clipped messages with their shares (capped weights; they sum to 1 or a little less)."""
        if not messages:
            return []
        for m in messages:
            self.codec.check(m)
        c = self.config
        if c.dp:  # fixed shares 1/m; clipped to C by the server in server mode (see the module docstring)
            share = 1.0 / c.dp_expected_clients
            if c.dp_mode == "client":
                return [(m, share) for m in messages]
            return [(privacy.clip_message(m, c.dp_clip)[0], share) for m in messages]
        claims = [m.weight if c.weighting == "examples" else 1.0 for m in messages]
        shares = capped_shares(claims, c.max_share)
        norms = [m.step_norm(self.codec.config.num_bases) for m in messages]  # the step each makes
        bound = math.inf
        if c.clip_norm is not None:
            bound = c.clip_norm
        if c.clip_relative is not None and len(messages) >= 2:
            bound = min(bound, c.clip_relative * statistics.median(norms))
        out = []
        for m, s, n in zip(messages, shares, norms):
            out.append((self._scaled(m, bound / n if n > bound else 1.0), s))
        return out

    def _group_message(self, members: list[tuple[UpdateMessage, float]], round: int) -> UpdateMessage:
        """One message for updates sharing a seed: sum_i (share_i / total) * update_i, zero-padded
        to the largest K; its weight is the group's total share."""
        tot = math.fsum(s for _, s in members)
        if len(members) == 1:
            m, s = members[0]
            return dataclasses.replace(m, weight=s, client="server", round=round)
        dense, active, full, K = aggregate([(m, s / tot) for m, s in members])
        return self._server_message(members[0][0], dense, active, full, K, tot, round)

    def _server_message(
        self, first: UpdateMessage, dense, active, full: dict, K: int, weight: float, round
    ) -> UpdateMessage:
        """A message the server makes from aggregated, block-scaled coefficients `dense`
        [blocks, K]: re-expressed in the message's convention (coefficients carry s_b once),
        in the wire dtype unless a value would overflow it (fp16: 65504), then exactly."""
        dense = dense / torch.where(active > 0, block_scale(active), torch.ones(1))[:, None]
        mask = torch.arange(K)[None, :] < active[:, None].to(torch.int64)
        coeffs = dense[mask]
        wire = self.codec.config.wire_dtype
        lim = torch.finfo(WIRE_DTYPES[wire]).max
        if any(bool((t.abs() > lim).any()) for t in [coeffs, *full.values()]):
            wire = "float32"
        return UpdateMessage(
            first.fingerprint,
            first.seed,
            first.dist,
            K,
            first.block_size,
            active,
            coeffs,
            full,
            weight,
            round,
            "server",
            wire,
        )

    def broadcast(self, messages: list[UpdateMessage], round: int | None = None) -> list[UpdateMessage]:
        """What clients need to apply the round themselves: one message per seed (under the
        shared seed, one aggregate of all updates, whatever their K), each with its total share
        as weight. Applying them with lr * weight, unnormalized, is the round's step."""
        rnd = self.round if round is None else round
        if self.config.dp:
            return [self._dp_release(messages, rnd)]
        agg = self.aggregate(messages)
        if self.config.aggregator != "mean":
            return [self._robust_message(agg, rnd)] if agg else []
        groups: dict = {}
        for m, s in agg:
            groups.setdefault((m.seed, m.dist), []).append((m, s))
        return [self._group_message(members, rnd) for members in groups.values()]

    @torch.no_grad()
    def step(self, module, messages: list[UpdateMessage], round: int) -> list[UpdateMessage] | None:
        """Apply one round: w <- w - lr_t * (U_t + beta U_{t-1} + ...), in place.

        Everything is validated first (messages, their round, the weights); on error nothing
        is changed: neither the model nor the momentum history nor the round. Returns the
        broadcast messages it applied under DP or a robust aggregator (what clients are sent,
        so a caller need not aggregate again), None under the plain mean."""
        for m in messages:
            self.codec.check(m)
            if m.round != round:
                raise ValueError(f"update of client {m.client!r} is for round {m.round}, not {round}")
        sent = None
        if self.config.dp or self.config.aggregator != "mean":
            # the very message broadcast (noised or robustly aggregated) is what is applied
            sent = self.broadcast(messages, round)
            agg = [(b, b.weight) for b in sent]
        else:
            agg = self.aggregate(messages)
        lr = self.lr_at(round)
        factors, history = heavy_ball(self.history, agg, self.config.momentum, self.config.momentum_window)
        terms = [(entry, lr * f) for entry, f in factors]
        for entry, a in terms:
            if not math.isfinite(a) or not all(math.isfinite(s) and s >= 0 for _, s in entry):
                raise ValueError("step sizes and shares must be finite")
        for entry, a in terms:
            self.codec.apply(module, [m for m, _ in entry], lr=a, weights=[s for _, s in entry], normalize=False)
        self.history = history
        self.begin_round(round + 1)
        return sent

    def _template(self, round: int) -> UpdateMessage:
        """An all-zero message of the round's shared seed with the server's K in every block."""
        lay, cfg = self.codec.layout, self.codec.config
        K = cfg.num_bases
        return UpdateMessage(
            lay.fingerprint,
            self.seed_for(round),
            cfg.dist,
            K,
            lay.block_size,
            torch.full((lay.total_blocks,), K, dtype=torch.int32),
            torch.zeros(lay.total_blocks * K),
            {s.name: torch.zeros(s.shape) for s in lay.full},
            1.0,
            round,
            "server",
            "float32",
        )

    def _noise(self, round: int) -> torch.Generator:
        """The round's noise generator: from dp_seed (reproducible) or one OS-random key per round,
        kept until the next round so broadcast() and step() of a round add the same noise."""
        c = self.config
        if c.dp_seed is not None:
            return privacy.noise_generator(splitmix64(splitmix64(c.dp_seed) ^ int(round)))
        if self._noise_key is None or self._noise_key[0] != round:
            self._noise_key = (round, int(privacy.noise_generator(None).initial_seed()))
        return privacy.noise_generator(self._noise_key[1])

    def _dp_release(self, messages: list[UpdateMessage], round: int) -> UpdateMessage:
        c = self.config
        for m in messages:
            self.codec.check(m)
        return privacy.dp_aggregate(
            messages,
            template=self._template(round),
            clip=c.dp_clip if c.dp_mode == "server" else None,
            noise_std=c.dp_noise_multiplier * c.dp_clip if c.dp_mode == "server" else 0.0,
            denominator=c.dp_expected_clients,
            generator=self._noise(round),
            round=round,
        )

    def _robust_message(self, agg: list[tuple[UpdateMessage, float]], round: int) -> UpdateMessage:
        """The robust aggregate of the clipped updates (claimed shares ignored) as one message of
        weight 1. Rows: each update's scaled dense coefficients s_b gamma_b zero-padded to the
        largest K (the space reconstruction is linear in), then its full deltas."""
        c = self.config
        msgs = [m for m, _ in agg]
        if len({(m.seed, m.dist) for m in msgs}) != 1:
            raise ValueError("robust aggregation needs every update under the round's one shared seed and dist")
        K = max(m.num_bases for m in msgs)
        names = sorted(msgs[0].full)
        rows = [
            torch.cat(
                [(m.dense(K) * block_scale(m.active)[:, None]).double().reshape(-1)]
                + [m.full[k].double().reshape(-1) for k in names]
            )
            for m in msgs
        ]
        X, n = torch.stack(rows), len(rows)
        if c.aggregator == "median":
            v = robust.median(X)
        elif c.aggregator == "trimmed_mean":
            t = min(c.trim, (n - 1) // 2)
            if t < c.trim:
                log.warning("round %d: trimmed mean of %d updates drops %d per end, not %d", round, n, t, c.trim)
            v = robust.trimmed_mean(X, t)
        else:
            if n < 2 * c.krum_f + 3:
                log.warning("round %d: %d updates, fewer than Krum's 2f + 3 = %d", round, n, 2 * c.krum_f + 3)
            m_sel = 1 if c.aggregator == "krum" else min(c.multi_krum_m or max(n - c.krum_f, 1), n)
            v = robust.multi_krum(X, c.krum_f, m_sel)
        nb = msgs[0].active.numel()
        active = torch.stack([m.active.to(torch.int32) for m in msgs]).amax(0)
        dense = v[: nb * K].reshape(nb, K).float()
        off, full = nb * K, {}
        for k in names:
            t = msgs[0].full[k]
            full[k] = v[off : off + t.numel()].reshape(t.shape).float()
            off += t.numel()
        return self._server_message(msgs[0], dense, active, full, K, 1.0, round)

    # ------------------------------------------------------------------ checkpoint state
    def state(self) -> dict:
        """JSON-able state plus the momentum history as encoded (float32, exact) messages."""
        hist = [[(encode(dataclasses.replace(m, wire_dtype="float32")), s) for m, s in entry] for entry in self.history]
        return {"round": self.round, "rejected_total": self.rejected_total, "history": hist}

    def load_state(self, state: dict) -> None:
        lay, kmax = self.codec.layout, self.codec.config.max_bases
        hist = [[(decode(b, lay, max_bases=kmax), float(s)) for b, s in entry] for entry in state["history"]]
        self.history, self.round, self.rejected_total = hist, int(state["round"]), int(state["rejected_total"])
        self._seen = set()
