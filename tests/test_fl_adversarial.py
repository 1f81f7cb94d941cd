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
import dataclasses
import json
import math
import random
import re
import struct

import pytest
import torch
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import ferret_kernels as fk
from ferret_kernels.fl import DecodeError, FerretConfig, FerretServer, ServerConfig, UpdateCodec, decode, encode
from ferret_kernels.fl.aggregate import block_scale as _block_scale
from ferret_kernels.fl.message import MAX_WEIGHT, UpdateMessage
from ferret_kernels.fl.server import capped_shares

pytest.importorskip("safetensors")

# generated cases per test (their sum is the suite's count; each runs in well under 20 s on 2 cores)
N_CASES = {"arbitrary": 2500, "mutated": 2500, "metadata": 2000, "tensors": 1200, "replies": 2000, "shares": 1000}
assert sum(N_CASES.values()) >= 10_000
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))


CFG = FerretConfig(num_bases=4, block_size=64, full_threshold=20)  # 3 projected blocks, biases in full
ACFG = FerretConfig(num_bases=4, block_size=64, full_threshold=20, adaptive=True, k_max=8)
MODEL = _model()
COMP = UpdateCodec.for_module(MODEL, CFG)
ACOMP = UpdateCodec.for_module(MODEL, ACFG)
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
    st.builds(
        lambda d: _assemble(
            b'{"c":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":' + _nested(d) + b"}}", b"\0" * 4
        ),
        st.integers(1, 900),
    ),
    st.builds(lambda t: _assemble(t.encode("utf-8", "surrogatepass"), b""), st.text(max_size=300)),
    st.builds(
        lambda j: _assemble(json.dumps(j).encode(), b"\0" * 16),
        st.recursive(
            st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=8),
            lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
            max_leaves=30,
        ),
    ),
    st.builds(lambda b: memoryview(array.array("d", b[: len(b) // 8 * 8])), st.binary(max_size=64)),
    st.builds(lambda b: memoryview(b)[::2], st.binary(min_size=2, max_size=64)),
    st.builds(bytearray, st.binary(max_size=64)),
    st.text(max_size=40),
    st.integers(),
    st.none(),
    st.lists(st.integers(0, 255), max_size=10),
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
    st.tuples(
        st.just("header"),
        st.integers(0, 10**6),
        st.sampled_from([b" ", b"\n", b"0", b"+", b"\\u0030", b"}", b"{", b'"']),
    ),
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
        _c = UpdateCodec.for_module(
            MODEL,
            FerretConfig(num_bases=4, block_size=64, full_threshold=20, adaptive=_adaptive, k_max=8, wire_dtype=_wire),
        )
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
        st.integers(1, hi).map(lambda n: ("0" + str(n), False)),  # leading zero
        st.integers(0, hi).map(lambda n: (f" +{n} ", False)),
        st.integers(0, hi).map(lambda n: ("+" + str(n), False)),
        st.integers(0, hi).map(
            lambda n: (str(n).translate({i: 0xFF10 + i - 48 for i in range(48, 58)}), False)
        ),  # fullwidth
        st.integers(0, hi).map(
            lambda n: (str(n).translate({i: 0x0660 + i - 48 for i in range(48, 58)}), False)
        ),  # Arabic-Indic
        st.integers(10, hi).map(lambda n: (str(n)[0] + "_" + str(n)[1:], False)),
        st.integers(hi + 1, 2 * hi + 10).map(lambda n: (str(n), False)),  # out of range
        st.integers(4301, 6000).map(lambda d: ("7" * d, False)),  # longer than int() allows
        st.sampled_from(
            [
                ("", False),
                ("-1", False),
                ("-0", False),
                ("1e3", False),
                ("0x10", False),
                ("1.0", False),
                ("nan", False),
                ("٣", False),
                ("1 ", False),
                ("\t1", False),
            ]
        ),
    )
    return st.one_of(ok, bad)


def _fixed_values(good):
    bad = (
        st.one_of(
            st.sampled_from(
                [
                    " " + good,
                    good + " ",
                    good.upper() if good.upper() != good else good + "x",
                    "",
                    "0" + good,
                    good.translate({i: 0xFF10 + i - 48 for i in range(48, 58)}),
                ]
            ),
            st.text(max_size=12),
        )
        .filter(lambda s: s != good)
        .map(lambda s: (s, False))
    )
    return st.one_of(st.just((good, True)), bad)


_weights_ok = st.one_of(st.floats(0, MAX_WEIGHT), st.integers(0, 2**53).map(float)).map(lambda w: (repr(w), True))
_weights_bad = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1.0",
            "-0.0",
            "1e300",
            "1.7976931348623157e+308",
            "1",
            "1.00",
            " 1.0",
            "1_0.0",
            "１.0",
            "0x1p0",
            "1.0e+00",
            "",
            "1e+16",
            "9007199254740993.0",
            "NaN",
            "Infinity",
        ]
    ),
    st.floats(MAX_WEIGHT * 1.0001, 1e308).map(repr),
    st.floats(0, 1e6).map(lambda w: f"{w:.3e}").filter(lambda s: repr(float(s)) != s),
).map(lambda s: (s, False))
_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@+-")  # the documented id alphabet
_ids_ok = st.text("abcXYZ0189._:@+-", min_size=1, max_size=64).map(lambda s: (s, True))
_ids_bad = st.one_of(
    st.sampled_from(["", " ", "a b", "é", "\n", 'a"b', "a\\b", "x" * 65, "\x00"]), st.text(min_size=1, max_size=80)
).map(lambda s: (s, 1 <= len(s) <= 64 and set(s) <= _ID_CHARS))
_libs = st.one_of(
    st.sampled_from(
        [
            ("0.1.0", True),
            ("2.13.0rc1", True),
            ("1!2.0+local.1", True),
            ("", False),
            ("x1", False),
            (" 0.1.0", False),
            ("0.1.0\n", False),
            ("9" * 49, False),
        ]
    )
)
FIELDS = {
    "seed": _uint_values(2**64 - 1),
    "r": _uint_values(2**62),
    "w": st.one_of(_weights_ok, _weights_bad),
    "id": st.one_of(_ids_ok, _ids_bad),
    "lib": _libs,
    **{k: _fixed_values(GOOD_HEADER["__metadata__"][k]) for k in ("fmt", "rng", "fp", "dist", "K", "bs", "nb")},
}
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
        assert (str(out.seed), str(out.round), repr(out.weight), out.client, out.lib) == (
            meta["seed"],
            meta["r"],
            meta["w"],
            meta.get("id", ""),
            meta["lib"],
        )
    else:
        assert isinstance(out, DecodeError), f"accepted although {labels} / {fmt} / {shape}"
        bad = [k for k, ok in labels.items() if not ok]
        if (
            len(bad) == 1
            and fmt == "canonical"
            and shape == "as is"
            and bad[0] in ("seed", "r")
            and len(meta[bad[0]]) < 100
        ):
            assert repr(bad[0])[1:-1] in str(out), (bad, str(out))  # the reason names the field


