"""The federated layer against a hostile client (docs/threat_model.md).

A client controls every byte of its update and every value of its reply records. These
tests generate such inputs (hypothesis: >= 10,000 cases over message bytes and reply
records, see N_CASES) against the decoder and the strategy's reply validation directly,
and check properties against references computed independently of the code under test:
- decode raises DecodeError and nothing else, whatever it is given;
- it accepts exactly the canonical encodings of valid messages (an oracle built from how
  each case was generated, not from the decoder);
- a round with a hostile reply gives, bit for bit, the model of the same round without
  it (unless the reply was a valid update, then the model with it), whatever the order;
- weights, magnitudes, K, rounds and ids are bounded as the threat model says.
"""

from __future__ import annotations

import array
import copy
import json
import math
import random
import struct

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ferret_kernels as fk
from ferret_kernels.fl import Compressor, DecodeError, FerretConfig, FerretServer, ServerConfig, decode, encode
from ferret_kernels.fl.compress import _block_scale
from ferret_kernels.fl.message import MAX_WEIGHT, UpdateMessage

pytest.importorskip("safetensors")

# generated cases per test (their sum is the suite's count; each runs in well under 20 s on 2 cores)
N_CASES = {"arbitrary": 2500, "mutated": 2500, "metadata": 2000, "tensors": 1200, "replies": 2000, "shares": 1000}
assert sum(N_CASES.values()) >= 10_000
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


CFG = FerretConfig(num_bases=4, block_size=64, full_threshold=20)           # 3 projected blocks, biases in full
ACFG = FerretConfig(num_bases=4, block_size=64, full_threshold=20, adaptive=True, k_max=8)
MODEL = _model()
COMP = Compressor.for_module(MODEL, CFG)
ACOMP = Compressor.for_module(MODEL, ACFG)
LAY = COMP.layout


def _new(seed, scale=1e-2):
    g = torch.Generator().manual_seed(seed)
    return {n: p.detach() - scale * torch.randn(p.shape, generator=g) for n, p in MODEL.named_parameters()}


def _valid(seed=5, comp=COMP, **kw) -> bytes:
    return encode(comp.compress(MODEL, _new(seed), seed=seed, **kw))


def _split(data: bytes):
    (hlen,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + hlen]), data[8 + hlen :]


def _assemble(text: bytes, body: bytes, pad: bool = True) -> bytes:
    if pad:
        text = text + b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + body


GOOD = _valid(round=3, client="7", weight=12.0)
GOOD_HEADER, GOOD_BODY = _split(GOOD)


def _decodes(data, comp=COMP):
    """decode's outcome; any exception other than DecodeError fails the test."""
    try:
        return decode(data, comp.layout, max_bases=comp.config.max_bases)
    except DecodeError as e:
        assert str(e), "a rejection must say why"
        return e


# ---------------------------------------------------------------------- message bytes
def _nested(depth):
    return b"[" * depth + b"]" * depth


