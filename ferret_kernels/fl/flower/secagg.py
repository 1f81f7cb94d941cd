"""Ferret under Flower's SecAgg+ (docs/privacy.md, "Secure aggregation"): the server learns only
the mean of the clients' coefficient vectors, never one client's.

Contract. Under the shared seed a client's update is the vector x_i = [gamma_i (K coefficients
in every block, message convention), full-tensor deltas in sorted name order]
(`update_ndarrays`). Flower's SecAgg+ workflow (`flwr.server.workflow.SecAggPlusWorkflow`,
client side `flwr.client.mod.secaggplus_mod`) quantizes each client's `[w_i, w_i x_i]` to
integers (stochastic rounding after clipping every value to [-clipping_range,
clipping_range]), masks it, and unmasks only the sum, so the server gets
sum_i w_i x_i / sum_i w_i, with clients that dropped after sharing their keys removed.
Clients send weight 1: the mean over the clients that completed the round.

- `FerretSecAggStrategy` is a legacy `flwr.server.strategy.Strategy` because the SecAgg+
  workflow in flwr 1.42 drives one through a `LegacyContext` (`configure_fit`,
  `aggregate_fit`); FerretStrategy (the Message-API strategy) cannot be used with it. Its
  `aggregate_fit` turns the unmasked mean back into an UpdateMessage under the round's seed,
  checks it (`UpdateCodec.check`: layout, K, finite values) and applies it with the server
  learning rate; the new global model goes back to Flower as the round's parameters.
- `ferret_secagg_train` is the client half: it loads the global model from the FitIns, trains,
  compresses under the seed in the FitIns config, and replies with a FitRes whose parameters
  are x_i.

What the server can no longer do (it never sees one update): validate or clip individual
updates (the checks of docs/threat_model.md G1-G7 apply to the unmasked mean only: a mean with
NaN or Inf, another shape, or a norm above ServerConfig.max_norm is refused whole and the round
applies nothing); robust aggregation. A client controls the integers it masks (the quantizer
runs on the client; numpy turns a NaN into -2^31), so one client can move each coordinate of
the mean by up to modulus_range x 2 clipping_range / quantization_range / n (16,384 / n with
Flower's defaults), not only by the clip range. The model travels in full to every sampled node every round
(the legacy workflow's FitIns), only the uplink is K numbers per block. Fixed-point error: one
client's value has stochastic-rounding error below 2 clipping_range / quantization_range
(16 / 2^22 = 3.8e-6 with Flower's defaults), unbiased, so the mean's error per coordinate is
below that too; values beyond clipping_range are clipped, so choose it above the largest
coefficient (honest coefficients are of the order ||delta_b|| / sqrt(K)).
"""

from __future__ import annotations

import numpy as np
import torch

from ..codec import FerretConfig, UpdateCodec
from ..message import UpdateMessage
from ..server import FerretServer, ServerConfig


def update_ndarrays(msg: UpdateMessage) -> list[np.ndarray]:
    """x_i as Flower NDArrays: [coefficients (float32, all K in every block), full deltas sorted by name]."""
    if msg.active.numel() and int(msg.active.min()) != msg.num_bases:
        raise ValueError("a SecAgg+ update must use K bases in every block (the sum needs one shape)")
    return [msg.coeffs.float().numpy()] + [msg.full[k].float().numpy() for k in sorted(msg.full)]


def message_from_ndarrays(arrays, codec: UpdateCodec, seed: int, round: int) -> UpdateMessage:
    """The UpdateMessage under `seed` whose vector is `arrays` (checked against the codec)."""
    lay, cfg = codec.layout, codec.config
    names = sorted(s.name for s in lay.full)
    if len(arrays) != 1 + len(names):
        raise ValueError(f"expected {1 + len(names)} arrays (coefficients and full tensors), got {len(arrays)}")
    K = cfg.num_bases
    full = {}
    for n, a, s in zip(names, arrays[1:], sorted(lay.full, key=lambda s: s.name)):
        full[n] = torch.as_tensor(np.asarray(a, dtype=np.float32)).reshape(s.shape)
    msg = UpdateMessage(
        lay.fingerprint,
        seed,
        cfg.dist,
        K,
        lay.block_size,
        torch.full((lay.total_blocks,), K, dtype=torch.int32),
        torch.as_tensor(np.asarray(arrays[0], dtype=np.float32)).reshape(-1),
        full,
        1.0,
        round,
        "server",
        "float32",
    )
    codec.check(msg)
    return msg