DEFECTS = [
    None,
    "c dtype",
    "f dtype",
    "count dtype",
    "count above K",
    "counts all K",
    "extra coefficient",
    "missing coefficient",
    "nan",
    "inf",
    "-inf in a full tensor",
    "1e38",
]
# the reason each defect is refused with (a refusal for another reason would hide a missing check)
REASONS = {
    "c dtype": r"dtype",
    "f dtype": r"one wire dtype per message",
    "count dtype": r"active counts must be a torch\.uint8 vector",
    "count above K": r"active counts must be in \[0, K=",
    "counts all K": r"all K \(the canonical form omits them\)",
    "extra coefficient": r"coefficients",
    "missing coefficient": r"coefficients",
    "nan": r"NaN or Inf",
    "inf": r"NaN or Inf",
    "-inf in a full tensor": r"'f\..*' has NaN or Inf",
    "1e38": r"NaN or Inf",
}


@settings(max_examples=N_CASES["tensors"], **FAST)
@given(
    K=st.integers(1, 8),
    wire=st.sampled_from([torch.float32, torch.bfloat16, torch.float16]),
    adaptive=st.booleans(),
    counts=st.lists(st.integers(0, 8), min_size=3, max_size=3),
    defect=st.sampled_from(DEFECTS),
    pos=st.integers(0, 10**6),
)
def test_tensor_fields_accepted_iff_consistent(K, wire, adaptive, counts, defect, pos):
    """A consistent message with at most one planted defect (the oracle: the defect, or none).
    Consistent: counts in [0, K] (not all K: then they are omitted), one coefficient per
    active basis, every tensor in the one wire dtype, finite."""
    from safetensors.torch import save

    counts = [min(c, K) for c in counts]
    if adaptive and all(c == K for c in counts):
        counts[pos % 3] = K - 1
    if defect in ("count above K", "counts all K"):
        adaptive = True
        counts = [K] * 3 if defect == "counts all K" else counts
        if defect == "count above K":
            counts[pos % 3] = K + 1 + pos % 3
    n = sum(counts) if adaptive else 3 * K
    n += {"extra coefficient": 1, "missing coefficient": -1 if n else 1}.get(defect, 0)
    c = torch.linspace(-1, 1, n).to(wire)
    full = {"f." + t.name: torch.full(t.shape, 0.5).to(wire) for t in LAY.full}
    tensors = {"c": c, **full}
    if adaptive:
        tensors["a"] = torch.tensor(counts, dtype=torch.uint8)
    if defect == "c dtype":
        tensors["c"] = c.to(
            [torch.float64, torch.int32, torch.float32 if wire != torch.float32 else torch.float16][pos % 3]
        )
    elif defect == "f dtype":
        name = "f." + LAY.full[pos % len(LAY.full)].name
        tensors[name] = tensors[name].to(torch.bfloat16 if wire != torch.bfloat16 else torch.int8)
    elif defect == "count dtype":
        tensors["a"] = torch.tensor(counts, dtype=[torch.int16, torch.int32, torch.int64, torch.float32][pos % 4])
    elif defect in ("nan", "inf", "1e38"):
        t = c if n else full["f." + LAY.full[0].name]
        t.view(-1)[pos % t.numel()] = {"nan": math.nan, "inf": math.inf, "1e38": 1e38}[defect]
    elif defect == "-inf in a full tensor":
        t = full["f." + LAY.full[-1].name]
        t.view(-1)[pos % t.numel()] = -math.inf
    meta = dict(GOOD_HEADER["__metadata__"], K=str(K))
    hdr, body = _split(save(tensors, metadata=meta))
    hdr["__metadata__"] = dict(sorted(meta.items()))
    out = _decodes(_assemble(json.dumps(hdr, separators=(",", ":")).encode(), body), ACOMP)  # K up to 8
    if defect is None or (defect == "1e38" and wire != torch.float16):  # 1e38 is finite but in fp16
        assert isinstance(out, UpdateMessage), out
        assert out.num_bases == K and out.active.tolist() == (counts if adaptive else [K] * 3)
        assert out.coeffs.numel() == n and torch.equal(out.coeffs, c.float())
    else:
        assert isinstance(out, DecodeError), f"accepted with the defect {defect!r}"
        assert re.search(REASONS[defect], str(out)), (defect, str(out))