hostile_objects = st.one_of(
    st.binary(max_size=256),
    st.builds(lambda n, b: struct.pack("<Q", n) + b, st.integers(0, 2**64 - 1), st.binary(max_size=600)),
    st.builds(lambda d: _assemble(b'{"__metadata__":{"a":' + _nested(d) + b"}}", b""), st.integers(1, 900)),
    st.builds(lambda d: _assemble(b'{"c":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + _nested(d) + b"}}", b"\0" * 4),
              st.integers(1, 900)),
    st.builds(lambda t: _assemble(t.encode("utf-8", "surrogatepass"), b""), st.text(max_size=300)),
    st.builds(lambda j: _assemble(json.dumps(j).encode(), b"\0" * 16),
              st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                           max_leaves=30)),
    st.builds(lambda b: memoryview(array.array("d", b[: len(b) // 8 * 8])), st.binary(max_size=64)),
    st.builds(lambda b: memoryview(b)[::2], st.binary(min_size=2, max_size=64)),
    st.builds(bytearray, st.binary(max_size=64)),
    st.text(max_size=40), st.integers(), st.none(), st.lists(st.integers(0, 255), max_size=10),
)


@settings(max_examples=N_CASES["arbitrary"], **FAST)
@given(obj=hostile_objects)
def test_decode_rejects_arbitrary_input_with_decode_error_only(obj):
    out = _decodes(obj)
    assert isinstance(out, DecodeError), "random input was accepted"


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(1, 255)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.binary(min_size=1, max_size=4)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 8)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("header"), st.integers(0, 10**6), st.sampled_from([b" ", b"\n", b"0", b"+", b"\\u0030", b"}", b"{", b'"'])),
)


def _mutate(data: bytearray, op):
    kind, pos, arg = op
    if not data:
        return data
    if kind == "header":
        hlen = struct.unpack("<Q", bytes(data[:8]))[0] if len(data) >= 8 else 0
        pos = 8 + pos % max(1, min(hlen, len(data) - 8))
        return data[:pos] + arg + data[pos:]
    pos %= len(data)
    if kind == "flip":
        data[pos] ^= arg
        return data
    if kind == "insert":
        return data[:pos] + arg + data[pos:]
    if kind == "delete":
        return data[:pos] + data[pos + arg :]
    return data[:pos]


VARIANTS = {}
for _adaptive in (False, True):
    for _wire in ("float32", "bfloat16", "float16"):
        _c = Compressor.for_module(MODEL, FerretConfig(num_bases=4, block_size=64, full_threshold=20, adaptive=_adaptive,
                                                       k_max=8, wire_dtype=_wire))
        VARIANTS[_adaptive, _wire] = (_c, _valid(comp=_c, round=2, client="node-1", weight=3.0))


@settings(max_examples=N_CASES["mutated"], **FAST)
@given(variant=st.sampled_from(sorted(VARIANTS)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_messages_are_rejected_or_canonical_and_valid(variant, ops):
    comp, good = VARIANTS[variant]
    data = bytearray(good)
    for op in ops:
        data = _mutate(data, op)
    data = bytes(data)
    out = _decodes(data, comp)
    if isinstance(out, DecodeError):
        return
    # accepted: it must be the one encoding of a message that fits the layout and bounds
    assert encode(out) == data
    comp.check(out)
    assert torch.isfinite(out.coeffs).all() and all(torch.isfinite(t).all() for t in out.full.values())
    assert 0 <= out.weight <= MAX_WEIGHT and 1 <= out.num_bases <= comp.config.max_bases
    assert out.coeffs.numel() == int(out.active.sum()) and out.active.numel() == comp.layout.total_blocks


# field generators: (value, valid?) so the oracle is how the case was built, not the decoder
def _uint_values(hi):
    ok = st.integers(0, hi).map(lambda n: (str(n), True))
    bad = st.one_of(
        st.integers(1, hi).map(lambda n: ("0" + str(n), False)),                       # leading zero
        st.integers(0, hi).map(lambda n: (f" +{n} ", False)),
        st.integers(0, hi).map(lambda n: ("+" + str(n), False)),
        st.integers(0, hi).map(lambda n: (str(n).translate({i: 0xFF10 + i - 48 for i in range(48, 58)}), False)),  # fullwidth
        st.integers(0, hi).map(lambda n: (str(n).translate({i: 0x0660 + i - 48 for i in range(48, 58)}), False)),  # Arabic-Indic
        st.integers(10, hi).map(lambda n: (str(n)[0] + "_" + str(n)[1:], False)),
        st.integers(hi + 1, 2 * hi + 10).map(lambda n: (str(n), False)),             # out of range
        st.integers(4301, 6000).map(lambda d: ("7" * d, False)),                       # longer than int() allows
        st.sampled_from([("", False), ("-1", False), ("-0", False), ("1e3", False), ("0x10", False), ("1.0", False),
                         ("nan", False), ("٣", False), ("1 ", False), ("\t1", False)]),
    )
    return st.one_of(ok, bad)


def _fixed_values(good):
    bad = st.one_of(st.sampled_from([" " + good, good + " ", good.upper() if good.upper() != good else good + "x", "", "0" + good,
                                     good.translate({i: 0xFF10 + i - 48 for i in range(48, 58)})]),
                    st.text(max_size=12)).filter(lambda s: s != good).map(lambda s: (s, False))
    return st.one_of(st.just((good, True)), bad)


_weights_ok = st.one_of(st.floats(0, MAX_WEIGHT), st.integers(0, 2**53).map(float)).map(lambda w: (repr(w), True))
_weights_bad = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1.0", "-0.0", "1e300", "1.7976931348623157e+308", "1", "1.00", " 1.0", "1_0.0",
                     "１.0", "0x1p0", "1.0e+00", "", "1e+16", "9007199254740993.0", "NaN", "Infinity"]),
    st.floats(MAX_WEIGHT * 1.0001, 1e308).map(repr),
    st.floats(0, 1e6).map(lambda w: f"{w:.3e}").filter(lambda s: repr(float(s)) != s),
).map(lambda s: (s, False))
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@+-")  # the documented id alphabet
_ids_ok = st.text("abcXYZ0189._:@+-", min_size=1, max_size=64).map(lambda s: (s, True))
_ids_bad = st.one_of(st.sampled_from(["", " ", "a b", "é", "\n", 'a"b', "a\\b", "x" * 65, "\x00"]), st.text(min_size=1, max_size=80)
                     ).map(lambda s: (s, 1 <= len(s) <= 64 and set(s) <= _ID_CHARS))
