"""Run the gateway (or another WSGI app of this repo) under the real gunicorn config:
for the cross-worker and fault tests, the browser tests and the benchmarks."""

from __future__ import annotations

import http.client
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from devtools.processes import stop_process
from devtools.redis_server import free_port

ROOT = Path(__file__).resolve().parents[1]


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py <app>`` on a free loopback port with the given environment.

    ``workers`` sets WEB_CONCURRENCY (None keeps the environment's); the server is ready
    when ``ready_path`` answers 200.
    """

    def __init__(
        self,
        env: Mapping[str, str],
        workers: int | None = 2,
        log_path: Path | None = None,
        *,
        app: str = "wsgi:app",
        ready_path: str = "/healthz",
    ) -> None:
        self.port = free_port()
        self.workers = workers
        self.env = {**os.environ, **env, "PORT": str(self.port), "HOST": "127.0.0.1"}
        if workers is not None:
            self.env["WEB_CONCURRENCY"] = str(workers)
        self.log_path = log_path
        self.app = app
        self.ready_path = ready_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GunicornServer:
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", self.app]
        if self.log_path:
            with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
                self.process = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        else:
            self.process = subprocess.Popen(
                cmd, cwd=ROOT, env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
            if self._answers():
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"gunicorn did not answer {self.ready_path} within {timeout}s; see {self.log_path}"
        )

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=0.5)
        try:
            conn.request("GET", self.ready_path)
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def worker_pids(self) -> set[int]:
        """PIDs of the worker processes (children of the master)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def stop(self, timeout: float = 15.0) -> None:
        stop_process(self.process, timeout)
        self.process = None

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