def test_decode_refuses_a_block_count_other_than_the_layouts():
    """A message consistent in itself (counts, coefficients, canonical bytes) but for one
    block more or less than the layout: only the block-count check can refuse it."""
    for nb in (LAY.total_blocks - 1, LAY.total_blocks + 1, 0):
        m = UpdateMessage(
            LAY.fingerprint,
            5,
            "rademacher",
            4,
            LAY.block_size,
            torch.full((nb,), 4, dtype=torch.int32),
            torch.ones(4 * nb),
            {s.name: torch.zeros(s.shape) for s in LAY.full},
            1.0,
            0,
            "7",
        )
        with pytest.raises(DecodeError, match=rf"message has {nb} blocks, the layout {LAY.total_blocks}"):
            decode(encode(m), LAY)


@pytest.mark.parametrize(
    "field,value,why",
    [
        ("seed", " +8 ", "not a canonical decimal integer"),
        ("seed", "８", "not a canonical decimal integer"),
        ("r", "1_0", "not a canonical decimal integer"),
        ("seed", "9" * 300, "seed=.* is not a canonical decimal integer"),
        ("K", "04", "not a canonical decimal integer"),
        ("w", "1e300", r"must be finite and in \[0, 2\^53\]"),
        ("w", "1.00", "not spelled canonically"),
        ("w", "nan", "weight .nan. is not a non-negative decimal number"),
        ("lib", "", "not a version string"),
        ("id", "a b", "client id"),
        ("fmt", "2", "format version"),
        ("rng", "0", "RNG contract"),
    ],
)
def test_each_field_is_parsed_strictly_with_a_reason(field, value, why):
    meta = dict(GOOD_HEADER["__metadata__"], **{field: value})
    hdr = {"__metadata__": dict(sorted(meta.items())), **{k: v for k, v in GOOD_HEADER.items() if k != "__metadata__"}}
    with pytest.raises(DecodeError, match=why):
        decode(_assemble(json.dumps(hdr, separators=(",", ":"), ensure_ascii=False).encode(), GOOD_BODY), LAY)


def test_decode_leaks_no_other_exception_type():
    """The issue's cases: deep nesting (RecursionError), very long integers (ValueError), a
    memoryview of doubles (struct.error / len in items), a header length beyond the data."""
    deep = _assemble(b'{"__metadata__":{"x":' + b"[" * 100_000 + b"]" * 100_000 + b"}}", b"")
    cases = [
        deep,
        memoryview(array.array("d", [1.0] * 64)),
        struct.pack("<Q", 2**63) + b"{}",
        GOOD.replace(b'"r":"3"', b'"r":"' + b"1" * 5000 + b'"'),
    ]
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


# ---------------------------------------------------------------------- server policy
def test_stale_replayed_forwarded_and_duplicate_updates_are_refused_with_the_node():
    srv = FerretServer(COMP, ServerConfig())
    srv.begin_round(4)
    seed = srv.seed_for(4)
    mk = lambda **kw: encode(COMP.compress(MODEL, _new(1), seed=kw.pop("seed", seed), **kw))  # noqa: E731
    assert srv.receive(mk(round=3, client="a"), node="a") is None
    assert srv.rejected[-1] == ("a", "message is for round 3, the server collects round 4 (stale or replayed)")
    assert srv.receive(mk(round=5, client="a"), node="a") is None and "from the future" in srv.rejected[-1][1]
    assert srv.receive(mk(round=4, client="b"), node="a") is None
    assert srv.rejected[-1] == ("a", "message names client 'b' but came from node a (replayed or forwarded)")
    assert srv.receive(mk(round=4, client="a", seed=seed + 1), node="a") is None and "seed" in srv.rejected[-1][1]
    assert srv.receive(mk(round=4, client="a"), node="a") is not None
    assert srv.receive(mk(round=4, client="a"), node="a") is None
    assert srv.rejected[-1] == ("a", "a second update from client 'a' in round 4")
    # without an expected seed, the shared seed of the round is required (no replay of another round's seed)
    assert srv.receive(mk(round=4, client="c", seed=FerretServer(COMP, ServerConfig()).seed_for(3))) is None
    # an update that names no client, from no node: one such per round (each copy was accepted)
    assert srv.receive(mk(round=4)) is not None
    for _ in range(3):
        assert srv.receive(mk(round=4)) is None
        assert srv.rejected[-1][1].startswith("a second update from an unnamed client in round 4 (name the clients")
    assert srv.receive(mk(round=4, client="d")) is not None  # named ones are still one each