_libs = st.one_of(st.sampled_from([("0.1.0", True), ("2.13.0rc1", True), ("1!2.0+local.1", True), ("", False), ("x1", False),
                                   (" 0.1.0", False), ("0.1.0\n", False), ("9" * 49, False)]))
FIELDS = {"seed": _uint_values(2**64 - 1), "r": _uint_values(2**62), "w": st.one_of(_weights_ok, _weights_bad),
          "id": st.one_of(_ids_ok, _ids_bad), "lib": _libs,
          **{k: _fixed_values(GOOD_HEADER["__metadata__"][k]) for k in ("fmt", "rng", "fp", "dist", "K", "bs", "nb")}}
FORMATS = ["canonical", "spaces", "newline", "unsorted", "escaped", "extra-padding", "no-padding"]
CHANGED = st.lists(st.sampled_from(sorted(FIELDS)), max_size=3, unique=True)


@settings(max_examples=N_CASES["metadata"], **FAST)
@given(data=st.data())
def test_metadata_accepted_iff_every_field_is_valid_and_canonical(data):
    meta = dict(GOOD_HEADER["__metadata__"])
    labels = {}
    for key in data.draw(CHANGED, label="changed"):
        meta[key], labels[key] = data.draw(FIELDS[key], label=key)
    shape = data.draw(st.sampled_from(["as is", "drop", "extra", "nested"]), label="shape")
    if shape == "drop":
        key = data.draw(st.sampled_from(sorted(meta)), label="dropped")
        del meta[key]
        labels[key] = key == "id"  # only the client id is optional
    elif shape == "extra":
        key = data.draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in meta), label="extra key")
        meta[key], labels[key] = "1", False
    fmt = data.draw(st.sampled_from(FORMATS), label="format")
    items = sorted(meta.items())
    if fmt == "unsorted":
        random.Random(data.draw(st.integers(), label="order")).shuffle(items)
        if items == sorted(meta.items()):
            fmt = "canonical"
    header = {"__metadata__": dict(items), **{k: v for k, v in GOOD_HEADER.items() if k != "__metadata__"}}
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
    if shape == "nested":
        depth = data.draw(st.integers(1, 800), label="depth")  # within the header bound: reaches the parsers
        text = text.replace('"__metadata__":{', '"__metadata__":{"deep":' + "[" * depth + "]" * depth + ",", 1)
    if fmt == "spaces":
        text = json.dumps(header, ensure_ascii=False)
    elif fmt == "newline":
        text = text.replace(",", ",\n", 1)
    elif fmt == "escaped":
        at = text.find("0", 20)
        if at < 0:
            fmt = "canonical"  # nothing to escape
        else:
            text = text[:at] + "\\u0030" + text[at + 1 :]
    raw = text.encode("utf-8", "surrogatepass")
    raw = raw + b" " * (-len(raw) % 8) + (b" " * 8 if fmt == "extra-padding" else b"")
    if fmt == "no-padding" and len(text.encode("utf-8", "surrogatepass")) % 8 == 0:
        fmt = "canonical"
    if fmt == "no-padding":
        raw = text.encode("utf-8", "surrogatepass")
    out = _decodes(struct.pack("<Q", len(raw)) + raw + GOOD_BODY)
    valid = all(labels.values()) and fmt == "canonical" and shape != "nested"
    if valid:
        assert isinstance(out, UpdateMessage), f"a valid canonical message was rejected: {out}"
        assert (str(out.seed), str(out.round), repr(out.weight), out.client, out.lib) == \
            (meta["seed"], meta["r"], meta["w"], meta.get("id", ""), meta["lib"])
    else:
        assert isinstance(out, DecodeError), f"accepted although {labels} / {fmt} / {shape}"
        bad = [k for k, ok in labels.items() if not ok]
        if len(bad) == 1 and fmt == "canonical" and shape == "as is" and bad[0] in ("seed", "r") and len(meta[bad[0]]) < 100:
            assert repr(bad[0])[1:-1] in str(out), (bad, str(out))  # the reason names the field


