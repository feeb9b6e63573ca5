"""Deployment files: the Dockerfile's required instructions (no Docker engine here) and
render.yaml's shape and wiring, read with PyYAML."""

from __future__ import annotations

import ast
import json
import os
import shlex
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask.testing import FlaskCliRunner

from config import SETTINGS
from devtools.gunicorn import ROOT

FIRST_PARTY = {"gateway", "auth", "config", "devtools", "tests", "bench", "wsgi"}
PRODUCTION_CMD = ["gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
WORKER_CMD = "flask --app wsgi jobs worker"


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    lines: list[str] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        lines.append(pending + line)
        pending = ""
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines]


def instructions(name: str) -> list[str]:
    return [args for instruction, args in dockerfile() if instruction == name]


def index_of(predicate: Any) -> int:
    return next(i for i, step in enumerate(dockerfile()) if predicate(*step))


def test_dockerfile_base_env_user_and_port() -> None:
    assert instructions("FROM") == ["python:3.11-slim-bookworm"]
    env = " ".join(instructions("ENV"))
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    assert "FLASK_ENV=production" in env
    users = instructions("USER")
    assert users and users[-1] not in ("root", "0")
    assert index_of(lambda i, a: i == "USER") < index_of(lambda i, a: i == "CMD")
    assert instructions("EXPOSE") == ["10000"]


def test_dockerfile_installs_dependencies_before_copying_the_code() -> None:
    """Editing the code must not invalidate the dependency layer."""
    copy_pyproject = index_of(lambda i, a: i == "COPY" and "pyproject.toml" in a)
    install = index_of(lambda i, a: i == "RUN" and "pip install" in a)
    first_code = index_of(lambda i, a: i == "COPY" and ("gateway" in a or "wsgi.py" in a))
    assert copy_pyproject < install < first_code
    before_install = [a for i, a in dockerfile()[:install] if i == "COPY"]
    assert before_install == ["pyproject.toml ./"]


def test_dockerfile_cmd_is_the_production_command() -> None:
    assert [json.loads(cmd) for cmd in instructions("CMD")] == [PRODUCTION_CMD]


def copied_roots() -> set[str]:
    roots = set()
    for args in instructions("COPY"):
        sources = args.split()[:-1]
        roots.update(Path(source).name.removesuffix(".py") for source in sources)
    return roots


def test_dockerfile_copies_every_first_party_package_the_app_imports() -> None:
    copied = copied_roots()
    files = [ROOT / "wsgi.py", ROOT / "gunicorn.conf.py"]
    for package in copied & FIRST_PARTY:
        files.extend((ROOT / package).rglob("*.py"))
    imported = set()
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    missing = (imported & FIRST_PARTY) - copied
    assert not missing, f"the image imports {missing} but the Dockerfile does not copy them"


def test_dockerignore_keeps_local_state_out_and_the_code_in() -> None:
    ignored = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()}
    assert {".git", ".venv", "var", "tests"} <= ignored
    assert not ignored & copied_roots()


class _Health(BaseHTTPRequestHandler):
    status = 200
    probes = 0

    def do_GET(self) -> None:
        _Health.probes += 1
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[ThreadingHTTPServer]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(("status", "healthy"), [(200, True), (503, False)])
def test_healthcheck_command_probes_healthz_without_curl(
    health_server: ThreadingHTTPServer, status: int, healthy: bool
) -> None:
    (check,) = instructions("HEALTHCHECK")
    command = check.split(" CMD ", 1)[1]
    assert "/healthz" in command and "curl" not in command
    # The image's interpreter, by a name every python image has; here this test's own Python
    # stands in for it (a Debian host has python3 but no `python`, and the venv may not be on PATH).
    interpreter, _, rest = command.partition(" ")
    assert interpreter == "python3"
    _Health.status, _Health.probes = status, 0
    env = {**os.environ, "PORT": str(health_server.server_address[1])}
    done = subprocess.run(
        ["sh", "-c", f"{shlex.quote(sys.executable)} {rest}"], env=env, capture_output=True, timeout=30
    )
    assert _Health.probes == 1, done.stderr  # it ran and probed: a missing interpreter is not "unhealthy"
    assert (done.returncode == 0) is healthy


# render.yaml


@pytest.fixture(scope="module")
def blueprint() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "render.yaml").read_text())


def service(blueprint: dict[str, Any], kind: str) -> dict[str, Any]:
    (found,) = [s for s in blueprint["services"] if s["type"] == kind]
    return found


def env_of(blueprint: dict[str, Any], svc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A service's variables by key, with those of the groups it pulls in."""
    groups = {g["name"]: g["envVars"] for g in blueprint.get("envVarGroups", [])}
    merged: dict[str, dict[str, Any]] = {}
    for entry in svc["envVars"]:
        if "fromGroup" in entry:
            merged.update({e["key"]: {**e, "group": entry["fromGroup"]} for e in groups[entry["fromGroup"]]})
        else:
            merged[entry["key"]] = entry
    return merged


def test_render_services_run_the_docker_image(blueprint: dict[str, Any]) -> None:
    assert sorted(s["type"] for s in blueprint["services"]) == ["keyvalue", "web", "worker"]
    for svc in blueprint["services"]:
        assert "env" not in svc  # Render's current schema rejects the old `env: docker`
    web, worker = service(blueprint, "web"), service(blueprint, "worker")
    assert web["runtime"] == worker["runtime"] == "docker"
    assert web["healthCheckPath"] == "/healthz"
    assert web["dockerCommand"] == " ".join(PRODUCTION_CMD)
    assert worker["dockerCommand"] == WORKER_CMD


def test_render_key_value_is_private_and_never_evicts(blueprint: dict[str, Any]) -> None:
    kv = service(blueprint, "keyvalue")
    assert kv["ipAllowList"] == []
    assert kv["maxmemoryPolicy"] == "noeviction"


@pytest.mark.parametrize("kind", ["web", "worker"])
def test_render_wires_redis_secret_and_environment(blueprint: dict[str, Any], kind: str) -> None:
    env = env_of(blueprint, service(blueprint, kind))
    kv_name = service(blueprint, "keyvalue")["name"]
    assert env["REDIS_URL"]["fromService"] == {
        "type": "keyvalue",
        "name": kv_name,
        "property": "connectionString",
    }
    assert env["FLASK_ENV"]["value"] == "production"
    # One generated SECRET_KEY shared through a group: sessions and key digests agree.
    assert env["SECRET_KEY"].get("generateValue") is True and "group" in env["SECRET_KEY"]
    assert env["OPENAI_API_KEY"] == {"key": "OPENAI_API_KEY", "sync": False}


def test_render_holds_no_secret_literals_and_only_known_settings(blueprint: dict[str, Any]) -> None:
    known = {s.env for s in SETTINGS} | {"FLASK_ENV"}
    for kind in ("web", "worker"):
        for key, entry in env_of(blueprint, service(blueprint, kind)).items():
            assert key in known, f"{kind}: {key} is not a setting of config.SETTINGS"
            if any(word in key for word in ("SECRET", "API_KEY", "TOKEN", "PASSWORD")):
                assert "value" not in entry, f"{key} must not be written in render.yaml"
    for group in blueprint["envVarGroups"]:
        for entry in group["envVars"]:
            # Render ignores these inside a group.
            assert "sync" not in entry and "fromService" not in entry


def test_the_worker_command_exists(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=[*WORKER_CMD.split()[3:], "--help"])
    assert result.exit_code == 0, result.output
