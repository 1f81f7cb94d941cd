"""Crash safety of the federated layer in one process (the real-deployment restarts are in
tests/test_flower.py): a run interrupted after any round and resumed from its checkpoint ends
bit-identical to an uninterrupted one (loop and Flower strategy); a truncated, corrupted,
foreign or mismatched checkpoint is refused with a clear error and nothing is loaded; a
crash while writing leaves the previous checkpoint; the checkpoint and the catch-up log
stay bounded over many rounds."""

from __future__ import annotations

import os

import pytest
import torch

from ferret_kernels.fl import FerretConfig, ServerConfig
from ferret_kernels.fl import checkpoint as ck
from ferret_kernels.fl.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, save_checkpoint
from ferret_kernels.fl.harness.loop import LoopConfig, run
from ferret_kernels.fl.harness.tasks import BlobTask, mlp

pytest.importorskip("safetensors")


class Stop(Exception):
    pass


def _loop_cfg(rounds, scheme="per_client"):
    return LoopConfig(
        method="ferret",
        rounds=rounds,
        clients_per_round=3,
        local_steps=2,
        local_lr=0.05,
        progress=False,
        ferret=FerretConfig(num_bases=16, block_size=32768, full_threshold=1000),
        server=ServerConfig(momentum=0.5, momentum_window=3, seed_scheme=scheme),
    )


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("stop_after", [1, 3])
def test_loop_resumes_bit_identical(tmp_path, stop_after):
    task = BlobTask(n=800)
    ref = mlp()
    ref_recs = run(task, ref, _loop_cfg(4))

    def crash(rec):
        if rec["round"] == stop_after:
            raise Stop

    with pytest.raises(Stop):
        run(task, mlp(), _loop_cfg(4), checkpoint_dir=str(tmp_path), callback=crash)
    assert load_checkpoint(str(tmp_path))[1]["rounds_done"] == stop_after
    resumed = mlp(seed=1)  # other initial weights: everything must come from the checkpoint
    recs = run(task, resumed, _loop_cfg(4), checkpoint_dir=str(tmp_path))
    assert _same(ref, resumed)
    assert [r["loss"] for r in recs] == [r["loss"] for r in ref_recs] and [r["round"] for r in recs] == [1, 2, 3, 4]
    with pytest.raises(CheckpointError, match="another seed"):  # a different run configuration is refused
        cfg = _loop_cfg(4)
        cfg.seed = 1
        run(task, mlp(), cfg, checkpoint_dir=str(tmp_path))


flwr = pytest.importorskip("flwr")
from test_flower_strategy import LocalGrid, _handlers, _model, _task_identity  # noqa: E402,F401

from ferret_kernels.fl.flower import FerretStrategy  # noqa: E402


def _strategy(model, directory, **kw):
    return FerretStrategy(
        model,
        FerretConfig(num_bases=4, block_size=256),
        ServerConfig(momentum=0.5, momentum_window=3),
        fraction_train=0.5,
        min_train_nodes=2,
        min_available_nodes=4,
        checkpoint_dir=directory,
        **kw,
    )


def test_strategy_resumes_bit_identical_and_resends_the_model(tmp_path):
    ref = _model()
    _strategy(ref, str(tmp_path / "ref")).start(LocalGrid(_handlers(4)), num_rounds=5)

    def crash(rl):
        if rl.round == 2:
            raise Stop

    with pytest.raises(Stop):
        _strategy(_model(), str(tmp_path / "run"), on_round=crash).start(LocalGrid(_handlers(4)), num_rounds=5)
    fresh = torch.nn.Sequential(torch.nn.Linear(20, 256), torch.nn.ReLU(), torch.nn.Linear(256, 4))  # random weights
    s = _strategy(fresh, str(tmp_path / "run"))
    assert s.resumed_from == 2 and s.current_round == 2 and len(s.momentum_window) == 2
    s.start(LocalGrid(_handlers(4)), num_rounds=5)  # a new run: the nodes lost their copies
    assert [rl.round for rl in s.rounds] == [3, 4, 5]
    assert sorted(s.rounds[0].full_model_sent) == sorted(s.rounds[0].sampled) and not s.rounds[0].rejected
    assert all(not rl.rejected for rl in s.rounds)  # every node's copy matched the restored global model
    assert _same(ref, fresh)


