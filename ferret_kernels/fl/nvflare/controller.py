"""Ferret on NVIDIA FLARE, the server half: FerretController, a FLARE ModelController
(nvflare >= 2.9) that owns the global model, sends each sampled site (seed, config) and the
updates it has not applied, validates every result, aggregates in coefficient space and
applies the aggregate in place. Wire protocol: protocol.py; the site half: client.py.

Contract (docs/threat_model.md, as for the Flower strategy, with which it shares the code
that validates, aggregates and applies: FerretServer, fl.sync):
- every result is hostile until validated: it is accepted only if FLARE delivered it for a
  site sampled this round (FLARE's own identity of the sender, never a name the site
  claims), it is the first from that site, its records have the expected shape
  (protocol.reply_update: no weights, the base round and digest of the global model) and
  its update passes FerretServer.receive (canonical decoding, layout, K, round, client id =
  the site's name, the seed assigned to it, norm bound). Anything else is rejected with a
  reason naming the site, kept in FerretServer's bounded log and in the round's record,
  and the round goes on with the others exactly as it would have without that result.
  A site that errs or whose result FLARE cannot convert is listed as missing. Results that
  are errors are ignored (ignore_result_error=True), never a reason to stop the job. A result
  counts for the round of the task it answers (FLARE's record of the task, not the result's
  word): one delivered after its round ended is ignored.
- accepted updates are aggregated in an order that does not depend on arrival (sorted by
  the SHA-256 of their bytes); the server applies exactly the encoded updates it then sends
  to sites (fl.sync.aggregate_round), so its model and every site's copy stay identical.
- sites get the full model once (first contact, after an error or malformed result, or
  when the updates they missed exceed the bounded catch-up log: at most the model's size);
  afterwards only coefficient updates travel, in both directions.

Output, under <run dir>/<out_dir> on the server (FLARE's job workspace): initial.safetensors
and final.safetensors (the global model), rounds.jsonl (one line per round: sampled sites,
accepted / rejected (why) / missing, wire bytes received per site as measured by a WireMeter
filter when the job has one, update bytes, step sizes, model digest), and updates/ (every
accepted update and every applied aggregate, as the bytes that crossed the wire).
"""

from __future__ import annotations

import collections
import hashlib
import importlib
import json
import os
import random
import threading
import time
import zlib

import torch
from nvflare.app_common.abstract.fl_model import FLModel
from nvflare.app_common.workflows.model_controller import ModelController
from safetensors.torch import save_file

from ..checkpoint import unshared
from ..codec import FerretConfig, UpdateCodec
from ..message import DecodeError
from ..server import FerretServer, ServerConfig
from ..sync import aggregate_round, missed_updates, model_digest, trim_catchup
from .meter import WIRE_BYTES_PROP
from .protocol import CONFIG, SYNC, config_dict, quote, reply_update, to_numpy


