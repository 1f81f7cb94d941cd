"""ServerApp: Ferret rounds with central evaluation on held-out data.

Run config (python/ferret_flower/pyproject.toml) beyond the model and training knobs:
- out-dir: if set, writes the initial and final global models (safetensors), rounds.jsonl
  (one line per round as it completes: sampled nodes, bytes, rejections, missing nodes,
  step sizes, model digest), rounds.json at the end (this run's last rounds and central
  evaluations), and, unless save-updates is false, every update it received and applied
  under updates/ (a long run without them keeps its disk use flat).
- checkpoint-dir: if set, the strategy checkpoints each round there and a run started on a
  directory that holds a checkpoint resumes after its round (see ferret_kernels.fl.flower).
- round-timeout: seconds a round waits for replies; nodes that miss it are logged as
  missing and the round goes on without them.
"""

from __future__ import annotations

import copy
import json
import os

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from safetensors.torch import save_file

from ferret_kernels.fl import FerretConfig, ServerConfig
from ferret_kernels.fl.checkpoint import unshared
from ferret_kernels.fl.flower import FerretStrategy

from . import task

app = ServerApp()


def _save(model, path):
    save_file(unshared(model.state_dict()), path)  # tied weights: each tensor its own memory


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    model, tok = task.build_model(cfg)
    heldout = task.build_task(cfg, tok, 1)
    out = str(cfg["out-dir"])
    upd = os.path.join(out, "updates")
    save_updates = bool(cfg.get("save-updates", True))
    if out:
        os.makedirs(upd, exist_ok=True)
        _save(model, os.path.join(out, "initial.safetensors"))

    def on_round(rl):
        if not out:
            return
        with open(os.path.join(out, "rounds.jsonl"), "a") as f:
            f.write(json.dumps(rl.as_dict()) + "\n")
        if not save_updates:
            return
        for i, (blob, _) in enumerate(rl.applied):
            with open(os.path.join(upd, f"round{rl.round}_{i}.bin"), "wb") as f:
                f.write(blob)
        for node, blob in rl.accepted.items():
            with open(os.path.join(upd, f"round{rl.round}_node{node}.bin"), "wb") as f:
                f.write(blob)

    rounds = int(cfg["num-server-rounds"])
    strategy = FerretStrategy(
        model,
        FerretConfig(
            num_bases=int(cfg["num-bases"]),
            block_size=int(cfg["block-size"]),
            dist=str(cfg["dist"]),
            adaptive=bool(cfg["adaptive"]),
            full_threshold=int(cfg["full-threshold"]),
            wire_dtype=str(cfg["wire-dtype"]),
        ),
        ServerConfig(
            lr=float(cfg["server-lr"]),
            momentum=float(cfg["server-momentum"]),
            seed_scheme=str(cfg["seed-scheme"]),
            rounds=rounds,
            base_seed=int(cfg["seed"]),
        ),
        fraction_train=float(cfg["fraction-train"]),
        min_train_nodes=int(cfg["min-nodes"]),
        min_available_nodes=int(cfg["min-nodes"]),
        checkpoint_dir=str(cfg["checkpoint-dir"]) or None,
        on_round=on_round,
        catchup_bytes=int(cfg.get("catchup-bytes", 0)) or None,
    )
    evals = {}
    scratch = copy.deepcopy(model)  # central evaluation reads Flower's arrays, not the strategy's model

    def central_eval(r: int, arrays: ArrayRecord) -> MetricRecord:
        scratch.load_state_dict(arrays.to_torch_state_dict())
        evals[r] = task.evaluate(heldout, scratch)
        return MetricRecord(evals[r])

    strategy.start(
        grid,
        ArrayRecord(model.state_dict()),
        num_rounds=rounds,
        timeout=float(cfg["round-timeout"]),
        train_config=ConfigRecord({}),
        evaluate_fn=central_eval,
    )
    if out:
        _save(model, os.path.join(out, "final.safetensors"))
        report = {
            "model_bytes_bf16": sum(p.numel() * 2 for p in model.parameters()),
            "layout": repr(strategy.codec.layout),
            "fingerprint": strategy.codec.layout.fingerprint,
            "resumed_from": strategy.resumed_from,
            "rejected_total": strategy.server.rejected_total,
            "rounds": [rl.as_dict() for rl in strategy.rounds],
            "central_eval": evals,
        }
        with open(os.path.join(out, "rounds.json"), "w") as f:
            json.dump(report, f, indent=1)
