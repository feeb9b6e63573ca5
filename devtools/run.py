"""`make run`: the gateway in development mode on http://127.0.0.1:10000, with a job worker.

When ``REDIS_URL`` is unset it first starts a Redis-compatible server of its own
(devtools.redis_server) with an append-only file under ``var/``, so keys, users
and sessions survive a restart. The SECRET_KEY is generated once into
``var/secret_key`` (mode 0600): sessions and API-key digests stay valid across
restarts. Then gunicorn and a job worker (``flask --app wsgi jobs worker``, so
``POST /jobs`` gets done). Every child runs in its own session so Ctrl-C reaches
only this process, which then stops the worker and gunicorn first (no request or
job sees Redis vanish) and Redis last (it flushes its append-only file on SIGTERM).
When any child dies the others are stopped too: a half-running gateway would
only mislead.

Environment: ``GATEWAY_VAR_DIR`` (default ./var), ``GATEWAY_REDIS_PORT`` (default
the port recorded in var/redis.port, first chosen as 6390 or any free one),
``PORT`` (default 10000), ``REDIS_URL`` and ``SECRET_KEY`` (used as given).
"""

from __future__ import annotations

import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from types import FrameType
from urllib.parse import urlsplit

from devtools.processes import stop_process
from devtools.redis_server import RedisServer, RedisServerNotFound, die_with_parent, free_port

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PORT = 10000
# Not 6379: a system Redis often listens there, and its data is not ours.
DEFAULT_REDIS_PORT = 6390
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
WATCH_INTERVAL = 0.2


class Stop(Exception):
    """Raised by the signal handler: Ctrl-C, SIGTERM or a closed terminal."""


def var_dir(environ: Mapping[str, str]) -> Path:
    return Path(environ.get("GATEWAY_VAR_DIR") or ROOT / "var").resolve()


def read_or_create_secret(var: Path) -> str:
    """The development SECRET_KEY: created once with 0600 permissions, then reused."""
    path = var / "secret_key"
    var.mkdir(mode=0o700, parents=True, exist_ok=True)  # Redis's files there hold digests too
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        path.chmod(0o600)  # tighten a file copied in with looser permissions
        return path.read_text().strip()
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_urlsafe(48) + "\n")
    return path.read_text().strip()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def redis_port(var: Path, environ: Mapping[str, str]) -> int:
    """Fixed per checkout: recorded in var/redis.port the first time, so REDIS_URL never changes."""
    if environ.get("GATEWAY_REDIS_PORT"):
        return int(environ["GATEWAY_REDIS_PORT"])
    recorded = var / "redis.port"
    if recorded.exists():
        return int(recorded.read_text().strip())
    port = DEFAULT_REDIS_PORT if port_is_free(DEFAULT_REDIS_PORT) else free_port()
    var.mkdir(parents=True, exist_ok=True)
    recorded.write_text(f"{port}\n")
    return port


def dev_environ(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for gunicorn and the flask CLI: development mode, var/'s secret and Redis."""
    env = dict(os.environ if environ is None else environ)
    var = var_dir(env)
    env["FLASK_ENV"] = "development"
    env["GATEWAY_VAR_DIR"] = str(var)
    if not env.get("SECRET_KEY"):
        env["SECRET_KEY"] = read_or_create_secret(var)
    if not env.get("REDIS_URL"):
        env["REDIS_URL"] = f"redis://127.0.0.1:{redis_port(var, env)}/0"
    env.setdefault("PORT", str(DEFAULT_PORT))
    env["HOST"] = "127.0.0.1"  # a development server is for this machine only
    env.setdefault("GUNICORN_GRACEFUL_TIMEOUT", "5")
    return env


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise Stop(signal.Signals(signum).name)


def _relative(path: Path) -> str:
    """``path`` relative to the current folder when it is inside it (shorter commands to copy)."""
    try:
        return shlex.quote(str(path.relative_to(Path.cwd())))
    except ValueError:
        return shlex.quote(str(path))


def _flask_command() -> str:
    return _relative(Path(sys.executable).with_name("flask"))


def banner(env: Mapping[str, str], *, own_redis: bool) -> str:
    """What to do next: the URL and the exact commands for the first admin and API key."""
    url = f"http://127.0.0.1:{env['PORT']}"
    secret_file = _relative(Path(env["GATEWAY_VAR_DIR"]) / "secret_key")
    secret = f'"$(cat {secret_file})"' if not os.environ.get("SECRET_KEY") else '"$SECRET_KEY"'
    prefix = f"FLASK_ENV=development REDIS_URL={shlex.quote(env['REDIS_URL'])} SECRET_KEY={secret}"
    redis_line = f"{env['REDIS_URL']} (data in {env['GATEWAY_VAR_DIR']})" if own_redis else env["REDIS_URL"]
    return f"""
  Royal gateway (development) on {url}
  Redis: {redis_line}

  First admin and API key: in another terminal, in this folder:
    make admin EMAIL=you@example.com
    make key NAME=my-client SCOPES=agents:read,agents:write
  or without make:
    {prefix} {_flask_command()} --app wsgi users create you@example.com
    {prefix} {_flask_command()} --app wsgi keys create --name my-client --scope agents:write

  Console {url}/admin/   API {url}/docs   OpenAPI {url}/openapi.json
  A job worker runs POST /jobs. Ctrl-C stops the gateway, the worker and Redis.
"""


def wait_healthy(process: subprocess.Popen[bytes], url: str, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"gunicorn exited with status {process.returncode} (its messages are above)")
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=1) as response:  # noqa: S310 - our URL
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"the gateway did not answer {url}/healthz within {timeout:.0f}s")