def load_factory(spec: str):
    """'package.module:function' -> the function (ValueError names a malformed spec)."""
    mod, sep, fn = str(spec).partition(":")
    if not sep or not mod or not fn:
        raise ValueError(f"model_factory must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(mod), fn)


class FerretController(ModelController):
    """Ferret rounds over FLARE sites. All arguments are JSON-able (a FLARE job config holds them):

    model_factory   'module:function' building the initial global model (an nn.Module, or a
                    tuple whose first item is one) from `model_args` (a dict); the module must
                    be importable on the server (installed, or in the job's custom folder).
    num_rounds      rounds 1..num_rounds.
    num_clients     sites sampled per round (None: all); min_clients: sites that must be
                    connected before round 1 (waits up to wait_for_sites_s).
    ferret          FerretConfig fields (num_bases, block_size, dist, adaptive, k_max,
                    full_threshold, wire_dtype); server: ServerConfig fields (lr, schedule,
                    momentum, clipping, seed_scheme, base_seed, ...).
    train_config    sent to sites with every task under meta["ferret.config"]["train"].
    round_timeout   seconds a round waits for results (0: forever); late sites are missing.
    verify_sync     refuse updates made on a copy whose digest differs from the global model.
    out_dir         output folder under the job's run directory ("" writes nothing).
    """

    def __init__(
        self,
        model_factory: str,
        model_args: dict | None = None,
        num_rounds: int = 3,
        num_clients: int | None = None,
        min_clients: int = 2,
        ferret: dict | None = None,
        server: dict | None = None,
        train_config: dict | None = None,
        round_timeout: int = 600,
        wait_for_sites_s: float = 300.0,
        verify_sync: bool = True,
        out_dir: str = "ferret",
        task_name: str = "train",
        catchup_bytes: int | None = None,
    ):
        super().__init__(persistor_id="", ignore_result_error=True)
        if int(num_rounds) < 1 or int(min_clients) < 1 or (num_clients is not None and int(num_clients) < 1):
            raise ValueError("num_rounds, min_clients and num_clients must be at least 1")
        self.model_factory, self.model_args = model_factory, model_args
        self.num_rounds, self.num_clients, self.min_clients = int(num_rounds), num_clients, int(min_clients)
        self.ferret, self.server, self.train_config = ferret, server, train_config
        self.round_timeout, self.wait_for_sites_s = int(round_timeout), float(wait_for_sites_s)
        self.verify_sync, self.out_dir, self.task_name = verify_sync, out_dir, task_name
        self.catchup_bytes = catchup_bytes
        self.ferret_server: FerretServer | None = None
        self.rounds: list[dict] = []

    # ------------------------------------------------------------------ setup
    def _setup(self) -> None:
        built = load_factory(self.model_factory)(dict(self.model_args or {}))
        self.model = built[0] if isinstance(built, tuple) else built
        if not isinstance(self.model, torch.nn.Module):
            raise TypeError(f"{self.model_factory} returned {type(self.model).__name__}, not an nn.Module")
        self.fcfg = FerretConfig(**(self.ferret or {}))
        self.codec = UpdateCodec.for_module(self.model, self.fcfg)
        self.ferret_server = FerretServer(self.codec, ServerConfig(**(self.server or {})))
        self.current_round = 0
        self.digests = {0: model_digest(self.model, self.codec)}
        self.round_of_site: dict[str, int] = {}
        self.momentum_window: list = []
        self.catchup: collections.OrderedDict[int, list[tuple[bytes, float]]] = collections.OrderedDict()
        self._lock = threading.Lock()
        self._out = ""
        if self.out_dir:
            ws = self.engine.get_workspace()
            self._out = os.path.join(ws.get_run_dir(self.fl_ctx.get_job_id()), self.out_dir)
            os.makedirs(os.path.join(self._out, "updates"), exist_ok=True)

    def _save(self, name: str) -> None:
        if self._out:
            save_file(unshared(self.model.state_dict()), os.path.join(self._out, name))  # tied weights too

    # ------------------------------------------------------------------ sampling and tasks
    def _sample(self, rnd: int) -> list[str]:
        deadline = time.monotonic() + self.wait_for_sites_s
        names = sorted(c.name for c in self.engine.get_clients())
        while len(names) < self.min_clients and time.monotonic() < deadline and not self.abort_signal.triggered:
            time.sleep(0.5)
            names = sorted(c.name for c in self.engine.get_clients())
        if len(names) < self.min_clients:
            raise RuntimeError(f"only {len(names)} sites connected; the controller needs {self.min_clients}")
        n = len(names) if self.num_clients is None else min(len(names), int(self.num_clients))
        rng = random.Random(f"sample:{self.ferret_server.config.base_seed}:{rnd}")  # not the bases' seeds
        return sorted(rng.sample(names, n))

    def site_seed(self, rnd: int, site: str) -> int:
        """The seed a site's update must carry (shared by all sites unless seed_scheme is per_client)."""
        return self.ferret_server.seed_for(rnd, zlib.crc32(site.encode()))

    def _model_bytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.model.state_dict().values())

    def _sync_for(self, site: str) -> tuple[int | None, list, list, list]:
        """(None, ...) when the site needs the full model, else (its round, rounds, updates, alphas)."""
        have = self.round_of_site.get(site)
        missed = missed_updates(self.catchup, have, self.current_round, self._model_bytes())
        return (None, [], [], []) if missed is None else (have, *missed)

    def _task(self, rnd: int, seed: int, sync) -> FLModel:
        have, rounds, updates, alphas = sync
        cfg = {
            "round": rnd,
            "base-round": self.current_round,
            "seed": str(seed),
            **config_dict(self.fcfg),
            "train": dict(self.train_config or {}),
        }
        meta = {
            CONFIG: cfg,
            SYNC: {
                "rounds": rounds,
                "updates": updates,
                "alphas": alphas,
                "model-round": self.current_round if have is None else have,
            },
        }
        params = to_numpy(self.model.state_dict()) if have is None else {}
        return FLModel(params=params, current_round=rnd, total_rounds=self.num_rounds, meta=meta)

    def _on_result(self, result: FLModel) -> bool:
        """FLARE's callback, once per result it delivers (its thread): kept for the end of the
        round, which decides acceptance. The site's name and the task's round come from FLARE
        (the sender's identity, the props of the task this result answers), not from the result."""
        site = str(result.meta.get("client_name"))
        props = result.meta.get("props")
        task_round = props.get(CONFIG, {}).get("round") if isinstance(props, dict) else None
        wire = self.fl_ctx.get_prop(WIRE_BYTES_PROP) if self.fl_ctx is not None else None
        with self._lock:
            self._received.append((site, task_round, result, wire if isinstance(wire, int) else None))
        return True

    # ------------------------------------------------------------------ one round
    def run(self) -> None:
        self._setup()
        self._save("initial.safetensors")
        self.info(f"Ferret: {self.codec.layout}, K={self.fcfg.num_bases}, wire {self.fcfg.wire_dtype}")
        for rnd in range(1, self.num_rounds + 1):
            if self.abort_signal.triggered:
                return
            self.info(f"Ferret round {rnd}/{self.num_rounds}")
            self.ferret_server.begin_round(rnd)
            sampled = self._sample(rnd)
            log = {"round": rnd, "sampled": sampled, "full_model_sent": [], "rejected": {}, "missing": []}
            groups: dict = {}
            for site in sampled:
                sync = self._sync_for(site)
                key = (sync[0], self.site_seed(rnd, site))
                groups.setdefault(key, (sync, []))[1].append(site)
                if sync[0] is None:
                    log["full_model_sent"].append(site)
            self._received = []
            for (_, seed), (sync, members) in groups.items():
                self.send_model(
                    task_name=self.task_name,
                    data=self._task(rnd, seed, sync),
                    targets=members,
                    timeout=self.round_timeout,
                    callback=self._on_result,
                )
            while self.get_num_standing_tasks():
                if self.abort_signal.triggered:
                    return
                time.sleep(0.2)
            self._finish_round(rnd, sampled, log)
        self._save("final.safetensors")

    def _reject(self, log: dict, site: str, why: str) -> None:
        log["rejected"][site] = why
        self.ferret_server.reject(site, why)
        self.round_of_site.pop(site, None)  # the full model next time: its copy is not trusted

    def _finish_round(self, rnd: int, sampled: list[str], log: dict) -> None:
        with self._lock:
            received, self._received = self._received, []
        sampled_set, seen, accepted = set(sampled), set(), []
        log["wire_bytes"], log["update_bytes"] = {}, {}
        late = [site for site, task_round, _, _ in received if task_round != rnd]
        if late:  # an answer to an earlier round's task that FLARE delivered after that round ended
            self.warning(f"Ferret round {rnd}: ignored results of earlier rounds' tasks from {sorted(late)}")
        received = [(site, res, wire) for site, task_round, res, wire in received if task_round == rnd]
        for site, res, wire in sorted(received, key=lambda x: x[0]):
            try:
                if site not in sampled_set:
                    self._reject(log, site, "result from a site that was not sampled this round")
                    continue
                if site in seen:
                    log["rejected"][site] = "a second result from this site this round"
                    self.ferret_server.reject(site, log["rejected"][site])
                    continue
                seen.add(site)
                if wire is not None:
                    log["wire_bytes"][site] = wire
                try:
                    data, _ = reply_update(
                        res.params,
                        res.metrics,
                        res.meta,
                        base_round=self.current_round,
                        digest=self.digests[self.current_round] if self.verify_sync else None,
                    )
                except DecodeError as e:
                    self._reject(log, site, f"malformed result: {e}")
                    continue
                log["update_bytes"][site] = len(data)
                self.round_of_site[site] = self.current_round  # its copy is in sync, whatever its update holds
                m = self.ferret_server.receive(data, expected_seed=self.site_seed(rnd, site), round=rnd, node=site)
                if m is None:
                    log["rejected"][site] = self.ferret_server.rejected[-1][1]
                    continue
                accepted.append((hashlib.sha256(data).digest(), data, m, site))
            except Exception as e:  # noqa: BLE001 - nothing one result holds may end the round
                self._reject(log, site, f"result could not be processed ({type(e).__name__}: {quote(e)})")
        for site in sorted(sampled_set - seen):
            log["missing"].append(site)
            self.round_of_site.pop(site, None)
        accepted.sort(key=lambda a: a[0])  # arrival order must not change the result (float sums)
        entry, self.momentum_window = aggregate_round(
            self.ferret_server, self.model, [a[2] for a in accepted], rnd, self.momentum_window
        )
        self.current_round = rnd
        self.digests[rnd] = model_digest(self.model, self.codec)
        for old in [r for r in self.digests if r < rnd - 16]:
            del self.digests[old]
        self.catchup[rnd] = entry
        budget = min(self._model_bytes(), self.catchup_bytes or self._model_bytes())
        self.round_of_site = trim_catchup(self.catchup, budget, self.round_of_site, rnd + 1)
        log["accepted"] = sorted(a[3] for a in accepted)
        log["alphas"] = [a for _, a in entry]
        log["digest"] = self.digests[rnd]
        self.rounds.append(log)
        self.info(
            f"Ferret round {rnd}: applied {len(entry)} update(s) from {len(accepted)} site(s); "
            f"rejected {sorted(log['rejected'])}, missing {log['missing']}"
        )
        if self._out:
            for a in accepted:
                with open(os.path.join(self._out, "updates", f"round{rnd}_{a[3]}.bin"), "wb") as f:
                    f.write(a[1])
            for i, (blob, _) in enumerate(entry):
                with open(os.path.join(self._out, "updates", f"round{rnd}_applied{i}.bin"), "wb") as f:
                    f.write(blob)
            with open(os.path.join(self._out, "rounds.jsonl"), "a") as f:
                f.write(json.dumps(log) + "\n")
