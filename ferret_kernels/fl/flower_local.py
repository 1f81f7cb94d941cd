"""A local Flower deployment for trying an app and for tests: a SuperLink and N SuperNodes as
processes on 127.0.0.1 (insecure mode), `flwr run` through them, everything torn down after.

    python -m ferret_kernels.fl.flower_local python/ferret_flower --nodes 2 \\
        --run-config "num-server-rounds=3 out-dir='/tmp/flower_out'"
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class LocalDeployment:
    """Context manager: starts the SuperLink and SuperNodes; `run()` runs an app through them.

    node_configs: one Flower node-config string per SuperNode (default: partition-id=i
    num-partitions=N). Logs go to workdir/{superlink,supernodeI}.log."""

    def __init__(self, workdir: str | None = None, num_nodes: int = 2, node_configs: list[str] | None = None,
                 bin_dir: str | None = None, start_timeout: float = 60.0):
        self.workdir = workdir or tempfile.mkdtemp(prefix="ferret_flower_")
        self.node_configs = node_configs or [f"partition-id={i} num-partitions={num_nodes}" for i in range(num_nodes)]
        self.bin = bin_dir or os.path.dirname(sys.executable)
        self.start_timeout = start_timeout
        self.procs: list[subprocess.Popen] = []
        self._files = []
        self.home = os.path.join(self.workdir, "flwr_home")
        missing = [b for b in ("flower-superlink", "flower-supernode", "flwr") if not os.path.exists(os.path.join(self.bin, b))]
        if missing:
            raise FileNotFoundError(f"{', '.join(missing)} not found in {self.bin}: pip install 'ferret_kernels[flower]'")

    def _env(self):
        env = dict(os.environ, FLWR_HOME=self.home, PATH=self.bin + os.pathsep + os.environ.get("PATH", ""),
                   PYTHONUNBUFFERED="1")
        return env

    def _start(self, name, args):
        f = open(os.path.join(self.workdir, f"{name}.log"), "w")
        self._files.append(f)
        p = subprocess.Popen(args, env=self._env(), cwd=self.workdir, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(p)
        return p

    def _wait_port(self, port, proc):
        end = time.monotonic() + self.start_timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}:\n{self.log('superlink')}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {self.start_timeout} s")

    def __enter__(self):
        os.makedirs(self.home, exist_ok=True)
        ports = free_ports(1 + len(self.node_configs))
        self.link = ports[0]
        with open(os.path.join(self.home, "config.toml"), "w") as f:
            f.write(f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.link}"\ninsecure = true\n')
        try:
            sl = self._start("superlink", [os.path.join(self.bin, "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                           "--port", str(self.link), "--disable-runtime-dependency-installation"])
            self._wait_port(self.link, sl)
            for i, (cfg, port) in enumerate(zip(self.node_configs, ports[1:])):
                self._start(f"supernode{i}", [os.path.join(self.bin, "flower-supernode"), "--insecure", "--superlink",
                                              f"127.0.0.1:{self.link}", "--port", str(port), "--node-config", cfg])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def run(self, app_dir: str, run_config: str = "", timeout: float = 600) -> subprocess.CompletedProcess:
        """`flwr run APP local --stream [--run-config ...]`; returns the completed process."""
        args = [os.path.join(self.bin, "flwr"), "run", os.path.abspath(app_dir), "local", "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        return subprocess.run(args, env=self._env(), cwd=self.workdir, capture_output=True, text=True, timeout=timeout)

    def log(self, name: str, tail: int = 3000) -> str:
        try:
            with open(os.path.join(self.workdir, f"{name}.log")) as f:
                return f.read()[-tail:]
        except OSError:
            return ""

    def logs(self, tail: int = 3000) -> str:
        names = ["superlink"] + [f"supernode{i}" for i in range(len(self.node_configs))]
        return "\n".join(f"--- {n}\n{self.log(n, tail)}" for n in names)

    def __exit__(self, *exc):
        for p in self.procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for f in self._files:
            f.close()
        self.procs, self._files = [], []
        shutil.rmtree(self.home, ignore_errors=True)
        return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ferret_kernels.fl.flower_local", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("app", help="the Flower app directory (with its pyproject.toml)")
    p.add_argument("--nodes", type=int, default=2)
    p.add_argument("--run-config", default="")
    p.add_argument("--timeout", type=float, default=3600)
    p.add_argument("--workdir")
    a = p.parse_args(argv)
    if a.nodes < 1:
        p.error("--nodes must be at least 1")
    with LocalDeployment(a.workdir, a.nodes) as d:
        r = d.run(a.app, a.run_config, a.timeout)
        sys.stdout.write(r.stdout)
        sys.stderr.write(r.stderr)
        if r.returncode:
            sys.stderr.write(d.logs())
        return r.returncode


if __name__ == "__main__":
    sys.exit(main())