def test_an_oversized_message_says_what_its_header_has_that_differs():
    """A client with a larger K or another block size makes messages over the layout's size bound;
    the size error now says which field differs (it said only the size). Junk says only the size."""
    for cfg, why in (
        (dataclasses.replace(CFG, num_bases=256), "its K is 256, this layout's at most 4"),
        (
            dataclasses.replace(CFG, num_bases=256, block_size=32),
            "it was made for another model or block plan \\(layout fingerprint differs\\); its K is 256, this layout's at most 4; its block size is 32, this layout's 64",
        ),
    ):
        comp = UpdateCodec.for_module(MODEL, cfg)
        data = encode(comp.compress(MODEL, _new(1), seed=5))
        with pytest.raises(DecodeError, match="is larger than any valid one for this layout \\(\\d+\\): " + why):
            decode(data, LAY, max_bases=CFG.num_bases)
    with pytest.raises(DecodeError, match="larger than any valid one for this layout \\(\\d+\\)$"):
        decode(b"\x10" + b"\0" * 7 + b"x" * 100_000, LAY, max_bases=CFG.num_bases)
    # non-ASCII digits in the header are not numbers (int("²") raised ValueError out of decode)
    for k in ("\u00b2", "\u0661\u0662\u0663"):
        hdr = json.dumps({"__metadata__": {"K": k, "fp": LAY.fingerprint}}, separators=(",", ":")).encode()
        with pytest.raises(DecodeError, match="larger than any valid one for this layout \\(\\d+\\)$"):
            decode(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 100_000, LAY, max_bases=CFG.num_bases)


def test_norm_bounds_hold_whatever_k_a_client_sends():
    """Bounds apply to the step an update makes: a block's reconstruction is scaled by 1/sqrt(k_b),
    so at one coefficient norm an update with K' = 1 (or active counts of 1) moves the model
    sqrt(K) times as far as one with K; measured on the coefficients alone, K' = 1 stepped sqrt(K)
    times past max_norm and the clip bounds."""
    K = COMP.config.num_bases
    srv = FerretServer(COMP, ServerConfig(max_norm=1.0, clip_relative=None))
    full_k = COMP.compress(MODEL, _new(3), seed=srv.seed_for(0), client="a")
    dense = torch.zeros(LAY.total_blocks, COMP.config.max_bases)
    dense[:, 0] = 0.1
    full = {k: torch.zeros_like(v) for k, v in full_k.full.items()}
    one = COMP.message(dense, torch.ones(LAY.total_blocks, dtype=torch.int32), full, srv.seed_for(0))  # k_b = 1
    assert math.isclose(one.step_norm(K), math.sqrt(K) * one.norm(), rel_tol=1e-9)
    assert math.isclose(full_k.step_norm(K), full_k.norm(), rel_tol=1e-12)
    assert _norm(one) == pytest.approx(one.step_norm(K), rel=1e-9)  # the test's own reading of the rule
    # a step at coefficient norm 0.6 x max_norm, but sqrt(K) x 0.6 > 1 by the step: refused
    scaled = dataclasses.replace(one, coeffs=one.coeffs * (0.6 / one.norm()))
    assert srv.receive(encode(dataclasses.replace(scaled, client="b")), node="b") is None
    assert "exceeds the server's bound max_norm=1" in srv.rejected[-1][1]
    # clipping: scaled to the bound by the step norm, so its step is the bound's
    srv2 = FerretServer(COMP, ServerConfig(clip_norm=0.3, clip_relative=None, max_norm=None))
    ((clipped, _),) = srv2.aggregate([scaled])
    assert clipped.step_norm(K) == pytest.approx(0.3, rel=1e-5)
    # the step the server applies: reconstructions of K' = 1 at the clipped size (float64 reference)
    model = copy.deepcopy(MODEL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    srv2.step(model, [scaled], 0)
    _assert_moved_by(model, before, _reference_delta([(scaled, 1.0, 0.3 / _norm(scaled))]))


def test_rejection_log_is_bounded_and_counts_everything():
    srv = FerretServer(COMP, ServerConfig(max_rejections_logged=5))
    for i in range(50):
        srv.receive(b"junk" * i, node=i)
    assert len(srv.rejected) == 5 and srv.rejected_total == 50
    assert [n for n, _ in srv.rejected] == [str(i) for i in range(45, 50)]
    assert all("message" in why for _, why in srv.rejected)


@settings(max_examples=N_CASES["shares"], **FAST)
@given(
    w=st.lists(
        st.one_of(
            st.floats(0, 1e308),
            st.sampled_from([0.0, 1.0, 1e300, 1.7e308, 2.0**53, math.inf, math.nan, -1.0, 5e-324, 1e-310]),
        ),
        min_size=1,
        max_size=12,
    ),
    cap=st.sampled_from([0.25, 0.5, 1.0]),
)
@example(w=[1.0, 5e-324], cap=0.25)  # the capped client's excess goes to a subnormal claim: budget * w underflowed to 0
@example(w=[1e300, 10.0, 30.0], cap=0.5)
def test_capped_shares_bound_every_client(w, cap):
    s = capped_shares(w, cap)
    n = len(w)
    eff = max(cap, 1 / n)
    assert len(s) == n and all(math.isfinite(x) and 0 <= x <= eff * (1 + 1e-12) for x in s)
    assert sum(s) <= 1 + 1e-9
    clean = [min(max(x, 0.0), 2.0**53) if math.isfinite(x) else 0.0 for x in w]
    if not any(clean):
        clean = [1.0] * n
    plain = [x / math.fsum(clean) for x in clean]
    ref = _waterfill(w, cap)
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) for a, b in zip(s, ref)), (s, ref)
    if max(plain) <= eff:  # nobody above the cap: exactly the claimed proportions
        assert all(math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-300) for a, b in zip(s, plain))
    else:
        positive = sum(1 for x in clean if x > 0)
        if positive * eff >= 1:  # enough clients with weight to take the whole round
            assert math.isclose(sum(s), 1.0, rel_tol=1e-9)
        for i in range(n):  # uncapped clients keep their relative proportions (subnormal shares cannot)
            for j in range(n):
                if 1e-290 < s[i] < eff * (1 - 1e-9) and 1e-290 < s[j] < eff * (1 - 1e-9):
                    assert math.isclose(s[i] / s[j], clean[i] / clean[j], rel_tol=1e-9)


