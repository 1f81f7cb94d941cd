"""Ferret on NVIDIA FLARE, in FLARE's own runtime: the job of python/ferret_nvflare run by
FLARE's simulator (a server and three sites, each site running the job's Client API script)
for three rounds of the 301k-parameter MLP, with a test-only Filter on site-2's task results
(tests/nvflare_faults.py) corrupting its update in round 2. Checked against independent
references:

- the global model after the run equals the initial model minus, for every round, the mean
  of the accepted updates reconstructed here with the ops (decoded from the bytes the server
  received, averaged in coefficient space by this test, rounded to the wire dtype as the
  server's broadcast is, reconstructed out of place with ferret_kernels.reconstruct);
- site-2's corrupt update is rejected with a reason naming it, rounds 2 and 3 complete, and
  in round 3 site-2 gets the full model again and its update (made on a copy whose digest
  matches the server's) is accepted, like every other site's;
- bytes per site per round as FLARE transmits them, from FLARE's own CellNet statistics (the
  size of every submit_update / get_task stream and of the model downloads) and from the job's
  WireMeter filter (FOBS's encoding of each task result / task data on the server): the update
  is inside each result and FLARE's envelope adds less than 4 KiB; the model goes to each site
  once, after that tasks carry coefficients, not weights.

Without FLARE's runtime (FerretController's round fed FLModels as FLARE's callback delivers
them): each kind of hostile result (weights, missing or mistyped records, wrong base round or
digest, truncated or NaN update, non-finite metrics) is rejected with the site named and the
round's model is bit-identical to the round without that site; a duplicate, a result from a
site not sampled and an update forwarded under another site's name are rejected; a site
refuses a task that skips rounds and keeps its copy; sites sampled in some rounds only catch
up from coefficients under both seed schemes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare", reason="nvflare not installed (pip install 'ferret_kernels[nvflare]')")

from safetensors.torch import load_file  # noqa: E402

import ferret_kernels as fk  # noqa: E402
from ferret_kernels.fl import ParamLayout, decode  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROUNDS, SITES, K, BS = 3, 3, 8, 4096

RUN = f"""
import sys
sys.path[:0] = [{os.path.join(ROOT, "python", "ferret_nvflare")!r}, {os.path.join(ROOT, "tests")!r}]
from job import build_job
from nvflare.job_config.defs import FilterType
from nvflare_faults import CorruptUpdate

