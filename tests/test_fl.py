"""The federated layer: layout, codec, messages, server, loop."""

import copy
import math
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ferret_kernels as fk
from ferret_kernels.fl import (
    DecodeError,
    FerretConfig,
    FerretServer,
    ParamLayout,
    ServerConfig,
    UpdateCodec,
    decode,
    encode,
)
from ferret_kernels.fl.harness.loop import LoopConfig, run
from ferret_kernels.fl.harness.tasks import BlobTask, mlp, tiny_gpt2
from ferret_kernels.fl.message import FORMAT_VERSION

pytest.importorskip("safetensors")


def _perturbed(model, scale=1e-2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        n: (p.detach() - scale * torch.randn(p.shape, generator=g)).to(p.dtype) for n, p in model.named_parameters()
    }


def _state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_layout_plan_and_fingerprint():
    m = tiny_gpt2()
    lay = ParamLayout.from_module(m, block_size=1000, full_threshold=100)
    names = [n for n, p in m.named_parameters()]
    assert [s.name for s in lay.specs] == names  # tied lm_head counted once
    offs = [s.block_offset for s in lay.projected]
    assert offs == sorted(offs) and lay.total_blocks == sum(fk.num_blocks(s.numel, 1000) for s in lay.projected)
    assert all(s.numel < 100 for s in lay.full) and all(s.numel >= 100 for s in lay.projected)
    assert ParamLayout.from_module(tiny_gpt2(seed=1), 1000, 100).fingerprint == lay.fingerprint  # weights don't matter
    assert ParamLayout.from_module(m, 1024, 100).fingerprint != lay.fingerprint
    m.half()
    assert ParamLayout.from_module(m, 1000, 100).fingerprint != lay.fingerprint


@pytest.mark.parametrize("dist", ["rademacher", "gaussian"])
def test_compress_apply_unbiased_on_a_transformers_model(dist):
    """The applied update averages to the true one over seeds, with the variance theory predicts."""
    model = tiny_gpt2()
    cfg = FerretConfig(num_bases=8, block_size=512, dist=dist, full_threshold=64)
    comp = UpdateCodec.for_module(model, cfg)
    old = _state(model)
    new = _perturbed(model)
    delta = {n: old[n] - new[n] for n in old}
    S = 150
    acc = {n: torch.zeros_like(v, dtype=torch.float64) for n, v in old.items()}
    for s in range(S):
        msg = decode(encode(comp.compress(old, new, seed=1000 + s)), comp.layout)
        work = copy.deepcopy(model)
        comp.apply(work, [msg], lr=1.0)
        for n, p in work.named_parameters():
            acc[n] += (old[n] - p.detach()).double()
    c4 = {"rademacher": -1.0, "gaussian": 1.0}[dist]
    err2, want2 = 0.0, 0.0
    for s in comp.layout.specs:
        mean = acc[s.name] / S
        if not s.projected:
            torch.testing.assert_close(mean, delta[s.name].double(), rtol=0, atol=1e-6)  # sent in full: exact
            continue
        d = delta[s.name].double().reshape(-1)
        e = mean.reshape(-1) - d
        for b in range(s.num_blocks):
            sl = slice(b * 512, min((b + 1) * 512, s.numel))
            db = d[sl]
            var = (db.square().sum() + c4 * db.square()) / cfg.num_bases / S  # per coordinate
            err2 += float(e[sl].square().sum())
            want2 += float(var.sum())
    assert 0.85 < err2 / want2 < 1.15, err2 / want2  # unbiased, right scale, independent blocks


