"""FerretStrategy and the client handlers in one process: a Grid that hands each message to the
node's ClientApp handler (no transport), to cover what the deployment test does not: partial
participation with catch-up, per-client seeds, server momentum, lost client state and bad replies."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("flwr", reason="flwr not installed (pip install 'ferret_kernels[flower]')")

from flwr.app import ConfigRecord, Context, Error, Message, RecordDict  # noqa: E402
from flwr.serverapp import Grid  # noqa: E402

from ferret_kernels.fl import FerretConfig, ServerConfig  # noqa: E402
from ferret_kernels.fl.flower import UPDATE, FerretStrategy, ferret_train, model_digest  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    """What a ServerApp process has set when the strategy creates messages."""
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


class LocalGrid(Grid):
    """Delivers messages to in-process nodes, each with its own Context (and so its own state)."""

    def __init__(self, handlers):
        self.handlers = handlers
        self.contexts = {n: Context(1, n, {}, RecordDict(), {}) for n in handlers}

    def get_node_ids(self):
        return list(self.handlers)

    def send_and_receive(self, messages, *, timeout=None):
        out = []
        for m in messages:
            node = m.metadata.dst_node_id
            try:
                out.append(self.handlers[node](m, self.contexts[node]))
            except Exception as e:  # what a SuperNode does when a ClientApp raises
                out.append(Message(Error(code=0, reason=f"{type(e).__name__}: {e}"), reply_to=m))
        return out

    # unused by the strategy
    def set_run(self, run):  # pragma: no cover
        pass

    @property
    def run(self):  # pragma: no cover
        return None

    def create_message(self, *a, **k):  # pragma: no cover
        raise NotImplementedError

    def get_nodes(self):  # pragma: no cover
        return []

    def push_messages(self, messages):  # pragma: no cover
        raise NotImplementedError

    def pull_messages(self, message_ids):  # pragma: no cover
        raise NotImplementedError


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(20, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))


def _train_fn(node):
    def fn(model, cfg, context):
        g = torch.Generator().manual_seed(1000 * int(cfg["round"]) + node)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g))
        return {"num-examples": 10 + node}

    return fn


def _handlers(n, models=None):
    models = models if models is not None else {}

    def make(node):
        def h(msg, ctx):
            return ferret_train(
                msg, ctx, model_fn=lambda c: models.setdefault(node, _model()), train_fn=_train_fn(node)
            )

        return h

    return {node: make(node) for node in range(1, n + 1)}


def _node_digest(strategy, ctx):
    m = _model()
    m.load_state_dict(ctx.state["ferret.model"].to_torch_state_dict())
    return model_digest(m, strategy.codec)


@pytest.mark.parametrize("scheme,momentum", [("shared", 0.0), ("per_client", 0.0), ("shared", 0.5)])
def test_partial_participation_keeps_every_copy_in_sync(scheme, momentum):
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    s = FerretStrategy(
        model,
        FerretConfig(num_bases=4, block_size=256),
        ServerConfig(seed_scheme=scheme, momentum=momentum),
        fraction_train=0.5,
        min_train_nodes=2,
        min_available_nodes=4,
    )
    grid = LocalGrid(_handlers(4))
    s.start(grid, num_rounds=5)
    assert all(not rl.rejected for rl in s.rounds), [rl.rejected for rl in s.rounds]  # digests matched every round
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the full model went to each node once; later contacts carried coefficients only
    first = [n for rl in s.rounds for n in rl.full_model_sent]
    assert sorted(first) == sorted(set(first))
    assert all(
        b < s._model_bytes() / 2 for rl in s.rounds for n, b in rl.sent_bytes.items() if n not in rl.full_model_sent
    )
    # some node skipped a round and caught up with several rounds' updates at once
    seen = {}
    caught_up = False
    for rl in s.rounds:
        for n in rl.sampled:
            caught_up |= n in seen and seen[n] < rl.round - 1
            seen[n] = rl.round
    assert caught_up, [rl.sampled for rl in s.rounds]
    # every node that trained holds the global model as of the round before its last contact
    for n, r in s.round_of_node.items():
        assert _node_digest(s, grid.contexts[n]) == s.digests[r]
    n_updates = [len(rl.applied) for rl in s.rounds]
    if scheme == "per_client":
        assert n_updates == [2] * 5
    elif momentum:
        assert n_updates == [1, 2, 3, 4, 5]  # this round's aggregate plus the momentum terms
    else:
        assert n_updates == [1] * 5


@pytest.mark.parametrize(
    "extra",
    [{}, dict(dp_clip=0.5, dp_noise_multiplier=1.0, dp_expected_clients=3, dp_seed=7), dict(aggregator="median")],
    ids=["mean", "dp", "median"],
)
def test_equals_plain_server_step_on_the_same_updates(extra):
    """The strategy applies what FerretServer.step would (same messages, weights and lr), also
    with client-level DP (the same noise: a fixed dp_seed) and a robust aggregator."""
    from ferret_kernels.fl.message import decode

    model = _model()
    ref = _model()
    s = FerretStrategy(
        model,
        FerretConfig(num_bases=8, block_size=128, wire_dtype="float32"),
        ServerConfig(lr=0.7, **extra),
        min_available_nodes=3,
    )
    s.start(LocalGrid(_handlers(3)), num_rounds=2)
    assert all(len(rl.accepted) == 3 and not rl.rejected for rl in s.rounds)  # the nodes' copies stayed in sync
    for rl in s.rounds:
        msgs = [decode(b, s.codec.layout) for b in rl.accepted.values()]
        s.server.step(ref, msgs, rl.round)
    for (k, a), b in zip(model.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=k)


def test_bad_replies_are_rejected_and_the_round_completes():
    handlers = _handlers(3)
    good, node2 = handlers[3], handlers[2]

    def nan_update(msg, ctx):
        rep = good(msg, ctx)
        data = bytearray(rep.content[UPDATE]["update"])
        data[-4:] = b"\x00\x00\xc0\x7f"  # NaN
        rep.content[UPDATE] = ConfigRecord(dict(rep.content[UPDATE], update=bytes(data)))
        return rep

    def wrong_base(msg, ctx):
        rep = node2(msg, ctx)
        rep.content[UPDATE] = ConfigRecord(dict(rep.content[UPDATE], **{"base-round": 99}))
        return rep

    def error(msg, ctx):
        raise MemoryError("out of memory")

    handlers = {1: handlers[1], 2: wrong_base, 3: nan_update, 4: error}
    model = _model()
    s = FerretStrategy(model, FerretConfig(num_bases=4, block_size=256), min_available_nodes=4)
    s.start(LocalGrid(handlers), num_rounds=2)
    for rl in s.rounds:
        assert set(rl.rejected) == {2, 3, 4}, rl.rejected
        assert "NaN" in rl.rejected[3] and "round 99" in rl.rejected[2] and "out of memory" in rl.rejected[4]
        assert list(rl.accepted) == [1]
    # the node that replied with an error gets the full model again; the NaN one only coefficients
    assert 4 in s.rounds[1].full_model_sent and 3 not in s.rounds[1].full_model_sent


def test_lost_client_state_gets_the_full_model_again():
    handlers = _handlers(2)
    node1 = handlers[1]

    def restarted_in_round_2(msg, ctx):
        if int(msg.content["ferret.config"]["round"]) == 2:
            ctx.state = RecordDict()  # node 1 restarted and lost its copy
        return node1(msg, ctx)

    handlers[1] = restarted_in_round_2
    s = FerretStrategy(_model(), FerretConfig(num_bases=4, block_size=256), min_available_nodes=2)
    s.start(LocalGrid(handlers), num_rounds=3)
    assert sorted(s.rounds[0].full_model_sent) == [1, 2]
    assert "no copy of the global model" in s.rounds[1].rejected[1]  # it replies with an error ...
    assert s.rounds[2].full_model_sent == [1] and not s.rounds[2].rejected  # ... and gets the model again


def test_evaluate_runs_on_synced_copies():
    """Evaluate messages bring each node's copy up to date first: every node evaluates the
    global model the server holds (here the metric is the parameters' norm)."""
    from ferret_kernels.fl.flower import ferret_evaluate

    models, seen = {}, []

    def flat_norm(model):
        return float(torch.cat([p.detach().flatten() for p in model.parameters()]).double().norm())

    class Grid2(LocalGrid):
        def send_and_receive(self, messages, *, timeout=None):
            messages = list(messages)
            if not messages or messages[0].metadata.message_type != "evaluate":
                return super().send_and_receive(messages, timeout=timeout)
            replies = [
                ferret_evaluate(
                    m,
                    self.contexts[m.metadata.dst_node_id],
                    model_fn=lambda c: models.setdefault(c.node_id, _model()),
                    evaluate_fn=lambda model, cfg, ctx: {"norm": flat_norm(model), "num-examples": 1.0},
                )
                for m in messages
            ]
            seen.append(([r.content["metrics"]["norm"] for r in replies], flat_norm(s.model)))
            return replies

    s = FerretStrategy(
        _model(),
        FerretConfig(num_bases=4, block_size=256),
        fraction_train=2 / 3,
        min_train_nodes=2,
        min_available_nodes=3,
        fraction_evaluate=1.0,
        min_evaluate_nodes=3,
    )
    s.start(Grid2(_handlers(3)), num_rounds=3)
    assert len(seen) == 3
    for node_norms, server_norm in seen:
        assert len(node_norms) == 3 and all(n == server_norm for n in node_norms), (node_norms, server_norm)
    assert len({server for _, server in seen}) == 3  # the model moved every round


def test_evaluate_metrics_weigh_each_node_at_most_max_share():
    """aggregate_evaluate caps each node's weight as training does (max_share): a node claiming 2^53
    examples had set the round's metrics, and values near the float limit overflowed the sum to inf."""
    from flwr.app import MetricRecord

    s = FerretStrategy(_model(), FerretConfig(num_bases=4, block_size=256), min_available_nodes=1)
    s._evaluate_nodes = {1, 2, 3, 9}

    def reply(node, metrics):
        out = Message(RecordDict(), dst_node_id=node, message_type="evaluate")
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), reply_to=out)

    honest = [reply(n, {"num-examples": 100.0, "accuracy": 0.9, "loss": float(n)}) for n in (1, 2, 3)]
    got = s.aggregate_evaluate(1, honest)
    assert got["accuracy"] == pytest.approx(0.9) and got["loss"] == pytest.approx(2.0)
    # the node claiming 2^53 gets the cap, 1/2 (its excess is dropped, not given to the others)
    got = s.aggregate_evaluate(1, honest + [reply(9, {"num-examples": 2.0**53, "accuracy": 0.0, "loss": 0.0})])
    assert got["accuracy"] == pytest.approx(0.45) and got["loss"] == pytest.approx(1.0)
    # values near the float limit from two capped nodes: a finite mean (the weighted sum overflowed)
    bad = [
        reply(1, {"num-examples": 2.0**53, "accuracy": 1.7e308, "loss": 1.0}),
        reply(9, {"num-examples": 2.0**53, "accuracy": 1.7e308, "loss": 3.0}),
    ]
    got = s.aggregate_evaluate(1, bad + honest[1:])
    assert got["accuracy"] == pytest.approx(1.7e308) and got["loss"] == pytest.approx(2.0)


