"""The Ferret FLARE job: fine-tune the demo's model (all-MiniLM-L6-v2 on the health tweets by
default) across FLARE sites with Ferret updates (K coefficients per block) instead of weights.

    python python/ferret_nvflare/job.py --sites 2 --rounds 3                # FLARE's simulator
    python python/ferret_nvflare/job.py --export jobs/                      # a job folder for POC / production
    python python/ferret_nvflare/job.py --sites 2 --set model=tiny --set local-steps=2

`build_job` returns the FedJob (server: FerretController + a WireMeter on task results and
task data; sites: site.py, FLARE's Client API in the site's job process). The job ships site.py,
ferret_task.py and the Flower app's task module (models and data) in its custom folders;
ferret_kernels and ferret_demo are installed packages on every machine (never copied).
docs/nvflare.md: simulator, POC mode and a provisioned deployment.
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
FLOWER_APP = os.path.join(os.path.dirname(HERE), "ferret_flower", "ferret_flower_app")


def build_job(
    run_config: dict | None = None,
    *,
    num_rounds: int = 3,
    min_clients: int = 2,
    num_clients: int | None = None,
    ferret: dict | None = None,
    server: dict | None = None,
    name: str = "ferret",
    round_timeout: int = 600,
    meter: bool = True,
):
    """The FedJob. run_config: ferret_task.DEFAULTS overrides (model, seed, local training);
    ferret / server: FerretConfig / ServerConfig fields (default K=32 per block of 65,536,
    bf16 on the wire, server lr 1)."""
    from nvflare.app_common.executors.client_api_executor import ClientAPIExecutor
    from nvflare.job_config.api import FedJob
    from nvflare.job_config.defs import FilterType

    from ferret_kernels.fl.nvflare import FerretController, WireMeter

    if HERE not in sys.path:
        sys.path.insert(0, HERE)  # ferret_task, as the server and sites import it from the job's custom folder
    import ferret_task

    cfg = ferret_task.config(run_config)  # refuses unknown keys before a job is written
    overrides = {k: v for k, v in cfg.items() if v != ferret_task.DEFAULTS.get(k)}
    ferret = {"num_bases": 32, "block_size": 1 << 16, "wire_dtype": "bfloat16", **(ferret or {})}
    server = {"lr": 1.0, "base_seed": int(cfg["seed"]), **(server or {})}
    job = FedJob(name=name, min_clients=min_clients)
    job.set_app_packages(["ferret_kernels", "ferret_demo"])  # installed on every machine, not copied
    job.to_server(
        FerretController(
            model_factory="ferret_task:build_model",
            model_args=overrides,
            num_rounds=num_rounds,
            num_clients=num_clients,
            min_clients=min_clients,
            ferret=ferret,
            server=server,
            round_timeout=round_timeout,
        )
    )
    if meter:
        job.to_server(WireMeter("up"), filter_type=FilterType.TASK_RESULT, tasks=["train"])
        job.to_server(WireMeter("down"), filter_type=FilterType.TASK_DATA, tasks=["train"])
    # the Client API script, in the site's job process (what ScriptRunner sets up, with the script's
    # path relative to the job's custom folder so that the exported job runs on any machine)
    args = " ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    job.to_clients(
        ClientAPIExecutor(execution_mode="in_process", task_script_path="site.py", task_script_args=args),
        tasks=["train"],
    )
    job.add_file_to_clients(os.path.join(HERE, "site.py"))
    for add in (job.add_file_to_server, job.add_file_to_clients):
        add(os.path.join(HERE, "ferret_task.py"))
        for f in ("__init__.py", "task.py"):
            add(os.path.join(FLOWER_APP, f), dest_dir="ferret_flower_app")
    return job


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sites", type=int, default=2, help="simulated sites (simulator)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--num-bases", type=int, default=32, help="K per block")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="run config (ferret_task.DEFAULTS)")
    ap.add_argument("--workspace", default="/tmp/nvflare/ferret", help="simulator workspace")
    ap.add_argument("--export", metavar="DIR", help="write the job folder to DIR instead of simulating")
    a = ap.parse_args(argv)
    run_config = dict(s.split("=", 1) for s in a.set)
    job = build_job(
        {**run_config, "num-partitions": run_config.get("num-partitions", a.sites)},
        num_rounds=a.rounds,
        min_clients=a.sites,
        ferret={"num_bases": a.num_bases},
    )
    if a.export:
        job.export_job(a.export)
        print(f"job written to {os.path.join(a.export, job.name)}")
    else:
        job.simulator_run(a.workspace, n_clients=a.sites, threads=a.sites)
        print(f"simulator workspace: {a.workspace} (server output under server/simulate_job/ferret)")


if __name__ == "__main__":
    main()