job = build_job(
    {{"model": "mlp", "local-steps": 2, "num-partitions": {SITES}}},
    num_rounds={ROUNDS},
    min_clients={SITES},
    ferret={{"num_bases": {K}, "block_size": {BS}, "wire_dtype": "bfloat16"}},
    server={{"weighting": "equal", "clip_relative": None, "lr": 1.0}},
    round_timeout=240,
)
job.to_clients(CorruptUpdate("site-2", 2), filter_type=FilterType.TASK_RESULT, tasks=["train"])
job.simulator_run(sys.argv[1], n_clients={SITES}, threads={SITES})
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    ws = tmp_path_factory.mktemp("nvflare")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    t0 = time.monotonic()
    p = subprocess.run(
        [sys.executable, "-c", RUN, str(ws)], cwd=str(ws), env=env, capture_output=True, text=True, timeout=280
    )
    wall = time.monotonic() - t0
    out = os.path.join(ws, "server", "simulate_job", "ferret")
    assert p.returncode == 0 and os.path.exists(os.path.join(out, "final.safetensors")), (
        f"simulator failed (rc {p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    )
    rounds = [json.loads(line) for line in open(os.path.join(out, "rounds.jsonl"))]
    wire = [json.loads(line) for line in open(os.path.join(out, "wire.jsonl"))]
    print(f"FLARE simulator: {SITES} sites, {ROUNDS} rounds in {wall:.1f} s")
    with open(os.path.join(ws, "server", "pool_stats", "simulator_cell_stats.json")) as f:
        stats = json.load(f)  # FLARE's own CellNet statistics of the run
    return out, rounds, wire, p.stdout + p.stderr, stats


def _layout(state: dict) -> ParamLayout:
    """The block plan of the MLP (the same named tensors in the same order as the server's model)."""
    from ferret_kernels.fl.harness.tasks import mlp

    m = mlp(0)
    assert set(dict(m.named_parameters())) == set(state)
    return ParamLayout.from_module(m, BS, 0)


def test_rounds_complete_and_the_corrupt_update_is_rejected(run):
    _, rounds, _, log, _ = run
    sites = [f"site-{i}" for i in range(1, SITES + 1)]
    assert [r["round"] for r in rounds] == list(range(1, ROUNDS + 1))
    for r in rounds:
        assert r["sampled"] == sites and r["missing"] == []
    assert rounds[0]["accepted"] == sites and rounds[0]["rejected"] == {}
    assert rounds[0]["full_model_sent"] == sites
    # round 2: site-2's update garbled on its way out; rejected, named, the round goes on
    assert rounds[1]["accepted"] == ["site-1", "site-3"]
    assert list(rounds[1]["rejected"]) == ["site-2"]
    assert "NaN" in rounds[1]["rejected"]["site-2"], rounds[1]["rejected"]
    assert rounds[1]["full_model_sent"] == []
    # round 3: site-2's copy was in sync (its reply's digest matched; only its update was bad), so it
    # gets coefficients like the others; every copy matches the server's (digest): all accepted
    assert rounds[2]["full_model_sent"] == []
    assert rounds[2]["accepted"] == sites and rounds[2]["rejected"] == {}
    assert "test fault: corrupted the update of site-2 in round 2" in log
    assert len({r["digest"] for r in rounds}) == ROUNDS  # the model moved every round


def _reconstructed(init: dict, layout: ParamLayout, steps) -> dict:
    """init - sum over steps of reconstruct(coefficients) (out of place, with the ops)."""
    ref = {k: v.clone().float() for k, v in init.items()}
    for coeffs, seed in steps:
        for s in layout.projected:
            rows = coeffs[s.block_offset : s.block_offset + s.num_blocks]
            delta = fk.reconstruct(rows, seed, s.numel, BS, block_offset=s.block_offset, scale=K**-0.5)
            ref[s.name] -= delta.view(s.shape)
    return ref


def _dist(a: dict, b: dict) -> float:
    return sum(float((a[k].float() - b[k].float()).square().sum()) for k in a) ** 0.5


def test_global_model_equals_independent_reconstruction(run):
    out, rounds, _, _, _ = run
    init = load_file(os.path.join(out, "initial.safetensors"))
    final = load_file(os.path.join(out, "final.safetensors"))
    layout = _layout(init)
    mine, applied = [], []
    for r in rounds:
        msgs = []
        for site in r["accepted"]:
            with open(os.path.join(out, "updates", f"round{r['round']}_{site}.bin"), "rb") as f:
                msgs.append(decode(f.read(), layout, max_bases=K))
        assert len({m.seed for m in msgs}) == 1 and all(m.num_bases == K for m in msgs)
        assert all((m.active == K).all() for m in msgs)
        # this test's aggregate: the mean in coefficient space (equal weights, no clipping, lr 1)
        mean = torch.stack([m.coeffs.view(-1, K).double() for m in msgs]).mean(0)
        # the server's, as it sent it to the sites (and applied it): one message, in the wire dtype
        assert r["alphas"] == [1.0]
        with open(os.path.join(out, "updates", f"round{r['round']}_applied0.bin"), "rb") as f:
            agg = decode(f.read(), layout, max_bases=K)
        assert agg.seed == msgs[0].seed and agg.wire_dtype == "bfloat16"
        got = agg.coeffs.view(-1, K).double() * agg.weight
        # equal to the mean up to the rounding into bf16 (half a unit in the last place: 2^-8 relative)
        assert ((got - mean).abs() <= 2**-8 * mean.abs() + 1e-12).all()
        wire_mean = mean.float().to(torch.bfloat16).double()
        assert float((got == wire_mean).double().mean()) > 0.9  # most round the same way; ties may not
        mine.append((mean.float(), msgs[0].seed))
        applied.append((got.float(), agg.seed))
    moved = _dist(final, init)
    assert moved > 1e-3  # training moved the model: the comparisons below are not vacuous
    # the global model is the initial one minus the reconstructed aggregates it sent (tight) ...
    err = _dist(final, _reconstructed(init, layout, applied))
    assert err <= 1e-5 * moved, f"global model differs from the reconstruction by {err:.3g} (moved {moved:.3g})"
    # ... and, within the wire dtype's rounding, minus this test's own means of the accepted updates
    err = _dist(final, _reconstructed(init, layout, mine))
    assert err <= 4e-3 * moved, f"global model differs from the accepted updates' mean by {err:.3g} (moved {moved:.3g})"
    # a reference that summed the updates instead of averaging them is far off
    summed = _reconstructed(init, layout, [(c * 2, s) for c, s in mine])
    assert _dist(final, summed) > 0.3 * moved


def _flare_stream(stats: dict, pool: str, suffix: str) -> dict:
    """count, total, min, max (bytes) of one category of FLARE's stream-size histogram `pool`
    (CellNet records each stream's size in MB = 2^20 bytes), all bins merged."""
    cats = stats[pool]["pool"]["cat_data"]
    (key,) = [k for k in cats if k.endswith(suffix)]
    bins = [b for b in cats[key] if b]
    mb = 1 << 20
    return {
        "count": sum(b["count"] for b in bins),
        "total": sum(b["total"] for b in bins) * mb,
        "min": min(b["min"] for b in bins) * mb,
        "max": max(b["max"] for b in bins) * mb,
    }


def test_bytes_per_site_per_round_from_flare(run):
    out, rounds, wire, _, stats = run
    model_bytes = sum(
        v.numel() * v.element_size() for v in load_file(os.path.join(out, "initial.safetensors")).values()
    )
    upd = [v for r in rounds for v in r["update_bytes"].values()]
    # FLARE's own accounting: one submit_update stream per site per round, carrying the update
    up = _flare_stream(stats, "received_stream_sizes", ":server_command:submit_update")
    assert up["count"] == SITES * ROUNDS
    assert min(upd) < up["min"] and up["max"] < max(upd) + 4096, (up, min(upd), max(upd))
    # down: every task is small (coefficients); the model itself went once to each site, in round 1,
    # through FLARE's download service (arrays above its streaming threshold are fetched apart)
    task = _flare_stream(stats, "sent_stream_sizes", ":server_command:get_task")
    assert task["count"] >= SITES * ROUNDS and task["max"] < 8192, task  # (and replies to polls without a task)
    dl = _flare_stream(stats, "sent_stream_sizes", ":download_service__download")
    assert SITES * model_bytes <= dl["total"] < 1.05 * SITES * model_bytes + 65536, (dl, model_bytes)
    # the WireMeter filter (FOBS encoding of each result / task data on the server) agrees per site and round
    meter_up = {(w["site"], w["round"]): w["bytes"] for w in wire if w["direction"] == "up"}
    meter_down = {(w["site"], w["round"]): w["bytes"] for w in wire if w["direction"] == "down"}
    for r in rounds:
        for site in r["sampled"]:
            n = meter_up[(site, r["round"])]
            assert r["wire_bytes"][site] == n  # the controller's record is the meter's
            if site in r["update_bytes"]:
                assert r["update_bytes"][site] < n < r["update_bytes"][site] + 4096
            if site in r["full_model_sent"]:
                assert meter_down[(site, r["round"])] > model_bytes
            else:  # only the last round's applied aggregate (coefficients) goes down
                assert meter_down[(site, r["round"])] < model_bytes / 50
    print(
        f"FLARE CellNet stats: submit_update {up['min']:.0f}-{up['max']:.0f} B per site per round "
        f"(update {min(upd)}-{max(upd)} B), get_task {task['min']:.0f}-{task['max']:.0f} B, "
        f"model downloads {dl['total']:.0f} B in all (model {model_bytes} B fp32, {SITES} sites); "
        f"WireMeter up {min(meter_up.values())}-{max(meter_up.values())} B"
    )


# ---------------------------------------------------------------------------------------------
# The controller's handling of hostile results, without FLARE's runtime: FerretController's round
# logic fed FLModels as FLARE's callback would deliver them (the sender's name set by "FLARE").


def tiny_model(args: dict):
    """model_factory for the unit tests below ('test_nvflare:tiny_model')."""
    torch.manual_seed(int(args.get("seed", 0)))
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))


