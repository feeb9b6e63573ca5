"""Jobs on RQ: a closed registry, HTTP enqueue/read/cancel, and `jobs worker` running them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from rq import Retry

from gateway.agents.backends import AgentBackendError, backend_from_config
from gateway.jobs import registry
from gateway.jobs.registry import JobSpec, NoArgs

ROOT = Path(__file__).resolve().parents[1]
Headers = dict[str, str]


@pytest.fixture
def headers(auth_headers: Callable[..., Headers]) -> Headers:
    return auth_headers("jobs:read", "jobs:write")


@pytest.fixture
def admin(auth_headers: Callable[..., Headers]) -> Headers:
    return auth_headers("admin")


# A quick job any jobs:write key may enqueue (the built-in agent, no pacing in tests).
QUICK = ("agent.run", {"prompt": "hi"})


def enqueue(client: FlaskClient, headers: Headers, name: str, args: dict | None = None) -> str:
    answer = client.post("/jobs", json={"name": name, "args": args or {}}, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    assert answer.get_json()["status"] == "queued"
    return answer.get_json()["job_id"]


def run_burst(runner: FlaskCliRunner) -> None:
    result = runner.invoke(args=["jobs", "worker", "--burst"])
    assert result.exit_code == 0, result.output


def job(client: FlaskClient, headers: Headers, job_id: str) -> dict:
    answer = client.get(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200
    return answer.get_json()


@pytest.fixture
def counting_jobs(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Test-only jobs added to the registry; each attempt bumps a Redis counter."""
    counter = "test:attempts"

    def boom(app: Flask, args: NoArgs) -> None:
        r.incr(counter)
        raise RuntimeError("kaboom\n  File secret.py, line 1")

    def flaky(app: Flask, args: NoArgs) -> None:
        r.incr(counter)
        raise AgentBackendError("The agent backend is unavailable.")

    no_retry_delay = Retry(max=2, interval=0)
    for spec in (
        JobSpec("test.boom", "fails for good", NoArgs, boom, lambda e: False, no_retry_delay),
        JobSpec("test.flaky", "fails transiently", NoArgs, flaky, lambda e: True, no_retry_delay),
    ):
        monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    yield counter


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"name": "os.system", "args": {}}, "Unknown job 'os.system'"),
        ({"name": "gateway.jobs.tasks.execute"}, "Unknown job"),
        ({"args": {}}, "name is required"),
        ({"name": "agent.run", "args": {}}, "prompt"),
        ({"name": "agent.run", "args": {"prompt": ""}}, "prompt"),
        ({"name": "agent.run", "args": {"prompt": "x" * 4001}}, "4000"),
        ({"name": "agent.run", "args": {"prompt": "hi", "model": "x"}}, "model"),
        ({"name": "agent.run", "args": ["hi"]}, "args must be a JSON object"),
    ],
)
def test_bad_requests_are_refused(
    client: FlaskClient, headers: Headers, r: redis.Redis, body: dict, message: str
) -> None:
    answer = client.post("/jobs", json=body, headers=headers)
    assert answer.status_code == 400
    assert message in answer.get_json()["error"]
    assert not list(r.scan_iter("rq:job:*"))


def test_bad_args_of_an_admin_job_are_refused(client: FlaskClient, admin: Headers, r: redis.Redis) -> None:
    answer = client.post("/jobs", json={"name": "keys.sweep_expired", "args": {"all": True}}, headers=admin)
    assert answer.status_code == 400
    assert "all" in answer.get_json()["error"]
    assert not list(r.scan_iter("rq:job:*"))