def _state_ndarrays(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().cpu().float().numpy() for v in model.state_dict().values()]


def _load_ndarrays(model: torch.nn.Module, arrays) -> None:
    sd = model.state_dict()
    if len(arrays) != len(sd):
        raise ValueError(f"expected {len(sd)} arrays for the model, got {len(arrays)}")
    with torch.no_grad():
        for v, a in zip(sd.values(), arrays):
            v.copy_(torch.as_tensor(np.asarray(a)).reshape(v.shape).to(v.dtype))


def make_strategy(model: torch.nn.Module, ferret: FerretConfig, server: ServerConfig, *, min_nodes: int = 2):
    """A FerretSecAggStrategy (imports flwr lazily; the library does not need it otherwise)."""
    from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import Strategy

    if ferret.adaptive:
        raise ValueError("SecAgg+ needs a uniform K: adaptive K gives updates of different shapes")
    if server.seed_scheme != "shared":
        raise ValueError("SecAgg+ needs seed_scheme 'shared': only updates in one coefficient space can be summed")
    if server.dp or server.aggregator != "mean":
        raise ValueError("SecAgg+ here sums updates: server-side DP and robust aggregators need individual updates")

    class FerretSecAggStrategy(Strategy):
        def __init__(self):
            self.model = model
            self.codec = UpdateCodec.for_module(model, ferret)
            self.server = FerretServer(self.codec, server)
            self.min_nodes = min_nodes
            self.applied: dict[int, UpdateMessage] = {}  # round -> the unmasked mean applied
            self.clients: dict[int, int] = {}  # round -> clients whose vectors are in the mean

        def initialize_parameters(self, client_manager):
            return ndarrays_to_parameters(_state_ndarrays(self.model))

        def configure_fit(self, server_round, parameters, client_manager):
            # every available node, once at least min_nodes are connected
            client_manager.wait_for(self.min_nodes)
            clients = client_manager.sample(num_clients=client_manager.num_available(), min_num_clients=self.min_nodes)
            cfg = {"round": server_round, "seed": str(self.server.seed_for(server_round))}
            return [(c, FitIns(parameters, dict(cfg))) for c in clients]

        def aggregate_fit(self, server_round, results, failures):
            if not results:
                return None, {}
            arrays = parameters_to_ndarrays(results[0][1].parameters)  # every result holds the unmasked mean
            msg = message_from_ndarrays(arrays, self.codec, self.server.seed_for(server_round), server_round)
            bound = self.server.config.max_norm
            if bound is not None and not msg.norm() <= bound:
                # one hostile client can add any integer mod 2^32 to the masked sum: a mean this
                # large is refused whole (the round applies nothing), as receive() refuses an update
                self.server.reject(
                    "secagg-sum", f"round {server_round}: mean norm {msg.norm():.4g} > max_norm {bound:g}"
                )
                return None, {}
            lr = self.server.lr_at(server_round)
            self.codec.apply(self.model, [msg], lr=lr, weights=[1.0], normalize=False)
            self.applied[server_round] = msg
            self.clients[server_round] = len(results)
            return ndarrays_to_parameters(_state_ndarrays(self.model)), {"clients": len(results)}

        def configure_evaluate(self, server_round, parameters, client_manager):
            return []

        def aggregate_evaluate(self, server_round, results, failures):
            return None, {}

        def evaluate(self, server_round, parameters):
            return None

    return FerretSecAggStrategy()


def ferret_secagg_train(msg, context, *, model_fn, train_fn, ferret: FerretConfig):
    """Client half: FitIns (global model, round, seed) -> train -> FitRes with x_i, weight 1.

    model_fn(context) -> the node's model (its weights are overwritten by the FitIns'); train_fn(model,
    config, context) trains it in place."""
    import flwr.compat.common.recorddict_compat as compat
    from flwr.app import Message
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    fitins = compat.recorddict_to_fitins(msg.content, keep_input=True)
    model = model_fn(context)
    _load_ndarrays(model, parameters_to_ndarrays(fitins.parameters))
    old = {k: v.detach().clone() for k, v in model.named_parameters()}
    train_fn(model, fitins.config, context)
    codec = UpdateCodec.for_module(model, ferret)
    rnd, seed = int(fitins.config["round"]), int(fitins.config["seed"])
    upd = codec.compress(old, model, seed, round=rnd)
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(update_ndarrays(upd)), 1, {})
    return Message(compat.fitres_to_recorddict(res, keep_input=False), reply_to=msg)