@settings(max_examples=N_CASES["tensors"], **FAST)
@given(K=st.integers(1, 8), c_dt=st.sampled_from([torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.int32]),
       f_dt=st.sampled_from([None, torch.float32, torch.bfloat16, torch.int8]),
       a_dt=st.sampled_from([None, torch.uint8, torch.int16, torch.int32, torch.int64, torch.float32]),
       counts=st.lists(st.integers(-2, 10), min_size=3, max_size=3), extra=st.integers(-2, 2),
       poison=st.sampled_from([None, "nan", "inf", "-inf", "big"]), where=st.sampled_from(["c", "f"]))
def test_tensor_fields_accepted_iff_consistent(K, c_dt, f_dt, a_dt, counts, extra, poison, where):
    """Oracle: the count vector, coefficient count, dtypes and values are valid by construction or not."""
    from safetensors.torch import save

    f_dt = f_dt or c_dt
    active = torch.tensor(counts)
    n = max(int(active.clamp(min=0).sum()) + extra, 0)
    tensors = {"c": torch.linspace(-1, 1, n).to(c_dt)}
    for s in LAY.full:
        tensors["f." + s.name] = torch.full(s.shape, 0.5).to(f_dt)
    if a_dt is not None:
        tensors["a"] = active.to(a_dt)
    poisoned, poisoned_dtype = False, None
    t = tensors["c"] if where == "c" else tensors["f." + LAY.full[0].name]
    if poison and t.numel() and t.is_floating_point():
        t.view(-1)[0] = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf, "big": 1e38}[poison]
        poisoned, poisoned_dtype = True, t.dtype
    meta = dict(GOOD_HEADER["__metadata__"], K=str(K))
    raw = save(tensors, metadata=meta)
    hdr, body = _split(raw)
    hdr["__metadata__"] = dict(sorted(meta.items()))
    data = _assemble(json.dumps(hdr, separators=(",", ":")).encode(), body)
    wire_ok = c_dt in (torch.float32, torch.bfloat16, torch.float16) and f_dt == c_dt
    count_dt = torch.uint8  # K <= 8
    if a_dt is None:  # no counts: every block has K
        counts_ok = n == 3 * K
    else:  # canonical counts: the smallest dtype for K, in [0, K], not all K, summing to the coefficients
        counts_ok = a_dt == count_dt and all(0 <= c <= K for c in counts) and not all(c == K for c in counts) and extra == 0
    finite = not poisoned or (poison == "big" and poisoned_dtype != torch.float16)  # 1e38 is inf in fp16 only
    out = _decodes(data, ACOMP)  # K up to 8
    if wire_ok and counts_ok and finite:
        assert isinstance(out, UpdateMessage), out
        assert out.num_bases == K and out.active.tolist() == ([K] * 3 if a_dt is None else counts)
    else:
        assert isinstance(out, DecodeError), (wire_ok, counts_ok, finite)