def _waterfill(w, cap):
    """The policy's shares in exact rational arithmetic: the k largest claims capped, the rest
    proportional, for the smallest k that keeps every uncapped share under the cap (a
    different algorithm from capped_shares', and no rounding)."""
    from fractions import Fraction

    w = [Fraction(min(max(x, 0.0), 2.0**53)) if math.isfinite(x) else Fraction(0) for x in w]
    if not any(w):
        w = [Fraction(1)] * len(w)
    cap = max(Fraction(cap), Fraction(1, len(w)))
    pos = sorted((i for i in range(len(w)) if w[i] > 0), key=lambda i: -w[i])
    out = [Fraction(0)] * len(w)
    for k in range(len(pos) + 1):
        rest, budget = sum(w[i] for i in pos[k:]), 1 - k * cap
        if budget <= 0 or rest == 0 or all(budget * w[i] / rest <= cap for i in pos[k:]):
            for i in pos[:k]:
                out[i] = cap
            for i in pos[k:]:
                out[i] = budget * w[i] / rest if budget > 0 and rest else Fraction(0)
            break
    return [float(x) for x in out]


def _norm(m, K=COMP.config.num_bases):
    """The policy's step norm (G5): block b's coefficients (stored compact, block after block)
    weighted by sqrt(K / k_b), the tensors sent in full as they are."""
    c, sq, i = m.coeffs.double().flatten(), 0.0, 0
    for k in m.active.tolist():
        sq += float(c[i : i + k].square().sum()) * (K / k if k else 0.0)
        i += k
    return math.sqrt(sq + sum(float(t.double().square().sum()) for t in m.full.values()))


def _expected(msgs, max_share=0.5, clip_relative=4.0):
    """(message, share, clip factor) as the threat model's policy states it."""
    shares = _waterfill([m.weight for m in msgs], max_share)
    norms = [_norm(m) for m in msgs]
    srt = sorted(norms)
    med = srt[len(srt) // 2] if len(srt) % 2 else (srt[len(srt) // 2 - 1] + srt[len(srt) // 2]) / 2
    bound = clip_relative * med if clip_relative and len(msgs) >= 2 else math.inf
    return [(m, s, min(1.0, bound / n) if n > 0 else 1.0) for m, s, n in zip(msgs, shares, norms)]


def _reference_delta(terms, lr=1.0):
    """-lr * sum share * factor * reconstruct(update), with the plain op per message, in float64."""
    out = {s.name: torch.zeros(s.shape, dtype=torch.float64) for s in LAY.specs}
    for m, share, *f in terms:
        share = share * (f[0] if f else 1.0)
        for s in LAY.projected:
            sl = slice(s.block_offset, s.block_offset + s.num_blocks)
            g = (m.dense() * _block_scale(m.active)[:, None])[sl]
            out[s.name] -= (
                lr
                * share
                * fk.reconstruct(g, m.seed, s.numel, LAY.block_size, block_offset=s.block_offset, dist=m.dist)
                .double()
                .view(s.shape)
            )
        for s in LAY.full:
            out[s.name] -= lr * share * m.full[s.name].double()
    return out


def _assert_moved_by(model, before, delta, atol=2e-6):
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.detach().double() - before[n].double(), delta[n], rtol=1e-5, atol=atol)


def test_a_huge_weight_claim_gets_at_most_the_share_cap():
    srv = FerretServer(COMP, ServerConfig(clip_relative=None))
    msgs = [
        COMP.compress(MODEL, _new(i), seed=srv.seed_for(0), weight=w, client=str(i))
        for i, w in enumerate([1e300, 10.0, 30.0])
    ]
    model = copy.deepcopy(MODEL)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    srv.step(model, msgs, 0)
    _assert_moved_by(model, before, _reference_delta(zip(msgs, [0.5, 0.125, 0.375])))
    # two clients claiming 1.7e308 (their sum overflows a double): no error, equal halves, history committed once
    srv2 = FerretServer(COMP, ServerConfig(clip_relative=None, momentum=0.5))
    msgs2 = [COMP.compress(MODEL, _new(i), seed=srv2.seed_for(0), weight=1.7e308, client=str(i)) for i in range(2)]
    model2 = copy.deepcopy(MODEL)
    srv2.step(model2, msgs2, 0)
    _assert_moved_by(model2, before, _reference_delta(zip(msgs2, [0.5, 0.5])))
    assert len(srv2.history) == 1 and srv2.round == 1  # the round kept once for momentum
    # over the wire such a claim does not even decode
    meta = dict(sorted({**GOOD_HEADER["__metadata__"], "w": "1.7e+308"}.items()))
    hdr = json.dumps({**GOOD_HEADER, "__metadata__": meta}, separators=(",", ":")).encode()
    with pytest.raises(DecodeError, match=r"2\^53"):
        decode(_assemble(hdr, GOOD_BODY), LAY)


