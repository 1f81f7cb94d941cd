"""A local Flower deployment for trying an app and for tests: a SuperLink and N SuperNodes as
processes on 127.0.0.1 (insecure mode), `flwr run` through them, everything torn down after.
For fault-injection tests it can also submit a run without waiting, SIGKILL the ServerApp
process the SuperLink started, and SIGKILL or restart a SuperNode (only processes it started
or their descendants, by process id).

    python -m ferret_kernels.fl.harness.flower_local python/ferret_flower --nodes 2 \\
        --run-config "num-server-rounds=3 out-dir='/tmp/flower_out'"
"""

from __future__ import annotations

import argparse
import os
import re
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

    def __init__(
        self,
        workdir: str | None = None,
        num_nodes: int = 2,
        node_configs: list[str] | None = None,
        bin_dir: str | None = None,
        start_timeout: float = 60.0,
    ):
        self.workdir = workdir or tempfile.mkdtemp(prefix="ferret_flower_")
        self.node_configs = node_configs or [f"partition-id={i} num-partitions={num_nodes}" for i in range(num_nodes)]
        self.bin = bin_dir or os.path.dirname(sys.executable)
        self.start_timeout = start_timeout
        self.procs: list[subprocess.Popen] = []
        self.nodes: list[subprocess.Popen] = []  # the current process of SuperNode i
        self._files = []
        self.home = os.path.join(self.workdir, "flwr_home")
        missing = [
            b for b in ("flower-superlink", "flower-supernode", "flwr") if not os.path.exists(os.path.join(self.bin, b))
        ]
        if missing:
            raise FileNotFoundError(
                f"{', '.join(missing)} not found in {self.bin}: pip install 'ferret_kernels[flower]'"
            )

    def _env(self):
        env = dict(
            os.environ,
            FLWR_HOME=self.home,
            PATH=self.bin + os.pathsep + os.environ.get("PATH", ""),
            PYTHONUNBUFFERED="1",
        )
        return env

    def _start(self, name, args):
        f = open(os.path.join(self.workdir, f"{name}.log"), "a")
        self._files.append(f)
        p = subprocess.Popen(
            args, env=self._env(), cwd=self.workdir, stdout=f, stderr=subprocess.STDOUT, start_new_session=True
        )
        self.procs.append(p)
        return p

    def _wait_port(self, port, proc):
        end = time.monotonic() + self.start_timeout
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"process exited with {proc.returncode} before listening on {port}:\n{self.log('superlink')}"
                )
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
            f.write(
                f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "127.0.0.1:{self.link}"\ninsecure = true\n'
            )
        try:
            sl = self._start(
                "superlink",
                [
                    os.path.join(self.bin, "flower-superlink"),
                    "--insecure",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.link),
                    "--disable-runtime-dependency-installation",
                ],
            )
            self._wait_port(self.link, sl)
            self.superlink = sl
            for i, cfg in enumerate(self.node_configs):
                self.nodes.append(self._start_node(i, cfg, ports[1 + i]))
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start_node(self, i: int, cfg: str, port: int | None = None) -> subprocess.Popen:
        port = port or free_ports(1)[0]
        return self._start(
            f"supernode{i}",
            [
                os.path.join(self.bin, "flower-supernode"),
                "--insecure",
                "--superlink",
                f"127.0.0.1:{self.link}",
                "--port",
                str(port),
                "--node-config",
                cfg,
            ],
        )

    def run(
        self, app_dir: str, run_config: str = "", timeout: float = 600, stream: bool = True
    ) -> subprocess.CompletedProcess:
        """`flwr run APP local [--stream] [--run-config ...]`; returns the completed process.
        Without `stream` it returns once the run is submitted (the ServerApp runs on)."""
        args = [os.path.join(self.bin, "flwr"), "run", os.path.abspath(app_dir), "local"] + (
            ["--stream"] if stream else []
        )
        if run_config:
            args += ["--run-config", run_config]
        return subprocess.run(args, env=self._env(), cwd=self.workdir, capture_output=True, text=True, timeout=timeout)

    def submit(self, app_dir: str, run_config: str = "") -> "RunHandle":
        """Start `flwr run APP local --stream` in the background (output to a log file)."""
        path = os.path.join(self.workdir, f"run{len(self._files)}.log")
        f = open(path, "w")
        self._files.append(f)
        args = [os.path.join(self.bin, "flwr"), "run", os.path.abspath(app_dir), "local", "--stream"]
        if run_config:
            args += ["--run-config", run_config]
        return RunHandle(
            subprocess.Popen(args, env=self._env(), cwd=self.workdir, stdout=f, stderr=subprocess.STDOUT), path
        )

    def stop(self, run_id: int) -> subprocess.CompletedProcess:
        """`flwr stop RUN_ID local`: mark a run finished (after its ServerApp died, the SuperLink
        would otherwise wait for its heartbeat to expire while nodes retry its last messages)."""
        return subprocess.run(
            [os.path.join(self.bin, "flwr"), "stop", str(run_id), "local"],
            env=self._env(),
            cwd=self.workdir,
            capture_output=True,
            text=True,
            timeout=60,
        )

    # ------------------------------------------------------------------ fault injection
    @staticmethod
    def _children() -> dict[int, list[int]]:
        kids: dict[int, list[int]] = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                except (OSError, IndexError, ValueError):
                    continue
                kids.setdefault(ppid, []).append(int(d))
        return kids

    def descendants(self, pid: int) -> list[int]:
        """Process ids below `pid` (Linux /proc)."""
        kids, out, todo = self._children(), [], [pid]
        while todo:
            for c in kids.get(todo.pop(), []):
                out.append(c)
                todo.append(c)
        return out

    @staticmethod
    def _cmdline(pid: int) -> str:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            return ""

    def serverapp_pids(self) -> list[int]:
        """The ServerApp processes the SuperLink started (one per active run)."""
        return [p for p in self.descendants(self.superlink.pid) if "flwr-serverapp" in self._cmdline(p)]

    def kill_serverapp(self) -> list[int]:
        """SIGKILL every ServerApp process of this deployment (a crash of the server side of the
        runs; the SuperLink and SuperNodes stay up). Returns the killed pids."""
        pids = self.serverapp_pids()
        for p in pids:
            try:
                os.kill(p, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return pids

    def kill_node(self, i: int) -> None:
        """SIGKILL SuperNode i and the ClientApp it may be running (its process group)."""
        p = self.nodes[i]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def restart_node(self, i: int, node_config: str | None = None) -> None:
        """Start SuperNode i again (a new process; Flower gives it a new node id)."""
        self.kill_node(i)
        self.nodes[i] = self._start_node(i, node_config or self.node_configs[i])

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
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for f in self._files:
            f.close()
        self.procs, self.nodes, self._files = [], [], []
        shutil.rmtree(self.home, ignore_errors=True)
        return False


class RunHandle:
    """A `flwr run --stream` in the background: its process and its output file."""

    def __init__(self, proc: subprocess.Popen, log_path: str):
        self.proc, self.log_path = proc, log_path

    def output(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def run_id(self, timeout: float = 60) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = re.search(r"started run (\d+)", self.output())
            if m:
                return int(m.group(1))
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"no run id in the output of flwr run:\n{self.output()[-2000:]}")

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ferret_kernels.fl.harness.flower_local",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
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