def test_shared_seed_aggregation_equals_averaged_per_client_reconstruction():
    model = mlp()
    comp = UpdateCodec.for_module(model, FerretConfig(num_bases=16, block_size=4096, full_threshold=600))
    old = _state(model)
    msgs = [comp.compress(old, _perturbed(model, seed=i), seed=77, weight=w) for i, w in enumerate([1, 3, 2])]
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    comp.apply(a, msgs, lr=0.5)  # aggregated in coefficient space, one reconstruction
    w = [1 / 6, 3 / 6, 2 / 6]
    for m, wi in zip(msgs, w):  # one reconstruction per client
        comp.apply(b, [m], lr=0.5 * wi)
    for (_n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    srv = FerretServer(comp, ServerConfig())
    (agg,) = srv.broadcast(msgs)  # the downlink: one aggregate message, applied by clients
    c = copy.deepcopy(model)
    comp.apply(c, [agg], lr=0.5)
    for (_n, pa), (_, pc) in zip(a.named_parameters(), c.named_parameters()):
        torch.testing.assert_close(pa, pc, rtol=1e-5, atol=1e-6)


def test_adaptive_counts_follow_block_norms():
    model = mlp()
    cfg = FerretConfig(num_bases=8, block_size=8192, adaptive=True, k_max=32)
    comp = UpdateCodec.for_module(model, cfg)
    old = _state(model)
    new = {n: v.clone() for n, v in old.items()}
    new["2.weight"] += 0.1 * torch.randn_like(new["2.weight"])  # 32 blocks changed
    new["0.weight"][:16] += 5.0  # block 0 of 0.weight changed a lot
    msg = comp.compress(old, new, seed=3)
    norms = comp.block_norms(old, new)
    assert int(msg.active.sum()) <= 8 * comp.layout.total_blocks + comp.layout.total_blocks
    assert (msg.active[norms == 0] == 0).all() and (msg.active[norms > 0] >= 1).all()
    big = int(norms.argmax())
    assert big == 0 and msg.active[big] == 32  # capped at k_max
    want = torch.round(norms / norms.sum() * 8 * comp.layout.total_blocks).clamp(0, 32)
    want[(norms > 0) & (want == 0)] = 1
    assert msg.active.tolist() == want.int().tolist()  # k_b proportional to ||delta_b||
    assert msg.coeffs.numel() == int(msg.active.sum())
    data = encode(msg)
    assert decode(data, comp.layout).active.tolist() == msg.active.tolist()


def test_uplink_is_coefficients_plus_small_header():
    model = mlp()
    for wire, nbytes in (("float32", 4), ("bfloat16", 2), ("float16", 2)):
        comp = UpdateCodec.for_module(
            model, FerretConfig(num_bases=64, block_size=32768, full_threshold=1000, wire_dtype=wire)
        )
        msg = comp.compress(model, _perturbed(model), seed=2**64 - 1, weight=123.0, round=7, client="client-0042")
        data = encode(msg)
        payload = (msg.num_coefficients + sum(t.numel() for t in msg.full.values())) * nbytes
        assert len(data) - payload < 1024, len(data) - payload


def _message(comp, model, **kw):
    return encode(comp.compress(model, _perturbed(model), seed=kw.pop("seed", 5), **kw))


@pytest.fixture(scope="module")
def setup():
    model = mlp()
    cfg = FerretConfig(num_bases=16, block_size=32768, full_threshold=1000, adaptive=True, k_max=32)
    return model, UpdateCodec.for_module(model, cfg)


def _rewrite(data: bytes, meta=None, tensors=None) -> bytes:
    """Re-encode a valid message with some metadata / tensors replaced (a forged message), in
    the canonical layout (sorted metadata), so that only the planted problem is wrong."""
    import json
    import struct

    from safetensors.torch import load, save

    (hlen,) = struct.unpack("<Q", data[:8])
    m = json.loads(data[8 : 8 + hlen])["__metadata__"]
    t = load(data)
    m.update(meta or {})
    t.update(tensors or {})
    raw = save(t, metadata=m)
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":")).encode()
    return (
        struct.pack("<Q", len(text.ljust(-(-len(text) // 8) * 8)))
        + text.ljust(-(-len(text) // 8) * 8)
        + raw[8 + hlen :]
    )


def test_decode_rejects_bad_messages_and_model_stays_unchanged(setup):
    model, comp = setup
    good = _message(comp, model)
    srv = FerretServer(comp, ServerConfig())
    msg = decode(good, comp.layout)
    # each forged message is canonical but for its one problem, and is refused for that problem
    bad = {
        "truncated": (good[: len(good) // 2], "truncated|not a valid safetensors"),
        "header only": (good[:8], "truncated"),
        "oversized": (good + b"\0" * (10 << 20), "larger than any valid one"),
        "wrong format version": (_rewrite(good, {"fmt": str(FORMAT_VERSION + 1)}), "format version"),
        "wrong rng version": (_rewrite(good, {"rng": "2"}), "RNG contract version"),
        "wrong fingerprint": (_rewrite(good, {"fp": "0" * 32}), "another model or block plan"),
        "wrong block size": (_rewrite(good, {"bs": "4096"}), "block size 4096 differs"),
        "negative weight": (_rewrite(good, {"w": "-1.0"}), "weight '-1.0' is not a non-negative decimal"),
        "nan weight": (_rewrite(good, {"w": "nan"}), "weight 'nan'"),
        "unknown dist": (_rewrite(good, {"dist": "cauchy"}), "unknown dist 'cauchy'"),
        "K too large": (_rewrite(good, {"K": str(2**20)}), "K=1048576 is outside"),
        "nan coefficient": (
            _rewrite(good, tensors={"c": torch.full_like(msg.coeffs, float("nan"))}),
            "'c' has NaN or Inf",
        ),
        "inf coefficient": (
            _rewrite(good, tensors={"c": torch.full_like(msg.coeffs, float("inf"))}),
            "'c' has NaN or Inf",
        ),
        "inf in a full tensor": (
            _rewrite(good, tensors={"f.0.bias": torch.full((512,), float("inf"))}),
            "'f.0.bias' has NaN or Inf",
        ),
        "too few coefficients": (_rewrite(good, tensors={"c": msg.coeffs[:-1].contiguous()}), "coefficients"),
        "count above K": (
            _rewrite(good, tensors={"a": torch.full((comp.layout.total_blocks,), 99, dtype=torch.uint8)}),
            r"active counts must be in \[0, K=32\]",
        ),
        "mis-shaped full tensor": (_rewrite(good, tensors={"f.0.bias": torch.zeros(3)}), "shape"),
        "missing full tensor": (
            _rewrite(_rewrite(good), tensors={}).replace(b"f.0.bias", b"g.0.bias"),
            "do not match the layout",
        ),
        "extra tensor": (_rewrite(good, tensors={"x": torch.zeros(2)}), "unexpected \\['x'\\]"),
        "int coefficients": (_rewrite(good, tensors={"c": msg.coeffs.to(torch.int32)}), "dtype torch.int32"),
        "not safetensors": (
            b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all" + b"\0" * 64,
            "not a valid safetensors",
        ),
    }
    assert (
        decode(_rewrite(good), comp.layout, max_bases=32).num_coefficients == msg.num_coefficients
    )  # the forger is faithful
    before = _state(model)
    for name, (data, why) in bad.items():
        with pytest.raises(DecodeError, match=why):
            decode(data, comp.layout, max_bases=32)
        assert srv.receive(data) is None, name
    assert len(srv.rejected) == len(bad)
    srv.step(model, [], 0)  # nothing accepted: nothing applied
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    other = UpdateCodec.for_module(tiny_gpt2(), FerretConfig(num_bases=16, block_size=32768))
    with pytest.raises(ValueError, match="another model"):
        comp.apply(model, [other.compress(tiny_gpt2(), _perturbed(tiny_gpt2()), seed=1)])
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(min_value=0, max_value=10**6),
    flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(1, 255)), max_size=4),
)
def test_decode_never_crashes_on_corrupted_bytes(setup, cut, flips):
    model, comp = setup
    data = bytearray(_message(comp, model, seed=9))
    data = data[: max(0, len(data) - cut % (len(data) + 1))] if cut % 3 == 0 else data
    for pos, x in flips:
        if data:
            data[pos % len(data)] ^= x
    try:
        msg = decode(bytes(data), comp.layout, max_bases=32)
    except DecodeError:
        return
    # whatever got through is a consistent, finite message for this layout
    comp.check(msg)
    assert msg.coeffs.numel() == int(msg.active.sum()) and torch.isfinite(msg.coeffs).all()


@settings(max_examples=25, deadline=None)
@given(
    wire=st.sampled_from(["float32", "bfloat16", "float16"]),
    K=st.integers(1, 40),
    adaptive=st.booleans(),
    seed=st.integers(0, 2**64 - 1),
    weight=st.floats(0, 1e6),
    thr=st.sampled_from([0, 600, 10**6]),
)
def test_encode_decode_round_trip(wire, K, adaptive, seed, weight, thr):
    model = mlp()
    comp = UpdateCodec.for_module(
        model, FerretConfig(num_bases=K, block_size=50_000, adaptive=adaptive, full_threshold=thr, wire_dtype=wire)
    )
    msg = comp.compress(model, _perturbed(model), seed=seed, weight=weight, round=3, client="c1")
    back = decode(encode(msg), comp.layout, max_bases=comp.config.max_bases)
    assert (
        back.seed,
        back.dist,
        back.num_bases,
        back.block_size,
        back.weight,
        back.round,
        back.client,
        back.wire_dtype,
    ) == (seed, msg.dist, msg.num_bases, msg.block_size, weight, 3, "c1", wire)
    assert torch.equal(back.active, msg.active)
    wire_dt = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[wire]
    assert torch.equal(back.coeffs, msg.coeffs.to(wire_dt).float())
    assert set(back.full) == set(msg.full)


def test_server_schedules_clipping_and_momentum():
    model = mlp()
    comp = UpdateCodec.for_module(model, FerretConfig(num_bases=8, block_size=32768, full_threshold=1000))
    cos = FerretServer(comp, ServerConfig(lr=2.0, schedule="cosine", rounds=10))
    assert cos.lr_at(0) == 2.0 and abs(cos.lr_at(5) - 1.0) < 1e-12 and abs(cos.lr_at(10)) < 1e-12
    step = FerretServer(comp, ServerConfig(lr=1.0, schedule="step", step_every=3, step_gamma=0.1))
    assert step.lr_at(2) == 1.0 and abs(step.lr_at(3) - 0.1) < 1e-12
    per = FerretServer(comp, ServerConfig(seed_scheme="per_client", base_seed=5))
    assert per.seed_for(0, 1) != per.seed_for(0, 2) and per.seed_for(1, 1) != per.seed_for(0, 1)
    shared = FerretServer(comp, ServerConfig(base_seed=5))
    assert shared.seed_for(0, 1) == shared.seed_for(0, 2)
    # clipping: the update's coefficient norm is capped
    m = comp.compress(model, _perturbed(model, scale=1.0), seed=1)
    ((clipped, _),) = FerretServer(comp, ServerConfig(clip_norm=0.5)).aggregate([m])
    norm = math.sqrt(float(clipped.coeffs.square().sum()) + sum(float(t.square().sum()) for t in clipped.full.values()))
    assert abs(norm - 0.5) < 1e-4
    # momentum: round 2 applies U2 + beta U1
    beta = 0.5
    mom = FerretServer(comp, ServerConfig(momentum=beta))
    u1 = comp.compress(model, _perturbed(model, seed=1), seed=11)
    u2 = comp.compress(model, _perturbed(model, seed=2), seed=12, round=1)
    a, b = copy.deepcopy(model), copy.deepcopy(model)
    mom.step(a, [u1], 0)
    mom.step(a, [u2], 1)
    for m_, lr in ((u1, 1.0), (u2, 1.0), (u1, beta)):
        comp.apply(b, [m_], lr=lr)
    for (_n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)


def _loop(method, rounds=8, **server):
    task = BlobTask()
    model = mlp()
    fc = FerretConfig(num_bases=64, block_size=32768, full_threshold=1000)
    cfg = LoopConfig(
        method=method,
        rounds=rounds,
        clients_per_round=4,
        local_steps=10,
        local_lr=0.05,
        zo_lr=1e-4,
        ferret=fc,
        server=ServerConfig(**server),
        progress=False,
    )
    start = task.evaluate(model)["loss"]
    recs = run(task, model, cfg)
    return start - recs[-1]["loss"], recs


@pytest.fixture(scope="module")
def fedavg_run():
    return _loop("fedavg")


@pytest.mark.parametrize("scheme", ["shared", "per_client"])
def test_convergence_ferret_vs_fedavg(fedavg_run, scheme):
    gain_avg, recs_avg = fedavg_run
    gain, recs = _loop("ferret", seed_scheme=scheme)
    assert gain >= 0.5 * gain_avg, (gain, gain_avg)
    assert recs_avg[-1]["bytes_up_per_client"] >= 100 * recs[-1]["bytes_up_per_client"]
    assert all(r["rejected"] == 0 for r in recs)


def test_convergence_fails_with_a_wrong_seed_or_scale(fedavg_run, monkeypatch):
    """The convergence test's bar is discriminating: sabotaging either side breaks it."""
    gain_avg, _ = fedavg_run
    from ferret_kernels.fl import codec as C

    orig = C.UpdateCodec.apply_coefficients
    monkeypatch.setattr(
        C.UpdateCodec,
        "apply_coefficients",
        lambda self, params, coeffs, seed, dist, active, lr: orig(self, params, coeffs, seed + 1, dist, active, lr),
    )
    gain, _ = _loop("ferret")
    assert gain < 0.5 * gain_avg, "a server reconstructing with the wrong seed must not converge"
    monkeypatch.setattr(
        C.UpdateCodec,
        "apply_coefficients",
        lambda self, params, coeffs, seed, dist, active, lr: orig(self, params, coeffs * 8.0, seed, dist, active, lr),
    )
    gain, _ = _loop("ferret")
    assert gain < 0.5 * gain_avg, "a server with the wrong scale must not converge"


def test_zeroth_order_baseline_runs_and_counts_bytes():
    gain, recs = _loop("zo", rounds=3)
    assert recs[-1]["bytes_up_per_client"] == 10 * 8 and recs[-1]["bytes_down_per_client"] == 64 * 4
    assert math.isfinite(recs[-1]["loss"])


def test_zo_perturbation_restores_parameters():
    from ferret_kernels.fl.harness.loop import _zo_perturb

    model = mlp()
    lay = ParamLayout.from_module(model, 32768, 0)
    before = _state(model)
    _zo_perturb(model, lay, 123, "rademacher", 1e-3)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    assert abs(moved - 1e-3) < 1e-6
    _zo_perturb(model, lay, 123, "rademacher", -1e-3)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p, before[n], rtol=0, atol=1e-7)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="measures VmHWM through /proc")
def test_apply_adds_no_model_sized_allocation():
    """Peak RSS while applying an update to a 256 MB model stays far below the model's size."""
    code = r"""
import torch, sys
from ferret_kernels.fl import UpdateCodec, FerretConfig
torch.manual_seed(0)
model = torch.nn.Sequential(*[torch.nn.Linear(4096, 4096, bias=False) for _ in range(4)])  # 67M params, 268 MB
comp = UpdateCodec.for_module(model, FerretConfig(num_bases=64, block_size=1 << 20))
g = torch.Generator().manual_seed(1)
nb = comp.layout.total_blocks
from ferret_kernels.fl.message import UpdateMessage
msg = UpdateMessage(comp.layout.fingerprint, 5, "rademacher", 64, 1 << 20, torch.full((nb,), 64, dtype=torch.int32),
                    torch.randn(nb * 64, generator=g))
comp.apply(model, [msg], lr=1e-3)  # warm up
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
before = status("VmRSS:")
comp.apply(model, [msg], lr=1e-3)
print((status("VmHWM:") - before) / 1024)
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    extra_mb = float(res.stdout.strip().splitlines()[-1])
    assert extra_mb < 16, f"applying an update to a 268 MB model allocated {extra_mb:.1f} MB"
