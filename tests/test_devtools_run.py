"""`make run` (devtools.run): its own Redis, gunicorn and job worker, settings in var/, clean Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import requests

from auth import keys
from devtools.gunicorn import ROOT
from devtools.redis_server import free_port
from devtools.run import dev_environ, read_or_create_secret

pytestmark = pytest.mark.gunicorn


def run_env(var: Path, redis_port: int, port: int) -> dict[str, str]:
    """A fresh developer's environment: no REDIS_URL, SECRET_KEY or FLASK_ENV of their own."""
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "SECRET_KEY", "FLASK_ENV")}
    env.update(GATEWAY_VAR_DIR=str(var), GATEWAY_REDIS_PORT=str(redis_port), PORT=str(port))
    env["WEB_CONCURRENCY"] = "1"
    return env


def descendants(pid: int) -> set[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout.split()
    children = {int(p) for p in out}
    return children.union(*(descendants(child) for child in children))


def alive(pid: int) -> bool:
    """Running and not a zombie waiting to be reaped."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


class MakeRun:
    """`python -m devtools.run` as a subprocess, its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.env, self.log = env, log
        self.url = f"http://127.0.0.1:{env['PORT']}"
        self.process: subprocess.Popen[bytes] | None = None
        self.offset = 0

    def output(self) -> str:
        """What the current run printed (the log file is shared by restarts)."""
        return self.log.read_text()[self.offset :]

    def start(self, timeout: float = 40.0) -> MakeRun:
        self.offset = len(self.log.read_text()) if self.log.exists() else 0
        with self.log.open("ab") as out:
            command = [sys.executable, "-m", "devtools.run"]
            self.process = subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=out, stderr=out)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            # The banner is printed once gunicorn answers /healthz.
            if "Ctrl-C stops" in self.output():
                return self
            time.sleep(0.2)
        raise AssertionError(f"make run did not come up:\n{self.log.read_text()}")

    def interrupt(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        return self.process.wait(timeout)

    def stop(self) -> None:
        """Teardown: Ctrl-C if still running, SIGKILL only if that does not end it."""
        if self.process and self.process.poll() is None:
            try:
                self.interrupt()
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[MakeRun]:
    runner = MakeRun(run_env(tmp_path / "var", free_port(), free_port()), tmp_path / "run.log")
    yield runner
    runner.stop()


def test_serves_with_its_own_redis_stops_on_ctrl_c_and_keeps_data(make_run: MakeRun, tmp_path: Path) -> None:
    make_run.start()
    assert requests.get(make_run.url + "/healthz", timeout=5).text == "ok"
    ready = requests.get(make_run.url + "/readyz", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True
    output = make_run.output()
    assert "make admin EMAIL=" in output and "keys create --name" in output
    assert f"redis://127.0.0.1:{make_run.env['GATEWAY_REDIS_PORT']}/0" in output

    secret_file = tmp_path / "var" / "secret_key"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    secret = secret_file.read_text().strip()
    store = redis.Redis(port=int(make_run.env["GATEWAY_REDIS_PORT"]), decode_responses=True)
    _, api_key = keys.create_key(store, pepper=secret.encode(), name="dev", scopes=["agents:read"])
    store.close()

    assert make_run.process is not None
    children = descendants(make_run.process.pid)
    assert len(children) >= 3  # redis-server, gunicorn master, its worker
    assert make_run.interrupt() == 0
    wait_gone(children)

    # Restart: same secret, and the key stored in Redis before still authenticates.
    make_run.start()
    assert secret_file.read_text().strip() == secret
    me = requests.get(make_run.url + "/auth/me", headers={"X-API-Key": api_key}, timeout=5)
    assert me.status_code == 200 and me.json()["name"] == "dev"
    assert make_run.interrupt() == 0


def wait_gone(pids: set[int], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)


def test_children_do_not_outlive_a_killed_make_run(make_run: MakeRun) -> None:
    """SIGKILL cannot be caught: the children learn of it from the kernel (PR_SET_PDEATHSIG)."""
    make_run.start()
    assert make_run.process is not None
    children = descendants(make_run.process.pid)
    assert len(children) >= 3
    make_run.process.kill()
    make_run.process.wait(5)
    wait_gone(children)


def cli_key(env: dict[str, str], *scopes: str) -> str:
    """An API key made the way the README says (`make key`: devtools.cli keys create)."""
    command = [sys.executable, "-m", "devtools.cli", "keys", "create", "--name", "dev-jobs", "--json"]
    command += [arg for scope in scopes for arg in ("--scope", scope)]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return str(json.loads(done.stdout)["key"])


def job_worker_pid(make_run: MakeRun) -> int:
    assert make_run.process is not None
    (pid,) = [
        child
        for child in descendants(make_run.process.pid)
        if b"jobs\0worker" in Path(f"/proc/{child}/cmdline").read_bytes()
        and Path(f"/proc/{child}/stat").read_text().split()[3] == str(make_run.process.pid)
    ]
    return pid


def test_runs_a_job_worker_whose_jobs_finish_and_ctrl_c_stops_all_three(make_run: MakeRun) -> None:
    make_run.start()
    headers = {"Authorization": f"Bearer {cli_key(make_run.env, 'jobs:read', 'jobs:write')}"}
    posted = requests.post(
        make_run.url + "/jobs",
        json={"name": "agent.run", "args": {"prompt": "hi"}},
        headers=headers,
        timeout=5,
    )
    assert posted.status_code == 202, posted.text
    job_url = f"{make_run.url}/jobs/{posted.json()['job_id']}"
    deadline = time.monotonic() + 30
    while True:
        answer = requests.get(job_url, headers=headers, timeout=5)
        assert answer.status_code == 200, answer.text
        if answer.json()["status"] == "finished":
            break
        assert answer.json()["status"] in ("queued", "started"), answer.text
        assert time.monotonic() < deadline, f"the job never finished:\n{make_run.output()}"
        time.sleep(0.5)
    assert make_run.process is not None
    children = descendants(make_run.process.pid)
    assert job_worker_pid(make_run) in children
    assert make_run.interrupt() == 0
    wait_gone(children)


def test_when_one_child_dies_the_others_are_stopped_with_one_line(make_run: MakeRun) -> None:
    make_run.start()
    assert make_run.process is not None
    children = descendants(make_run.process.pid)
    os.kill(job_worker_pid(make_run), signal.SIGKILL)
    assert make_run.process.wait(30) != 0
    wait_gone(children)
    said = [line for line in make_run.output().splitlines() if "job worker" in line and "exited" in line]
    assert len(said) == 1 and "Traceback" not in make_run.output(), make_run.output()


def test_refuses_a_busy_redis_port_with_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        env = run_env(tmp_path / "var", busy.getsockname()[1], free_port())
        done = subprocess.run(
            [sys.executable, "-m", "devtools.run"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert done.returncode != 0
    assert "is in use" in done.stderr and "Traceback" not in done.stderr


def test_dev_environ_keeps_its_settings_in_the_var_dir(tmp_path: Path) -> None:
    var = tmp_path / "var"
    first = dev_environ({"GATEWAY_VAR_DIR": str(var), "FLASK_ENV": "production"})
    assert first["FLASK_ENV"] == "development"
    assert first["PORT"] == "10000" and first["HOST"] == "127.0.0.1"
    assert first["REDIS_URL"].startswith("redis://127.0.0.1:")
    assert stat.S_IMODE((var / "secret_key").stat().st_mode) == 0o600
    again = dev_environ({"GATEWAY_VAR_DIR": str(var)})
    assert (again["SECRET_KEY"], again["REDIS_URL"]) == (first["SECRET_KEY"], first["REDIS_URL"])
    assert len(first["SECRET_KEY"]) >= 32

    given = dev_environ(
        {"GATEWAY_VAR_DIR": str(var), "REDIS_URL": "redis://db:6379/1", "SECRET_KEY": "s" * 40}
    )
    assert given["REDIS_URL"] == "redis://db:6379/1" and given["SECRET_KEY"] == "s" * 40


def test_secret_file_is_tightened_when_copied_in_loosely(tmp_path: Path) -> None:
    (tmp_path / "secret_key").write_text("x" * 48 + "\n")
    (tmp_path / "secret_key").chmod(0o644)
    assert read_or_create_secret(tmp_path) == "x" * 48
    assert stat.S_IMODE((tmp_path / "secret_key").stat().st_mode) == 0o600