def _controller():
    from ferret_kernels.fl.nvflare import FerretController

    c = FerretController(
        "test_nvflare:tiny_model",
        num_rounds=2,
        min_clients=1,
        ferret={"num_bases": 4, "block_size": 512},
        server={"weighting": "equal", "clip_relative": None},
        out_dir="",
    )
    c._setup()
    c.info = c.warning = lambda *a, **k: None  # no FLARE engine here
    return c


def _train(model, cfg):
    with torch.no_grad():
        g = torch.Generator().manual_seed(int(cfg["round"]) * 100 + len(str(cfg["seed"])))
        for p in model.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=g))
    return {"num-examples": 10.0, "train-loss": 1.0}


def _round(c, sites, rnd, tamper=None):
    """One round: each site trains from its task; `tamper(site, reply) -> [(sender, reply)]` edits
    what FLARE delivers. Returns the round's log."""
    c.ferret_server.begin_round(rnd)
    c._received = []
    full = []
    for name, site in sites.items():
        sync = c._sync_for(name)
        if sync[0] is None:
            full.append(name)
        task = c._task(rnd, c.site_seed(rnd, name), sync)
        reply = site.train(task, _train)
        for sender, rep in tamper(name, reply) if tamper else [(name, reply)]:
            rep.meta["client_name"] = sender  # FLARE sets this from the sender's identity ...
            rep.meta.setdefault("props", task.meta)  # ... and this from the task the result answers
            c._on_result(rep)
    log = {"round": rnd, "sampled": sorted(sites), "full_model_sent": full, "rejected": {}, "missing": []}
    c._finish_round(rnd, sorted(sites), log)
    return log