@pytest.fixture(scope="module")
def good_checkpoint(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    with pytest.MonkeyPatch.context() as mp:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        for k, v in (("_task_id", 1), ("_run_id", 1), ("_node_id", SUPERLINK_NODE_ID)):
            mp.setattr(TaskIdentity, k, v)
        _strategy(_model(), str(d)).start(LocalGrid(_handlers(4)), num_rounds=2)
    return d, open(checkpoint_path(str(d)), "rb").read()


def _corruptions(data: bytes):
    hlen = int.from_bytes(data[:8], "little")
    yield "empty", b""
    for cut in (4, 8, 8 + hlen // 2, 8 + hlen, len(data) // 2, len(data) - 1):
        yield f"truncated at {cut}", data[:cut]
    for name, pos in (
        ("header", 8 + hlen // 2),
        ("digest", data.index(b'"sha256"') + 20),
        ("tensor data", len(data) - 100),
        ("model bytes", 8 + hlen + 10),
    ):
        b = bytearray(data)
        b[pos] ^= 0x01
        yield f"flipped bit in the {name}", bytes(b)
    yield "appended garbage", data + b"\0" * 16
    yield "not a checkpoint", b"PK\x03\x04" + os.urandom(200)


def test_corrupted_or_truncated_checkpoints_are_refused_and_nothing_is_loaded(tmp_path, good_checkpoint):
    _, data = good_checkpoint
    cases = list(_corruptions(data))
    assert len(cases) >= 12
    why = {}
    for what, bad in cases:
        d = tmp_path / what.replace(" ", "_")
        d.mkdir()
        open(checkpoint_path(str(d)), "wb").write(bad)
        model = _model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match="refusing to load it") as e:
            _strategy(model, str(d))
        why[what] = str(e.value)
        assert str(d) in why[what], what
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), f"{what}: the model was touched"
    for what in ("flipped bit in the tensor data", "flipped bit in the model bytes", "flipped bit in the digest"):
        assert "is corrupted (its SHA-256 does not match its contents)" in why[what], why[what]
    for what in ("empty", "truncated at 8", "not a checkpoint"):
        assert "is truncated or not a checkpoint" in why[what], why[what]


def _rewritten(src, dst, edit, fill=None, blobs=None):
    """src's checkpoint with its state edited, written to dst by the library's own writer (so its
    SHA-256 matches: only the later checks can refuse it); fill: every model tensor set to it;
    blobs: in place of src's."""
    tensors, state, old_blobs = load_checkpoint(str(src))
    blobs = old_blobs if blobs is None else blobs
    st = {k: v for k, v in state.items() if k != "version"}
    for k, v in edit.items():
        if v is None:
            st.pop(k)
        else:
            st[k] = v
    save_checkpoint(
        str(dst), {k: v if fill is None else torch.full_like(v, fill) for k, v in tensors.items()}, st, blobs
    )


def test_a_checkpoint_refused_after_its_digest_check_leaves_everything_untouched(tmp_path, good_checkpoint):
    """A checkpoint whose bytes are intact but whose state is not (edited and re-saved, another
    version's writer) is refused with CheckpointError before the model is touched: the strategy had
    loaded the model before checking the recorded digest and parsing the state (a KeyError or
    ValueError, the model overwritten), the loop before setting the generator's state."""
    d, _ = good_checkpoint
    for i, (edit, fill, why) in enumerate(
        [
            ({}, 42.0, "the model's digest differs from the one recorded"),
            ({"rejected_total": None}, None, "malformed state \\(KeyError"),
            ({"round": "seven"}, None, "malformed state \\(ValueError"),
            (
                {"catchup": [[1, [[next(iter(load_checkpoint(str(d))[2])), "x"]]]]},
                None,
                "malformed state \\(ValueError",
            ),
            ({"catchup": [[1, [["blob.missing", 1.0]]]]}, None, "lacks 1 update blob"),
        ]
    ):
        _rewritten(d, tmp_path / str(i), edit, fill)
        model = _model()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=why):
            _strategy(model, str(tmp_path / str(i)))
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), edit
    # the loop: a generator state or a momentum blob that does not parse
    src = tmp_path / "loop"
    run(BlobTask(n=800), mlp(), _loop_cfg(1, scheme="shared"), checkpoint_dir=str(src))
    _, state, blobs = load_checkpoint(str(src))
    assert state["server"]["history"] and blobs  # the momentum window holds round 0's aggregate
    cases = [
        ({"gen": {"bit_generator": "PCG64", "state": 5}}, None, "malformed state \\(TypeError"),
        ({}, {n: b"junk" for n in blobs}, "malformed state \\(DecodeError"),
    ]
    for j, (edit, new_blobs, why) in enumerate(cases):
        _rewritten(src, tmp_path / f"l{j}", edit, blobs=new_blobs)
        model = mlp()
        before = {k: v.clone() for k, v in model.state_dict().items()}
        with pytest.raises(CheckpointError, match=why):
            run(BlobTask(n=800), model, _loop_cfg(2, scheme="shared"), checkpoint_dir=str(tmp_path / f"l{j}"))
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items()), edit