def test_a_failed_step_changes_nothing():
    srv = FerretServer(COMP, ServerConfig(momentum=0.5))
    model = copy.deepcopy(MODEL)
    ok = COMP.compress(MODEL, _new(1), seed=srv.seed_for(0), round=0)
    bad = copy.copy(ok)
    bad.coeffs = ok.coeffs.clone()
    bad.coeffs[0] = math.nan  # built in code, never decoded
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    for msgs in ([ok, bad], [COMP.compress(MODEL, _new(1), seed=1, round=1)]):
        with pytest.raises(ValueError):
            srv.step(model, msgs, 0)
        assert srv.history == [] and srv.round == 0
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_huge_coefficients_are_refused_or_clipped_and_the_aggregate_always_encodes():
    srv = FerretServer(COMP, ServerConfig(clip_relative=4.0))
    big = COMP.compress(MODEL, _new(9, scale=1e6), seed=srv.seed_for(0), client="h")
    assert big.norm() > 1e4
    assert (
        srv.receive(encode(big), node="h") is None
        and "exceeds the server's bound max_norm=10000" in srv.rejected[-1][1]
    )
    # below max_norm but far above the others: scaled to 4x the median norm
    honest = [COMP.compress(MODEL, _new(i), seed=srv.seed_for(0), client=str(i)) for i in range(3)]
    loud = COMP.compress(MODEL, _new(8, scale=5e2), seed=srv.seed_for(0), client="8")
    assert 1e2 * honest[0].norm() < loud.norm() < 1e4
    agg = srv.aggregate(honest + [loud])
    med = sorted(m.norm() for m in honest + [loud])
    bound = 4 * (med[1] + med[2]) / 2
    assert math.isclose(agg[-1][0].norm(), bound, rel_tol=1e-5)
    assert all(a.norm() == m.norm() for (a, _), m in zip(agg[:3], honest))
    # an fp16 wire: an aggregate beyond 65504 is sent in float32, never refused by its own decoder
    comp16 = UpdateCodec.for_module(
        MODEL, FerretConfig(num_bases=4, block_size=64, full_threshold=20, wire_dtype="float16")
    )
    s16 = FerretServer(comp16, ServerConfig(clip_relative=None, max_norm=None))
    nb, full = LAY.total_blocks, {t.name: torch.zeros(t.shape) for t in LAY.full}
    m16 = [
        UpdateMessage(
            LAY.fingerprint,
            s16.seed_for(0),
            "rademacher",
            k,
            LAY.block_size,
            torch.full((nb,), k, dtype=torch.int32),
            torch.full((nb * k,), 6e4),
            full,
            1.0,
            0,
            str(k),
            "float16",
        )
        for k in (1, 4)
    ]
    m16 = [decode(encode(m), comp16.layout) for m in m16]  # both valid fp16 messages (6e4 < 65504)
    (agg16,) = s16.broadcast(m16)  # K = 1 and K = 4 mixed: column 0 is (6e4 + 6e4 / 2) / 2 * 2 = 9e4
    assert agg16.wire_dtype == "float32" and math.isclose(float(agg16.coeffs.abs().max()), 9e4, rel_tol=1e-6)
    decode(encode(agg16), comp16.layout)


@pytest.mark.parametrize("adaptive", [False, True])
def test_mixed_k_under_the_shared_seed_aggregates_every_update(adaptive):
    """A K = 1 update next to K = 4 / adaptive ones: every accepted update is in the step, as
    an independent per-message reconstruction says (the old broadcast kept only the first)."""
    cfg = FerretConfig(num_bases=4, block_size=64, full_threshold=20, adaptive=adaptive, k_max=8)
    comp = UpdateCodec.for_module(MODEL, cfg)
    comp1 = UpdateCodec.for_module(MODEL, FerretConfig(num_bases=1, block_size=64, full_threshold=20))
    srv = FerretServer(comp, ServerConfig(clip_relative=None))
    seed = srv.seed_for(0)
    msgs = [comp1.compress(MODEL, _new(0), seed=seed, client="k1", weight=1.0)] + [
        comp.compress(MODEL, _new(i), seed=seed, client=str(i), weight=1.0) for i in (1, 2)
    ]
    msgs = [decode(encode(m), comp.layout, max_bases=cfg.max_bases) for m in msgs]
    assert sorted({m.num_bases for m in msgs}) == ([1, 8] if adaptive else [1, 4])
    ref = _reference_delta(zip(msgs, [1 / 3] * 3))
    for route in ("step", "broadcast"):
        model = copy.deepcopy(MODEL)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        if route == "step":
            FerretServer(comp, ServerConfig(clip_relative=None)).step(model, msgs, 0)
        else:
            (agg,) = srv.broadcast(msgs)
            agg = decode(encode(agg), comp.layout, max_bases=cfg.max_bases)
            comp.apply(model, [agg], lr=agg.weight, weights=[1.0])
        _assert_moved_by(model, before, ref)


# ---------------------------------------------------------------------- reply records (Flower)
flwr = pytest.importorskip("flwr")
from flwr.app import ArrayRecord, ConfigRecord, Error, Message, MetricRecord, RecordDict  # noqa: E402

