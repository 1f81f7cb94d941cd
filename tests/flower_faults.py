"""Fault injection for the Flower deployment tests and the soak benchmark, kept out of the
example app: a Flower client mod that garbles a node's update, and `faulty_app(dest)`, which
copies python/ferret_flower to `dest` and points its ClientApp at a module that registers
the real app's handlers behind that mod (the real app's code runs unchanged).

Node config keys read by the mod: `corrupt-round=R` garbles this node's update in round R;
`corrupt-rate=p` in a fraction p of rounds (drawn from the partition id and the round). The
last 8 bytes of the encoded update become 0xff (NaN coefficients): the server must reject
the update and finish the round without it."""

from __future__ import annotations

import os
import re
import shutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP = os.path.join(ROOT, "python", "ferret_flower")

# the module written into the copied app (a ClientApp with the mod, the real handlers)
_FAULTY_CLIENT = '''"""Test-only ClientApp: ferret_flower_app's handlers behind the corrupt-update mod
(written by tests/flower_faults.py)."""

import random

from flwr.app import ConfigRecord, Context, Message
from flwr.clientapp import ClientApp

from ferret_kernels.fl.flower import CONFIG, UPDATE

from . import client_app as real


def corrupt_update_mod(msg: Message, context: Context, call_next) -> Message:
    reply = call_next(msg, context)
    if reply.has_error() or UPDATE not in reply.content:
        return reply
    rnd = int(msg.content[CONFIG]["round"])
    pid = int(context.node_config.get("partition-id", 0))
    rate = float(context.node_config.get("corrupt-rate", 0.0))
    if int(context.node_config.get("corrupt-round", -1)) == rnd or (rate and random.Random(f"{pid}:{rnd}").random() < rate):
        data = bytearray(reply.content[UPDATE]["update"])
        data[-8:] = b"\\xff" * 8  # the last coefficients become NaN
        reply.content[UPDATE] = ConfigRecord(dict(reply.content[UPDATE], update=bytes(data)))
    return reply


app = ClientApp()
app.train(mods=[corrupt_update_mod])(real.train)
app.evaluate()(real.evaluate)
'''


def faulty_app(dest: str) -> str:
    """A copy of the example app whose ClientApp corrupts updates as the node config says."""
    if os.path.exists(dest):
        shutil.rmtree(dest)
    shutil.copytree(APP, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    with open(os.path.join(dest, "ferret_flower_app", "faulty_client.py"), "w") as f:
        f.write(_FAULTY_CLIENT)
    toml = os.path.join(dest, "pyproject.toml")
    with open(toml) as f:
        text = f.read()
    new = re.sub(
        r'clientapp = "ferret_flower_app\.client_app:app"', 'clientapp = "ferret_flower_app.faulty_client:app"', text
    )
    if new == text:
        raise RuntimeError(f"{toml}: no clientapp entry to redirect")
    with open(toml, "w") as f:
        f.write(new)
    return dest