def test_models_with_tied_weights_checkpoint_and_resume(tmp_path):
    """An LLM's tied input and output embeddings are two state-dict entries of one tensor, which
    safetensors refuses to save: the checkpoint stores a copy, and resuming writes both names."""

    class Tied(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(10, 6)
            self.out = torch.nn.Linear(6, 10, bias=False)
            self.out.weight = self.emb.weight

    m = Tied()
    path = save_checkpoint(str(tmp_path), m.state_dict(), {"kind": "test"})
    tensors, state, _ = load_checkpoint(str(tmp_path))
    assert path and set(tensors) == {"emb.weight", "out.weight"} and torch.equal(tensors["out.weight"], m.emb.weight)
    m2 = Tied()
    m2.load_state_dict(tensors)
    assert torch.equal(m2.emb.weight, m.emb.weight) and m2.out.weight is m2.emb.weight


class _Tied(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(40, 16)
        self.out = torch.nn.Linear(16, 40, bias=False)
        self.out.weight = self.emb.weight
        self.register_buffer("stat", torch.randn(3))


class _Renamed(torch.nn.Module):
    """State-dict keys renamed by hooks (a legacy naming): the layout's names are not the file's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(16, 40)
        self._register_state_dict_hook(lambda m, sd, prefix, local: {("legacy_" + k): v for k, v in sd.items()})

        def pre(sd, prefix, *a):
            for k in list(sd):
                if k.startswith("legacy_"):
                    sd[k[len("legacy_") :]] = sd.pop(k)

        self._register_load_state_dict_pre_hook(pre)


def test_the_strategy_checks_a_checkpoint_as_the_model_would_load_it(tmp_path):
    """The recorded digest is checked, before loading, on the values load_state_dict would leave in
    each parameter: tied weights (two keys, one parameter: the file must hold equal values, or the
    digest checked would not be the model's) and keys renamed by state-dict hooks both work."""

    def strategy(model, d):
        return FerretStrategy(model, FerretConfig(num_bases=4, block_size=256), ServerConfig(), checkpoint_dir=d)

    for cls in (_Tied, _Renamed):
        d = str(tmp_path / cls.__name__)
        m = cls()
        with torch.no_grad():
            next(m.parameters()).add_(1.0)  # not the fresh model's values
        strategy(m, d).checkpoint()
        fresh = cls()
        assert strategy(fresh, d).resumed_from == 0 and _same(fresh, m)
    d = str(tmp_path / "_Tied")
    tensors, state, blobs = load_checkpoint(d)
    tensors["out.weight"] = tensors["out.weight"] + 1.0  # the aliases differ (re-saved by the library's writer)
    save_checkpoint(d, tensors, {k: v for k, v in state.items() if k != "version"}, blobs)
    m = _Tied()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"different values for the tied tensors \['emb.weight', 'out.weight'\]"):
        strategy(m, d)
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())


def test_checkpoint_of_another_kind_or_configuration_is_refused(tmp_path, good_checkpoint):
    d, _ = good_checkpoint
    with pytest.raises(CheckpointError, match="another ferret"):
        FerretStrategy(
            _model(),
            FerretConfig(num_bases=8, block_size=256),
            ServerConfig(momentum=0.5, momentum_window=3),
            fraction_train=0.5,
            min_train_nodes=2,
            min_available_nodes=4,
            checkpoint_dir=str(d),
        )
    with pytest.raises(CheckpointError, match="another fingerprint"):
        _strategy(torch.nn.Sequential(torch.nn.Linear(20, 128), torch.nn.ReLU(), torch.nn.Linear(128, 4)), str(d))
    run(BlobTask(n=800), mlp(), _loop_cfg(1), checkpoint_dir=str(tmp_path))
    with pytest.raises(CheckpointError, match="of kind 'ferret-loop', not a Flower strategy's"):
        _strategy(_model(), str(tmp_path))


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    t = {"w": torch.arange(6.0)}
    save_checkpoint(str(tmp_path), t, {"round": 1})

    def died(*a):
        raise OSError("power cut")

    monkeypatch.setattr(ck.os, "replace", died)
    with pytest.raises(OSError, match="power cut"):
        save_checkpoint(str(tmp_path), {"w": torch.zeros(6)}, {"round": 2})
    assert any(f.startswith("checkpoint.safetensors.tmp-") for f in os.listdir(tmp_path))
    tensors, state, _ = load_checkpoint(str(tmp_path))
    assert state["round"] == 1 and torch.equal(tensors["w"], t["w"])
    monkeypatch.undo()
    save_checkpoint(str(tmp_path), {"w": torch.zeros(6)}, {"round": 2})
    assert os.listdir(tmp_path) == ["checkpoint.safetensors"]  # the leftover is gone: disk stays bounded
    assert load_checkpoint(str(tmp_path))[1]["round"] == 2


def _noise_handlers(n, shape_fn):
    from ferret_kernels.fl.flower import ferret_train

    models = {}

    def make(node):
        def train(model, cfg, ctx):
            g = torch.Generator().manual_seed(int(cfg["round"]) * 10 + node)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(0.01 * torch.randn(p.shape, generator=g))
            return {"num-examples": 1}

        return lambda msg, ctx: ferret_train(
            msg, ctx, model_fn=lambda c: models.setdefault(node, shape_fn()), train_fn=train
        )

    return {node: make(node) for node in range(1, n + 1)}


def test_checkpoint_and_catchup_log_stay_bounded(tmp_path):
    """Over 40 rounds the catch-up log never holds more than the model's size of updates, a
    node gets the model exactly when the rounds it missed are no longer all in the log, and
    the checkpoint's size is flat."""
    shape = lambda: torch.nn.Sequential(torch.nn.Linear(24, 24))  # noqa: E731 - 2,400 bytes: about 5 rounds of updates
    sizes, oldest, last, outcomes = {}, {}, {}, []

    def on_round(rl):
        sizes[rl.round] = os.path.getsize(checkpoint_path(str(tmp_path)))
        assert sum(len(b) for e in s.catchup.values() for b, _ in e) <= s._model_bytes()
        for n in rl.sampled:
            if n in last:  # its copy was at round last[n] - 1; it needs rounds last[n] .. rl.round - 1
                full = last[n] < oldest[rl.round - 1]
                assert (n in rl.full_model_sent) == full, (rl.round, n, last[n], oldest[rl.round - 1])
                outcomes.append(full)
            last[n] = rl.round
        oldest[rl.round] = next(iter(s.catchup))

    s = FerretStrategy(
        shape(),
        FerretConfig(num_bases=2, block_size=64),
        ServerConfig(),
        fraction_train=0.25,
        min_train_nodes=1,
        min_available_nodes=4,
        checkpoint_dir=str(tmp_path),
        on_round=on_round,
    )
    s.start(LocalGrid(_noise_handlers(4, shape)), num_rounds=40)
    assert all(not rl.rejected for rl in s.rounds)  # every copy, caught up or resent, matched the global model
    assert 3 <= len(s.catchup) <= 10 and len(s.rounds) == 16
    assert True in outcomes and False in outcomes, outcomes  # both paths taken
    late = [sizes[r] for r in range(20, 41)]
    assert max(late) <= 1.25 * min(late) and max(late) < 3 * s._model_bytes() + 8192, late
