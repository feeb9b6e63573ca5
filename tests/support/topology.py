"""Real Redis topologies for the tests: a primary with replicas watched by three sentinels,
and a small cluster. Every process runs on a free port in its own tmp dir, and is stopped
(SIGKILL at the latest) when the set is."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from pathlib import Path

import pytest
import redis

from devtools.processes import stop_process
from devtools.redis_server import RedisServer, RedisServerNotFound, find_redis_server, free_port

MASTER = "gwmaster"
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 5000


class Replica(RedisServer):
    """A redis-server that replicates ``primary_port`` (diskless, so a sync takes no disk)."""

    def __init__(self, directory: Path, primary_port: int, port: int | None = None) -> None:
        super().__init__(directory, port)
        self.primary_port = primary_port

    def command(self) -> list[str]:
        return [
            *super().command(),
            "--replicaof", "127.0.0.1", str(self.primary_port),
            "--repl-diskless-sync", "yes",
            "--repl-diskless-sync-delay", "0",
        ]  # fmt: skip


class FastSyncPrimary(RedisServer):
    def command(self) -> list[str]:
        return [*super().command(), "--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]


class SentinelProcess:
    """``redis-server <conf> --sentinel`` on a free port, monitoring MASTER."""

    def __init__(self, directory: Path, primary_port: int) -> None:
        self.directory = directory
        self.port = free_port()
        self.primary_port = primary_port
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> SentinelProcess:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "sentinel.conf"  # sentinel rewrites its config: its own file
        conf.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {self.directory}\n"
            f"logfile {self.directory / 'sentinel.log'}\n"
            f"sentinel monitor {MASTER} 127.0.0.1 {self.primary_port} 2\n"
            f"sentinel down-after-milliseconds {MASTER} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {MASTER} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )
        cmd = [find_redis_server(), str(conf), "--sentinel"]
        self.process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_ping(self.port, self.process, conf)
        return self

    def client(self) -> redis.Redis:
        return redis.Redis(
            port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5, decode_responses=True
        )

    def master_port(self) -> int | None:
        try:
            with self.client() as c:
                found = c.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER)
        except redis.RedisError:
            return None
        return int(found[1]) if found else None

    def stop(self) -> None:
        stop_process(self.process, timeout=5)


class SentinelSet:
    """One primary, ``replicas`` replicas and three sentinels (quorum 2)."""

    def __init__(self, directory: Path, replicas: int = 1) -> None:
        self.directory = directory
        self.primary = FastSyncPrimary(directory / "primary")
        self.replicas = [Replica(directory / f"replica{i}", self.primary.port) for i in range(replicas)]
        self.sentinels = [SentinelProcess(directory / f"sentinel{i}", self.primary.port) for i in range(3)]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{MASTER}/0"

    def start(self) -> SentinelSet:
        self.primary.start()
        for replica in self.replicas:
            replica.start()
        self.wait_replicas(len(self.replicas))
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_sentinels_agree(self.primary.port)
        return self

    def wait_replicas(self, count: int, port: int | None = None, timeout: float = 15.0) -> None:
        """Until the primary on ``port`` has ``count`` replicas online."""
        deadline = time.monotonic() + timeout
        with redis.Redis(port=port or self.primary.port, socket_timeout=0.5) as c:
            while time.monotonic() < deadline:
                with contextlib.suppress(redis.RedisError):
                    info = c.info("replication")
                    online = [v for k, v in info.items() if k.startswith("slave") and isinstance(v, dict)]
                    if sum(1 for v in online if v.get("state") == "online") >= count:
                        return
                time.sleep(0.05)
        raise RuntimeError(f"the primary did not get {count} replicas online in {timeout}s")

    def wait_sentinels_agree(self, port: int, timeout: float = 30.0) -> float:
        """Until every sentinel names the primary on ``port`` and knows the others; seconds taken."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if all(s.master_port() == port for s in self.sentinels) and self._sentinels_know_each_other():
                return time.monotonic() - started
            time.sleep(0.05)
        raise RuntimeError(f"the sentinels did not agree on port {port} within {timeout}s")

    def _sentinels_know_each_other(self) -> bool:
        try:
            with self.sentinels[0].client() as c:
                master = c.execute_command("SENTINEL", "MASTER", MASTER)
        except redis.RedisError:
            return False
        fields = dict(zip(master[::2], master[1::2], strict=False)) if isinstance(master, list) else master
        return int(fields.get("num-other-sentinels", 0)) >= len(self.sentinels) - 1

    def kill_primary(self) -> None:
        """SIGKILL: no shutdown, no final sync; what a crashed machine looks like."""
        assert self.primary.process is not None
        self.primary.process.send_signal(signal.SIGKILL)
        self.primary.process.wait(5)

    def stop(self) -> None:
        for process in (*self.sentinels, *self.replicas, self.primary):
            with contextlib.suppress(Exception):
                process.stop()


def _wait_ping(port: int, process: subprocess.Popen[bytes], conf: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    with redis.Redis(port=port, socket_timeout=0.5, socket_connect_timeout=0.5) as c:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"sentinel exited at start-up; see {conf.parent / 'sentinel.log'}")
            with contextlib.suppress(redis.RedisError):
                if c.ping():
                    return
            time.sleep(0.05)
    raise RuntimeError(f"sentinel on port {port} did not answer in {timeout}s")


def start_sentinel_set(directory: Path, replicas: int = 1) -> SentinelSet:
    """A running set, or the test skipped with the reason (no server binary, no --sentinel)."""
    try:
        find_redis_server()
    except RedisServerNotFound as exc:
        pytest.skip(str(exc))
    topology = SentinelSet(directory, replicas)
    try:
        return topology.start()
    except RuntimeError as exc:
        topology.stop()
        pytest.skip(f"could not start a Sentinel set: {exc}")