from ferret_kernels.fl.flower import UPDATE, FerretStrategy, RoundLog  # noqa: E402


@pytest.fixture(autouse=True)
def _task_identity(monkeypatch):
    from flwr.common.constant import SUPERLINK_NODE_ID
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_task_id", 1)
    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)


HONEST = (1, 2, 3)
HOSTILE = 9
UNSAMPLED = (4, 5, 2**40 + 7)


def _strategy(model):
    s = FerretStrategy(model, CFG, ServerConfig(), min_available_nodes=1)
    s.rounds.append(RoundLog(1, s.server.seed_for(1), sorted(HONEST + (HOSTILE,))))
    s.server.begin_round(1)
    return s


def _reply(node, content=None, error=None):
    out = Message(RecordDict(), dst_node_id=node, message_type="train")
    return Message(error, reply_to=out) if error is not None else Message(content, reply_to=out)


def _update_content(node, digest, *, seed=None, data=None, metrics=None, **kw):
    if data is None:
        data = encode(
            COMP.compress(MODEL, _new(node), seed=seed, round=1, client=str(node), weight=float(10 * node), **kw)
        )
    return RecordDict(
        {
            UPDATE: ConfigRecord({"update": data, "base-round": 0, "digest": digest}),
            "metrics": MetricRecord(
                metrics if metrics is not None else {"num-examples": float(10 * node), "train-loss": 1.0}
            ),
        }
    )


@pytest.fixture(scope="module")
def round_reference():
    """The honest nodes' round, run once: its digest, and the model an independent
    reconstruction of their aggregate predicts."""
    with pytest.MonkeyPatch.context() as mp:
        from flwr.common.constant import SUPERLINK_NODE_ID
        from flwr.supercore.task_identity import TaskIdentity

        mp.setattr(TaskIdentity, "_task_id", 1)
        mp.setattr(TaskIdentity, "_run_id", 1)
        mp.setattr(TaskIdentity, "_node_id", SUPERLINK_NODE_ID)
        s = _strategy(copy.deepcopy(MODEL))
        d0 = s.digests[0]
        seed = s.server.seed_for(1)
        honest = {n: _update_content(n, d0, seed=seed) for n in HONEST}
        s.aggregate_train(1, [_reply(n, honest[n]) for n in HONEST])
        assert not s.rounds[-1].rejected
        msgs = [decode(honest[n][UPDATE]["update"], LAY) for n in HONEST]
        return {
            "digest": s.digests[1],
            "d0": d0,
            "seed": seed,
            "honest": honest,
            "model": s.model,
            "hostile": _update_content(HOSTILE, d0, seed=seed),
            "unsampled": {n: _update_content(n, d0, seed=seed) for n in UNSAMPLED},  # valid, from nodes not asked
            "expected_delta": _reference_delta(_expected(msgs)),
        }


def test_honest_round_equals_an_independent_reconstruction(round_reference):
    ref = round_reference
    before = {n: p.detach().clone() for n, p in MODEL.named_parameters()}
    _assert_moved_by(ref["model"], before, ref["expected_delta"], atol=1e-5)  # bf16-free (float32 wire) aggregate


def _hostile_values():
    return st.one_of(
        st.binary(max_size=64),
        st.text(max_size=12),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=True, allow_infinity=True),
        st.booleans(),
        st.lists(st.integers(-5, 5), max_size=3),
        st.lists(st.floats(), max_size=3),
        st.lists(st.binary(max_size=4), max_size=2),
        st.lists(st.text(max_size=3), max_size=2),
    )


@st.composite
def hostile_reply(draw, ref):
    """(kind, message): one reply as a hostile node could shape it."""
    kind = draw(
        st.sampled_from(
            [
                "error",
                "no record",
                "wrong record type",
                "keys",
                "update value",
                "base-round",
                "digest",
                "metrics",
                "message bytes",
                "valid",
                "unsampled",
                "duplicate",
                "k1",
                "replay",
            ]
        )
    )
    d0, seed = ref["d0"], ref["seed"]
    good = ref["hostile"]
    rec = dict(good[UPDATE])
    if kind == "error":
        return kind, _reply(HOSTILE, error=Error(code=draw(st.integers(0, 2**31)), reason=draw(st.text(max_size=300))))
    if kind == "no record":
        return kind, _reply(HOSTILE, RecordDict({"metrics": MetricRecord({"num-examples": 1.0})}))
    if kind == "wrong record type":
        other = draw(st.sampled_from([MetricRecord({"update": 1.0}), MetricRecord({}), ArrayRecord()]))
        return kind, _reply(HOSTILE, RecordDict({UPDATE: other}))
    if kind == "keys":
        keys = draw(st.sets(st.sampled_from(["update", "base-round", "digest", "x", "update "]), max_size=5))
        assume(keys != {"update", "base-round", "digest"})
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord({k: rec.get(k, 0) for k in keys})}))
    if kind in ("update value", "base-round", "digest"):
        key = {"update value": "update", "base-round": "base-round", "digest": "digest"}[kind]
        v = draw(
            st.one_of(
                _hostile_values(),
                st.sampled_from(["zero", math.nan, math.inf, -1, 1, 0.0, True, [0], d0.upper(), d0[:-1]]),
            )
        )
        assume(not (key == "base-round" and type(v) is int and v == 0))
        rec[key] = v
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec), "metrics": good["metrics"]}))
    if kind == "metrics":
        key = draw(st.sampled_from(["num-examples", "train-loss"]))
        v = draw(
            st.one_of(
                st.lists(st.floats(), max_size=3), st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 1e300, True])
            )
        )
        assume(not (key == "train-loss" and v in (-1.0, 1e300)) and not isinstance(v, bool))
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec), "metrics": MetricRecord({key: v})}))
    if kind == "message bytes":
        data = bytearray(rec["update"])
        for op in draw(st.lists(mutation, min_size=1, max_size=3)):
            data = _mutate(data, op)
        assume(bytes(data) != rec["update"])
        rec["update"] = bytes(data)
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec)}))
    if kind == "k1":  # a valid update with K = 1: must not erase the others
        comp1 = UpdateCodec.for_module(MODEL, FerretConfig(num_bases=1, block_size=64, full_threshold=20))
        rec["update"] = encode(
            comp1.compress(
                MODEL,
                _new(HOSTILE),
                seed=seed,
                round=1,
                client=str(HOSTILE),
                weight=draw(st.sampled_from([1.0, 1e15, 2.0**53])),
            )
        )
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec)}))
    if kind == "replay":  # an honest node's update sent again by another node, or an old round's
        which = draw(st.sampled_from(["copy", "old"]))
        rec["update"] = (
            ref["honest"][1][UPDATE]["update"]
            if which == "copy"
            else encode(COMP.compress(MODEL, _new(HOSTILE), seed=ref["seed"], round=0, client=str(HOSTILE)))
        )
        return kind, _reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec)}))
    if kind == "unsampled":  # a well-formed update of its own from a node the round did not sample
        node = draw(st.sampled_from(UNSAMPLED))
        return kind, _reply(node, ref["unsampled"][node])
    if kind == "duplicate":
        return kind, _reply(draw(st.sampled_from(HONEST)), good)
    return kind, _reply(HOSTILE, good)  # valid


