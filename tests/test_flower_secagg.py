"""Ferret under Flower's SecAgg+ on a real local deployment (a SuperLink and 4 SuperNodes): the
server applies the mean of the clients' coefficient vectors, recovered from masked vectors
only; a node that drops after sharing its keys (a test-only client mod fails it at the
collect-masked-vectors stage of round 1) is left out and the round completes."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import numpy as np
import pytest

pytest.importorskip("flwr", reason="flwr not installed (pip install 'ferret_kernels[flower]')")
if not os.path.exists(os.path.join(os.path.dirname(sys.executable), "flower-superlink")):
    pytest.skip("flower-superlink not installed beside this Python", allow_module_level=True)

from ferret_kernels.fl.harness.flower_local import LocalDeployment  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "python", "ferret_flower_secagg")
NODES = 4

# test-only ClientApp: the real handler behind a mod that fails one node after it shared its keys
_DROP_CLIENT = '''"""Test-only ClientApp (tests/test_flower_secagg.py): the node whose config has drop-round=R
fails at SecAgg+'s collect-masked-vectors stage of round R, after sharing its keys."""

import flwr.compat.common.recorddict_compat as compat
from flwr.app import Context, Message
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from . import client_app as real


def drop_mod(msg: Message, context: Context, call_next) -> Message:
    cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
    if cfg is not None and cfg.get(Key.STAGE) == Stage.COLLECT_MASKED_VECTORS:
        rnd = int(compat.recorddict_to_fitins(msg.content, keep_input=True).config["round"])
        if rnd == int(context.node_config.get("drop-round", -1)):
            raise RuntimeError(f"node dropped after sharing its keys (round {rnd}, test)")
    return call_next(msg, context)


app = ClientApp(mods=[drop_mod, secaggplus_mod])
app.train()(real.train)
'''


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    dest = str(tmp_path_factory.mktemp("app") / "ferret_flower_secagg")
    shutil.copytree(APP, dest, ignore=shutil.ignore_patterns("__pycache__"))
    with open(os.path.join(dest, "ferret_secagg_app", "client_drop.py"), "w") as f:
        f.write(_DROP_CLIENT)
    p = os.path.join(dest, "pyproject.toml")
    with open(p) as f:
        s = f.read()
    s = re.sub(r'clientapp = "[^"]*"', 'clientapp = "ferret_secagg_app.client_drop:app"', s)
    with open(p, "w") as f:
        f.write(s)
    return dest


def test_secaggplus_round_completes_without_a_dropped_node_and_applies_the_mean(app, tmp_path):
    nodes = [f"partition-id={i} num-partitions={NODES}" + (" drop-round=1" if i == 0 else "") for i in range(NODES)]
    out = tmp_path / "out"
    with LocalDeployment(str(tmp_path / "dep"), node_configs=nodes) as d:
        run = d.run(app, f"num-server-rounds=2 min-nodes={NODES} stage-timeout=60.0 out-dir='{out}'", timeout=240)
        logs = d.logs()
    assert run.returncode == 0 and (out / "rounds.json").exists(), run.stdout[-3000:] + run.stderr[-3000:] + logs
    rep = json.loads((out / "rounds.json").read_text())
    assert rep["clients"] == {"1": NODES - 1, "2": NODES}  # round 1 without the dropped node, round 2 with all
    step = 2 * 8.0 / 4194304  # SecAgg+'s fixed-point step: 2 clipping_range / quantization_range
    for rnd, parts in (("1", range(1, NODES)), ("2", range(NODES))):
        vecs = np.stack([np.load(out / "nodes" / f"round{rnd}_partition{p}.npy") for p in parts])
        got = np.array(rep["rounds"][rnd]["mean"])
        assert np.abs(vecs).max() < 8.0  # nothing was clipped by the quantizer
        np.testing.assert_allclose(got, vecs.mean(0), rtol=0, atol=step)  # the mean, to the quantization step
        assert np.abs(got - vecs[0]).max() > 100 * step  # and not one client's vector
    assert not (out / "nodes" / "round1_partition0.npy").exists()  # the dropped node never trained in round 1
    # the applied means trained the model (measured: 0.377 after 2 rounds from about chance, 0.1)
    assert rep["final"]["metric"] > rep["start"]["metric"] + 0.15, (rep["start"], rep["final"])