def _copy(reply, **changes):
    from nvflare.app_common.abstract.fl_model import FLModel

    meta = {k: (dict(v) if isinstance(v, dict) else v) for k, v in reply.meta.items()}
    rec = dict(meta["ferret.update"])
    for k, v in changes.items():
        if k in ("params", "metrics", "meta"):
            continue
        rec[k.replace("_", "-")] = v
    meta["ferret.update"] = rec
    if "meta" in changes:
        meta = changes["meta"]
    return FLModel(
        params=changes.get("params"), metrics=changes.get("metrics", reply.metrics), meta=meta, current_round=1
    )


HOSTILE = {
    "weights": lambda r: _copy(r, params={"0.weight": torch.zeros(1).numpy()}),
    "no record": lambda r: _copy(r, meta={}),
    "record not a dict": lambda r: _copy(r, meta={"ferret.update": ["x"]}),
    "extra key": lambda r: _copy(r, extra=1),
    "update is str": lambda r: _copy(r, update="abc"),
    "truncated": lambda r: _copy(r, update=r.meta["ferret.update"]["update"][:-9]),
    "NaN coefficients": lambda r: _copy(r, update=r.meta["ferret.update"]["update"][:-8] + b"\xff" * 8),
    "wrong base round": lambda r: _copy(r, base_round=7),
    "base round bool": lambda r: _copy(r, base_round=False),
    "bad digest": lambda r: _copy(r, digest="0" * 16),
    "digest not hex": lambda r: _copy(r, digest="zz"),
    "NaN loss": lambda r: _copy(r, metrics={"num-examples": 1.0, "train-loss": float("nan")}),
    "weight list": lambda r: _copy(r, metrics={"num-examples": [1.0]}),
    # params of one zero were accepted (an array's truthiness), of several an unclear numpy error
    "weights as an array of one zero": lambda r: _copy(r, params=np.zeros(1)),
    "weights as an array": lambda r: _copy(r, params=np.zeros(3)),
    "int metric past the float range": lambda r: _copy(r, metrics={"num-examples": 10**400}),
}


@pytest.mark.parametrize("fault", sorted(HOSTILE))
def test_hostile_result_is_rejected_and_the_round_is_as_without_it(fault):
    from ferret_kernels.fl.nvflare import FerretSite

    def sites(c):
        return {n: FerretSite(tiny_model({}), n) for n in ("site-1", "site-2", "site-3")}

    honest = _controller()
    hs = sites(honest)
    _round(honest, hs, 1)
    ref = _round(honest, {n: hs[n] for n in ("site-1", "site-3")}, 2)  # round 2 without site-2

    c = _controller()
    cs = sites(c)
    _round(c, cs, 1)
    log = _round(c, cs, 2, tamper=lambda n, r: [(n, HOSTILE[fault](r) if n == "site-2" else r)])
    assert list(log["rejected"]) == ["site-2"], log
    assert log["accepted"] == ["site-1", "site-3"] and log["missing"] == []
    assert log["digest"] == ref["digest"]  # the model is exactly as if site-2 had not been sampled
    assert c.ferret_server.rejected[-1][0] == "site-2"
    # a bad update in a well-formed result leaves the site in sync (its digest matched): coefficients
    # next round; a malformed result makes its copy untrusted: the full model next round
    have = c._sync_for("site-2")[0]
    assert have == (1 if fault in ("truncated", "NaN coefficients") else None)
    assert c._sync_for("site-1")[0] == 1