@settings(max_examples=N_CASES["replies"], **FAST)
@given(data=st.data())
def test_a_hostile_reply_never_stops_skews_or_erases_the_round(round_reference, data):
    ref = round_reference
    kind, bad = data.draw(hostile_reply(ref), label="reply")
    replies = [_reply(n, ref["honest"][n]) for n in HONEST] + [bad]
    order = data.draw(st.permutations(range(len(replies))), label="order")
    s = _strategy(copy.deepcopy(MODEL))
    _, metrics = s.aggregate_train(1, [replies[i] for i in order])
    rl = s.rounds[-1]
    node = bad.metadata.src_node_id
    assert math.isfinite(metrics.get("train-loss", 0.0))
    if kind == "duplicate":  # a second reply of an honest node (only that node can send it): one of the two counts
        assert "second reply" in rl.rejected[node] and set(rl.accepted) >= set(HONEST) - {node}
        return
    assert set(rl.accepted) >= set(HONEST), (kind, rl.rejected)  # nobody else was erased
    if node in rl.accepted:
        assert kind in ("valid", "k1", "message bytes"), (kind, "was accepted")
        assert not rl.rejected
        msgs = [decode(rl.accepted[n], LAY, max_bases=CFG.max_bases) for n in sorted(rl.accepted)]
        before = {n: p.detach().clone() for n, p in MODEL.named_parameters()}
        _assert_moved_by(s.model, before, _reference_delta(_expected(msgs)), atol=1e-5)
        return
    assert kind not in ("valid", "k1"), rl.rejected
    why = rl.rejected[node]
    assert kind != "unsampled" or why == "reply from a node that was not sampled this round", why
    assert why and len(why) < 2000 and "\n" not in why
    assert s.server.rejected[-1] == (str(node), why)  # logged with its node
    assert s.digests[1] == ref["digest"], f"a rejected {kind} reply changed the model: {why}"


def test_reply_reasons_name_the_problem(round_reference):
    ref = round_reference
    s = _strategy(copy.deepcopy(MODEL))
    rec = dict(_update_content(HOSTILE, ref["d0"], seed=ref["seed"])[UPDATE])
    cases = {
        "'update' is str 'abc', expected bytes": dict(rec, update="abc"),
        "'update' is list": dict(rec, update=[1, 2]),
        "'base-round' is str 'zero', expected an integer": dict(rec, **{"base-round": "zero"}),
        "'base-round' is float nan": dict(rec, **{"base-round": math.nan}),
        "'base-round' is float inf": dict(rec, **{"base-round": math.inf}),
        "'base-round' is bool": dict(rec, **{"base-round": False}),
        "'digest' is int": dict(rec, digest=5),
    }
    for _i, (why, r) in enumerate(cases.items()):
        s = _strategy(copy.deepcopy(MODEL))
        s.aggregate_train(
            1, [_reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(r)}))] + [_reply(n, ref["honest"][n]) for n in HONEST]
        )
        assert why in s.rounds[-1].rejected[HOSTILE] and s.digests[1] == ref["digest"], (why, s.rounds[-1].rejected)
    s = _strategy(copy.deepcopy(MODEL))
    s.aggregate_train(
        1,
        [_reply(HOSTILE, RecordDict({UPDATE: ConfigRecord(rec), "metrics": MetricRecord({"train-loss": [1.0, 2.0]})}))]
        + [_reply(n, ref["honest"][n]) for n in HONEST],
    )
    assert "metric 'train-loss' is list" in s.rounds[-1].rejected[HOSTILE]