def test_decode_refuses_a_block_count_other_than_the_layouts():
    """A message consistent in itself (counts, coefficients, canonical bytes) but for one
    block more or less than the layout: only the block-count check can refuse it."""
    for nb in (LAY.total_blocks - 1, LAY.total_blocks + 1, 0):
        m = UpdateMessage(LAY.fingerprint, 5, "rademacher", 4, LAY.block_size, torch.full((nb,), 4, dtype=torch.int32),
                          torch.ones(4 * nb), {s.name: torch.zeros(s.shape) for s in LAY.full}, 1.0, 0, "7")
        with pytest.raises(DecodeError, match=rf"message has {nb} blocks, the layout {LAY.total_blocks}"):
            decode(encode(m), LAY)


@pytest.mark.parametrize("field,value,why", [
    ("seed", " +8 ", "not a canonical decimal integer"), ("seed", "８", "not a canonical decimal integer"),
    ("r", "1_0", "not a canonical decimal integer"), ("seed", "9" * 300, "seed=.* is not a canonical decimal integer"),
    ("K", "04", "not a canonical decimal integer"), ("w", "1e300", r"must be finite and in \[0, 2\^53\]"),
    ("w", "1.00", "not spelled canonically"), ("w", "nan", "weight .nan. is not a non-negative decimal number"), ("lib", "", "not a version string"),
    ("id", "a b", "client id"), ("fmt", "2", "format version"), ("rng", "0", "RNG contract"),
])
def test_each_field_is_parsed_strictly_with_a_reason(field, value, why):
    meta = dict(GOOD_HEADER["__metadata__"], **{field: value})
    hdr = {"__metadata__": dict(sorted(meta.items())), **{k: v for k, v in GOOD_HEADER.items() if k != "__metadata__"}}
    with pytest.raises(DecodeError, match=why):
        decode(_assemble(json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode(), GOOD_BODY), LAY)


def test_decode_leaks_no_other_exception_type():
    """The issue's cases: deep nesting (RecursionError), very long integers (ValueError), a
    memoryview of doubles (struct.error / len in items), a header length beyond the data."""
    deep = _assemble(b'{"__metadata__":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}", b"")
    cases = [deep, memoryview(array.array("d", [1.0] * 64)), struct.pack("<Q", 2**63) + b"{}",
             GOOD.replace(b'"r":"3"', b'"r":"' + b"1" * 5000 + b'"')]
    for c in cases:
        with pytest.raises(DecodeError):
            decode(c, LAY)
    assert isinstance(decode(memoryview(GOOD), LAY), UpdateMessage)  # a byte memoryview is fine


def test_encoding_is_canonical_and_deterministic():
    """safetensors writes metadata in a random order (a new Rust HashMap each call); encode does not."""
    from safetensors.torch import save

    msg = COMP.compress(MODEL, _new(5), seed=5, round=3, client="7", weight=12.0)
    assert {encode(msg) for _ in range(20)} == {GOOD}
    raw = {save({"c": torch.zeros(2)}, metadata=dict(GOOD_HEADER["__metadata__"])) for _ in range(20)}
    assert len(raw) > 1, "safetensors' metadata order became deterministic: the reordering could go"
    meta = list(GOOD_HEADER["__metadata__"])
    assert meta == sorted(meta)