def test_forged_sender_replay_and_unsampled_results_are_rejected():
    from ferret_kernels.fl.nvflare import FerretSite

    c = _controller()
    sites = {n: FerretSite(tiny_model({}), n) for n in ("site-1", "site-2")}
    _round(c, sites, 1)

    def tamper(name, reply):
        if name == "site-1":  # site-1's update delivered twice, and also as from site-9 (not sampled)
            return [(name, reply), (name, _copy(reply)), ("site-9", _copy(reply))]
        return [("site-2", _copy(sites_reply["site-1"]))]  # site-2 forwards site-1's update as its own

    sites_reply = {}
    orig = sites["site-1"].train

    def keep(task, fn):
        sites_reply["site-1"] = orig(task, fn)
        return sites_reply["site-1"]

    sites["site-1"].train = keep
    log = _round(c, sites, 2, tamper)
    assert log["accepted"] == ["site-1"]
    assert "a second result from this site" in log["rejected"]["site-1"]  # the first one counts
    assert "not sampled" in log["rejected"]["site-9"]
    assert "came from node site-2" in log["rejected"]["site-2"]


def test_site_refuses_a_task_that_skips_rounds_and_keeps_its_copy():
    from ferret_kernels.fl.nvflare import FerretSite

    c = _controller()
    s = FerretSite(tiny_model({}), "site-1")
    _round(c, {"site-1": s}, 1)
    _round(c, {"site-1": s}, 2)
    # the site's copy is at round 1 (it applies round 2's aggregate when round 3's task brings it)
    before = {k: v.clone() for k, v in s.copy.items()}
    assert s.round == 1
    task = c._task(3, c.site_seed(3, "site-1"), c._sync_for("site-1"))
    task.meta["ferret.config"]["base-round"] = 3  # claims a round whose update the task does not carry
    with pytest.raises(RuntimeError, match=r"copy is at round 1; the sync covers rounds \[2\], not 2..3"):
        s.train(task, _train)
    assert all(torch.equal(before[k], s.copy[k]) for k in before) and s.round == 1
    err = s.error_reply(task, RuntimeError("x"))  # what FerretSite.run sends then: rejected, full model next
    assert err.params is None and "ferret.update" not in err.meta


@pytest.mark.parametrize("scheme", ["shared", "per_client"])
def test_partial_participation_and_seed_schemes_keep_every_copy_in_sync(scheme):
    """Sites sampled in some rounds only catch up from the coefficients they missed (never the
    model again); under per-client seeds each site gets its own seed and task. Every update is
    accepted, which needs each site's copy to have the server's digest."""
    from ferret_kernels.fl.nvflare import FerretController, FerretSite

    c = FerretController(
        "test_nvflare:tiny_model",
        num_rounds=5,
        min_clients=1,
        ferret={"num_bases": 4, "block_size": 512},
        server={"seed_scheme": scheme},
        out_dir="",
    )
    c._setup()
    c.info = c.warning = lambda *a, **k: None
    sites = {n: FerretSite(tiny_model({}), n) for n in ("site-1", "site-2", "site-3")}
    plan = {
        1: ["site-1", "site-2", "site-3"],
        2: ["site-1"],
        3: ["site-1", "site-2"],
        4: ["site-3"],
        5: ["site-2", "site-3"],
    }
    for rnd, names in plan.items():
        seeds = {c.site_seed(rnd, n) for n in names}
        assert len(seeds) == (len(names) if scheme == "per_client" else 1)
        log = _round(c, {n: sites[n] for n in names}, rnd)
        assert log["accepted"] == names and log["rejected"] == {}, log
        assert log["full_model_sent"] == (names if rnd == 1 else [])  # the model once; then coefficients
        assert c.rounds[-1]["digest"] == c.digests[rnd]
    assert all(sites[n].copy is not None for n in sites)
    # site-3 trained in round 5 on the model of round 4, having missed rounds 2 and 3: it caught up
    # by applying their aggregates (sent as coefficients: its sync record listed them)
    assert sites["site-3"].round == 4


def test_a_late_result_of_an_earlier_round_is_ignored():
    """FLARE may deliver an answer to round 1's task after round 1 ended: round 2 ignores it (by
    the round of the task it answers, which FLARE keeps, not by anything in the result) and
    still accepts the site's answer to round 2's task."""
    from ferret_kernels.fl.nvflare import FerretSite

    c = _controller()
    sites = {n: FerretSite(tiny_model({}), n) for n in ("site-1", "site-2")}
    first = {}
    _round(c, sites, 1, tamper=lambda n, r: first.setdefault(n, [(n, r)]))
    assert first["site-1"][0][1].meta["props"]["ferret.config"]["round"] == 1
    log = _round(c, sites, 2, tamper=lambda n, r: ([first[n][0]] if n == "site-1" else []) + [(n, r)])
    assert log["accepted"] == ["site-1", "site-2"] and log["rejected"] == {}, log
