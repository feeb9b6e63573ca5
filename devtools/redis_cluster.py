"""Start a real Redis Cluster of our own (for the cluster tests and ``python -m bench secured
--redis cluster``): ``redis-server --cluster-enabled yes`` processes on free ports (each
port's bus port, +10000, free too), joined with ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.redis_server import find_redis_server

NODE_TIMEOUT_MS = 1500  # how long a primary may be silent before its replica takes over
READY_SECONDS = 30.0


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_ports(count: int) -> list[int]:
    """Ports whose cluster bus port (+10000) is free as well."""
    ports: list[int] = []
    while len(ports) < count:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port + 10000 < 65536 and port not in ports and _is_free(port + 10000):
            ports.append(port)
    return ports


def find_redis_cli() -> str:
    found = shutil.which("redis-cli") or shutil.which("valkey-cli")
    if found is None:
        raise FileNotFoundError("no redis-cli on PATH: it joins the nodes into a cluster")
    return found


@dataclass
class Cluster:
    """``primaries`` primaries with ``replicas`` replicas each, in ``directory``."""

    directory: Path
    primaries: int = 3
    replicas: int = 1
    ports: list[int] = field(default_factory=list)
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = free_cluster_ports(self.primaries * (1 + self.replicas))
        self.server, self.cli_path = find_redis_server(), find_redis_cli()

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    @property
    def node_urls(self) -> list[str]:
        """Each node's own plain URL (INFO, memory: per node, not through the cluster client)."""
        return [f"redis://127.0.0.1:{port}/0" for port in self.ports]

    def start(self) -> Cluster:
        for port in self.ports:
            self.processes[port] = self._server(port)
        for port in self.ports:
            self._wait_answers(port)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            [self.cli_path, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
             "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self.wait_ok()
        return self

    def _server(self, port: int) -> subprocess.Popen[bytes]:
        data = self.directory / str(port)
        data.mkdir(parents=True)
        args = [
            self.server, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
            "--save", "", "--appendonly", "no", "--protected-mode", "no", "--repl-diskless-sync-delay", "0",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run([self.cli_path, "-p", str(port), *args], capture_output=True, timeout=5)
        return done.stdout.decode()

    def wait_ok(self, timeout: float = READY_SECONDS) -> None:
        """Every live node says cluster_state:ok and every primary has its replicas in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p, proc in self.processes.items() if proc.poll() is None]
            states = [self.cli(p, "cluster", "info") for p in live]
            synced = [self.cli(p, "info", "replication") for p in live]
            primaries = [s for s in synced if "role:master" in s]
            # "online": a replica still waiting for its first full sync would lose every write
            # of a failover (the first run of the failover test lost a just-created key so).
            if all("cluster_state:ok" in s for s in states) and all(
                f"connected_slaves:{self.replicas}" in s and (not self.replicas or "state=online" in s)
                for s in primaries
            ):
                return
            time.sleep(0.2)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def kill(self, port: int) -> None:
        self.processes[port].kill()  # SIGKILL: no goodbye to the cluster
        self.processes[port].wait(timeout=10)

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.processes.values() if proc.poll() is None]

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()

    def _wait_answers(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.cli(port, "ping").strip() == "PONG":
                return
            time.sleep(0.05)
        raise TimeoutError(f"redis-server on {port} did not answer")