def test_scopes(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    reader = auth_headers("jobs:read")
    assert client.post("/jobs", json={"name": "keys.sweep_expired"}, headers=reader).status_code == 403
    assert client.get("/jobs", headers=auth_headers("jobs:write")).status_code == 403
    assert client.get("/jobs").status_code == 401


def test_agent_run_on_the_cli_worker(
    app: Flask, client: FlaskClient, headers: Headers, test_env: dict[str, str]
) -> None:
    """The real command in its own process: `flask --app wsgi jobs worker --burst`."""
    job_id = enqueue(client, headers, "agent.run", {"prompt": "hello there worker"})
    queued = job(client, headers, job_id)
    assert queued["status"] == "queued" and queued["name"] == "agent.run"
    assert queued["args"] == {"prompt": "hello there worker"}
    env = {**os.environ, **test_env}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "jobs", "worker", "--burst"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "hello there worker" not in done.stderr + done.stdout  # arguments stay out of the logs
    finished = job(client, headers, job_id)
    expected = "".join(
        backend_from_config(app.config).stream_reply([{"role": "user", "content": "hello there worker"}])
    )
    assert finished["status"] == "finished"
    assert finished["result"] == expected and expected  # the reply text, as in CONTRACT section 3
    assert finished["usage"]["total_tokens"] > 0
    assert finished["enqueued_at"] <= finished["started_at"] <= finished["ended_at"]
    listed = client.get("/jobs", headers=headers).get_json()
    assert listed["total"] == 1
    assert listed["jobs"][0]["id"] == job_id and listed["jobs"][0]["status"] == "finished"


def test_jobs_are_listed_newest_first(client: FlaskClient, headers: Headers) -> None:
    ids = [enqueue(client, headers, *QUICK) for _ in range(3)]
    listed = client.get("/jobs", headers=headers).get_json()
    assert [j["id"] for j in listed["jobs"]] == ids[::-1]
    assert listed["total"] == 3
    assert client.get("/jobs?limit=2", headers=headers).get_json()["jobs"][0]["id"] == ids[2]
    assert client.get("/jobs?limit=0", headers=headers).status_code == 400


def test_sweep_job_runs(client: FlaskClient, admin: Headers, runner: FlaskCliRunner) -> None:
    job_id = enqueue(client, admin, "keys.sweep_expired")
    run_burst(runner)
    done = job(client, admin, job_id)
    assert done["status"] == "finished"
    assert done["result"] == {"removed": 0}


def test_failing_job_keeps_a_one_line_error_and_is_not_retried(
    client: FlaskClient, headers: Headers, runner: FlaskCliRunner, r: redis.Redis, counting_jobs: str
) -> None:
    job_id = enqueue(client, headers, "test.boom")
    run_burst(runner)
    failed = job(client, headers, job_id)
    assert failed["status"] == "failed"
    assert failed["error"] == "Internal error (RuntimeError); see the worker log"
    assert "Traceback" not in str(failed) and "secret.py" not in str(failed)
    assert r.get(counting_jobs) == "1"  # a bug is not retried


def test_transient_failure_is_retried_then_fails(
    client: FlaskClient, headers: Headers, runner: FlaskCliRunner, r: redis.Redis, counting_jobs: str
) -> None:
    job_id = enqueue(client, headers, "test.flaky")
    run_burst(runner)
    failed = job(client, headers, job_id)
    assert r.get(counting_jobs) == "3"  # first attempt + 2 retries
    assert failed["status"] == "failed"
    assert failed["error"] == "AgentBackendError: The agent backend is unavailable."


def test_cancel_a_queued_job(client: FlaskClient, headers: Headers, runner: FlaskCliRunner) -> None:
    job_id = enqueue(client, headers, *QUICK)
    answer = client.delete(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "canceled"
    assert client.delete(f"/jobs/{job_id}", headers=headers).status_code == 409
    run_burst(runner)
    assert job(client, headers, job_id)["status"] == "canceled"  # it never ran


def test_cancel_finished_or_unknown(client: FlaskClient, headers: Headers, runner: FlaskCliRunner) -> None:
    job_id = enqueue(client, headers, *QUICK)
    run_burst(runner)
    answer = client.delete(f"/jobs/{job_id}", headers=headers)
    assert answer.status_code == 409
    assert answer.get_json()["error"] == "Job already finished"
    assert client.delete("/jobs/" + "0" * 32, headers=headers).status_code == 404
    assert client.get("/jobs/nope", headers=headers).status_code == 404
    assert client.get("/jobs/%C3%B2", headers=headers).status_code == 404


def test_cancel_a_running_job(
    client: FlaskClient, headers: Headers, test_env: dict[str, str], tmp_path: Path
) -> None:
    """A slow agent.run on a real worker process is stopped by DELETE and ends canceled."""
    job_id = enqueue(client, headers, "agent.run", {"prompt": "a slow prompt " * 20})
    env = {**os.environ, **test_env, "AGENT_BUILTIN_DELAY_MS": "1000"}
    log = (tmp_path / "worker.log").open("w")
    worker = subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "jobs", "worker"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while job(client, headers, job_id)["status"] != "started":
            assert time.monotonic() < deadline, "the job never started"
            time.sleep(0.2)
        answer = client.delete(f"/jobs/{job_id}", headers=headers)
        assert answer.status_code == 202
        while job(client, headers, job_id)["status"] != "canceled":
            assert time.monotonic() < deadline, "the job was not stopped"
            time.sleep(0.2)
    finally:
        worker.terminate()  # SIGTERM: a warm shutdown
        assert worker.wait(30) == 0
        log.close()


def test_jobs_belong_to_their_owner(
    client: FlaskClient, auth_headers: Callable[..., Headers], headers: Headers
) -> None:
    job_id = enqueue(client, headers, *QUICK)
    other = auth_headers("jobs:read", "jobs:write")
    assert client.get(f"/jobs/{job_id}", headers=other).status_code == 404
    assert client.delete(f"/jobs/{job_id}", headers=other).status_code == 404
    assert client.get("/jobs", headers=other).get_json() == {"jobs": [], "total": 0}
    admin = auth_headers("admin")
    assert client.get(f"/jobs/{job_id}", headers=admin).status_code == 200
    assert [j["id"] for j in client.get("/jobs", headers=admin).get_json()["jobs"]] == [job_id]


def test_agent_run_retries_upstream_faults_but_not_a_refused_request() -> None:
    """A 4xx refusal fails the same way every time: retrying it only pays the upstream again."""
    from gateway.agents.backends import AgentBackendError, AgentRequestRefused
    from gateway.jobs.registry import get_spec

    transient = get_spec("agent.run").transient
    assert transient(AgentBackendError("upstream answered HTTP 503"))
    assert not transient(AgentRequestRefused("refused this request (HTTP 400)"))