def test_start_keeps_flowers_contract_initial_arrays_and_central_evaluation():
    """start(grid, initial_arrays, ...) as Flower's Strategy.start: the initial arrays become the
    global model, evaluate_fn gets (round, ArrayRecord) before round 1 and after every round, and
    the result's arrays are the final global model."""
    from flwr.app import ArrayRecord, MetricRecord

    model = _model()
    torch.manual_seed(7)
    init = {k: torch.randn_like(v) for k, v in model.state_dict().items()}
    s = FerretStrategy(
        model, FerretConfig(num_bases=4, block_size=256), ServerConfig(), min_train_nodes=2, min_available_nodes=2
    )
    seen = {}

    def central(rnd, arrays):
        assert isinstance(arrays, ArrayRecord)
        seen[rnd] = arrays.to_torch_state_dict()
        return MetricRecord({"w0": float(seen[rnd]["0.weight"][0, 0])})

    res = s.start(LocalGrid(_handlers(2)), ArrayRecord(init), num_rounds=2, evaluate_fn=central)
    assert sorted(seen) == [0, 1, 2]
    for k in init:
        torch.testing.assert_close(seen[0][k], init[k], rtol=0, atol=0)  # round 0: the initial arrays
    final = res.arrays.to_torch_state_dict()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(final[k], v, rtol=0, atol=0)
        torch.testing.assert_close(seen[2][k], v, rtol=0, atol=0)
    assert not torch.equal(final["0.weight"], init["0.weight"])  # two rounds moved it
    assert res.evaluate_metrics_serverapp[0]["w0"] == pytest.approx(float(init["0.weight"][0, 0]))
    assert all(not rl.rejected for rl in s.rounds)  # the nodes got the initial model, not the constructor's


@pytest.mark.parametrize(
    "bad,match",
    [
        ("missing", r"initial_arrays do not match the model: missing \['2.bias'\]"),
        ("shape", r"initial_arrays\['0.weight'\] has shape \(256, 21\), the model's is \(256, 20\)"),
    ],
)
def test_start_refuses_initial_arrays_of_another_model_and_changes_nothing(bad, match):
    from flwr.app import ArrayRecord

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    if bad == "missing":
        del init["2.bias"]
    else:
        init["0.weight"] = torch.zeros(256, 21)
    s = FerretStrategy(model, FerretConfig(num_bases=4, block_size=256), ServerConfig())
    grid = LocalGrid(_handlers(2))
    with pytest.raises(ValueError, match=match):
        s.start(grid, ArrayRecord(init), num_rounds=1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert s.current_round == 0 and not grid.contexts[1].state  # no round ran, no node was contacted
