"""A real Redis Cluster for the suite: 3 primaries and 3 replicas, ``redis-server
--cluster-enabled yes`` processes on free ports (each port's bus port, +10000, free too),
joined with ``redis-cli --cluster create``, and the app built on a client of it."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from redis.cluster import RedisCluster

from core.redis import create_redis
from gateway import create_app

NODES = 6
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


@dataclass
class Cluster:
    directory: Path
    ports: list[int]
    processes: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def start(self) -> None:
        for port in self.ports:
            self.processes[port] = self._server(port)
        for port in self.ports:
            _wait_answers(port)
        addresses = [f"127.0.0.1:{port}" for port in self.ports]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "1", "--cluster-yes"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        self.wait_ok()

    def _server(self, port: int) -> subprocess.Popen[bytes]:
        data = self.directory / str(port)
        data.mkdir()
        args = [
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-replica-validity-factor", "0",
            "--save", "", "--appendonly", "no", "--protected-mode", "no", "--repl-diskless-sync-delay", "0",
            "--logfile", str(data / "redis.log"),
        ]  # fmt: skip
        return subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def cli(self, port: int, *args: str) -> str:
        done = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, timeout=5)
        return done.stdout.decode()

    def wait_ok(self, timeout: float = READY_SECONDS) -> None:
        """Every live node says cluster_state:ok and every primary has its replica in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = [p for p, proc in self.processes.items() if proc.poll() is None]
            states = [self.cli(p, "cluster", "info") for p in live]
            synced = [self.cli(p, "info", "replication") for p in live]
            primaries = [s for s in synced if "role:master" in s]
            # "online": a replica still waiting for its first full sync would lose every write
            # of a failover (the first run of the failover test lost a just-created key so).
            if all("cluster_state:ok" in s for s in states) and all(
                "connected_slaves:1" in s and "state=online" in s for s in primaries
            ):
                return
            time.sleep(0.2)
        raise TimeoutError("the cluster did not reach cluster_state:ok")

    def primary_of(self, client: RedisCluster, key: str) -> int:
        node = client.get_node_from_key(key)
        return int(node.port)

    def kill(self, port: int) -> None:
        self.processes[port].kill()  # SIGKILL: no goodbye to the cluster
        self.processes[port].wait(timeout=10)

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.processes.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def _wait_answers(port: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        done = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=5)
        if done.stdout.strip() == b"PONG":
            return
        time.sleep(0.05)
    raise TimeoutError(f"redis-server on {port} did not answer")


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-primary, 3-replica Redis Cluster of the module's own, killed at its end."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are needed on PATH to start a Redis Cluster")
    cluster = Cluster(tmp_path_factory.mktemp("cluster"), free_cluster_ports(NODES))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def rc(redis_cluster: Cluster) -> Iterator[RedisCluster]:
    """A client of the cluster, every primary flushed first."""
    client = create_redis(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def cluster_app(test_env: dict[str, str], redis_cluster: Cluster, rc: RedisCluster) -> Flask:
    """The app on the cluster's URL (RQ's jobs stay on the suite's standalone server)."""
    env: dict[str, Any] = {
        **test_env,
        "REDIS_URL": redis_cluster.url,
        "JOBS_REDIS_URL": test_env["REDIS_URL"],
    }
    return create_app({**env, "GATEWAY_FASTPATH": "false"})