def own_redis_server(env: Mapping[str, str]) -> RedisServer:
    """Our own Redis for REDIS_URL's port (not yet started), its data under var/redis."""
    port = urlsplit(env["REDIS_URL"]).port or 6379
    if not port_is_free(port):
        raise SystemExit(
            f"port {port} (Redis for make run) is in use: is another `make run` running? "
            "Stop it, or set GATEWAY_REDIS_PORT, or point REDIS_URL at a running Redis."
        )
    var = Path(env["GATEWAY_VAR_DIR"])
    return RedisServer(var / "redis", port, persist=True, own_session=True)


def _start_child(command: list[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    # This interpreter's modules, never a bare command name: the venv need not be on PATH.
    return subprocess.Popen(
        [sys.executable, *command],
        cwd=ROOT,
        env=dict(env),
        start_new_session=True,
        preexec_fn=die_with_parent,
    )


def start_gunicorn(env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    port = int(env["PORT"])
    if not port_is_free(port):
        raise SystemExit(f"port {port} is in use: stop what listens there or set PORT")
    return _start_child(["-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"], env)


def migrate_keys(env: Mapping[str, str]) -> None:
    """``flask redis migrate-keys`` before the servers start (core.keymigration; idempotent)."""
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "redis", "migrate-keys"], cwd=ROOT, env=dict(env)
    )
    if done.returncode != 0:
        raise SystemExit(
            f"flask redis migrate-keys exited with status {done.returncode} (its messages are above)"
        )


def start_job_worker(env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """The production worker command, ``flask --app wsgi jobs worker``."""
    return _start_child(["-m", "flask", "--app", "wsgi", "jobs", "worker"], env)


def watch(children: Mapping[str, subprocess.Popen[bytes] | None]) -> int:
    """Wait until a child exits (then say which, once) or a signal raises Stop."""
    while True:
        for name, process in children.items():
            if process is not None and process.poll() is not None:
                print(
                    f"make run: the {name} exited with status {process.returncode}; "
                    "stopping the others (its messages are above).",
                    file=sys.stderr,
                    flush=True,
                )
                return process.returncode or 1
        time.sleep(WATCH_INTERVAL)


def serve(env: dict[str, str], own_redis: bool) -> int:
    """Run Redis (when ours), gunicorn and a job worker until a signal or until one of them exits."""
    redis_server: RedisServer | None = None
    users: dict[str, subprocess.Popen[bytes]] = {}  # the children that use Redis
    try:
        if own_redis:
            redis_server = own_redis_server(env)
            redis_server.start()
        migrate_keys(env)  # a store of an earlier release gets the tagged key names first
        users["web server (gunicorn)"] = start_gunicorn(env)
        wait_healthy(users["web server (gunicorn)"], f"http://127.0.0.1:{env['PORT']}")
        users["job worker"] = start_job_worker(env)
        print(banner(env, own_redis=own_redis), flush=True)
        return watch({**users, "Redis server": redis_server.process if redis_server else None})
    except Stop as stop:
        print(f"\n{stop}: stopping the gateway, the job worker and Redis...", file=sys.stderr, flush=True)
        return 0
    finally:
        # A second Ctrl-C must not interrupt the ordered shutdown below.
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, signal.SIG_IGN)
        stop_all(list(users.values()), redis_server)


def stop_all(users: list[subprocess.Popen[bytes]], redis_server: RedisServer | None) -> None:
    """gunicorn and the worker together (each finishes its request or job), then Redis."""
    running = [process for process in users if process.poll() is None]
    for process in running:
        process.terminate()
    for process in running:
        stop_process(process, STOP_TIMEOUT)
    if redis_server is not None:
        redis_server.stop()


def main() -> int:
    own_redis = not os.environ.get("REDIS_URL")
    env = dev_environ()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _raise_stop)
    try:
        return serve(env, own_redis)
    except (RedisServerNotFound, RuntimeError) as exc:
        print(f"make run: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
