"""Issue 11, items 4 and 5: a 200 cancel holds against a running worker; owners take turns."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner
from rq import get_current_job

from gateway.jobs import registry
from gateway.jobs.queue import get_queue, owner_queue_name
from gateway.jobs.registry import JobSpec, NoArgs
from gateway.jobs.worker import GatewayWorker

Headers = dict[str, str]
RAN = "test:ran"  # ids of the jobs that ran
ORDER = "test:order"  # owners of the jobs, in the order they ran
TRIES = 200


@pytest.fixture
def marking_job(r: redis.Redis, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A test-only job that records that it ran, and whose job it was."""

    def mark(app: Flask, args: NoArgs) -> None:
        job = get_current_job()
        assert job is not None
        r.sadd(RAN, job.id)
        r.rpush(ORDER, job.meta["owner"])

    spec = JobSpec("test.mark", "records that it ran", NoArgs, mark, lambda e: False, None)
    monkeypatch.setitem(registry.REGISTRY, spec.name, spec)
    yield spec.name


def _enqueue(client: FlaskClient, headers: Headers, name: str) -> str:
    answer = client.post("/jobs", json={"name": name}, headers=headers)
    assert answer.status_code == 202, answer.get_json()
    return answer.get_json()["job_id"]


def _work(app: Flask) -> None:
    app.test_cli_runner().invoke(args=["jobs", "worker"])


@pytest.fixture
def looping_worker(app: Flask, marking_job: str) -> Iterator[multiprocessing.Process]:
    """A real `jobs worker` (not burst), forked so it knows the test job."""
    worker = multiprocessing.get_context("fork").Process(target=_work, args=(app,))
    worker.start()
    yield worker
    os.kill(worker.pid or 0, signal.SIGTERM)  # warm shutdown
    worker.join(30)
    assert worker.exitcode is not None, "the worker did not stop"


def _wait_idle(client: FlaskClient, headers: Headers, ids: list[str]) -> None:
    deadline = time.monotonic() + 30
    for job_id in ids:
        while client.get(f"/jobs/{job_id}", headers=headers).get_json()["status"] in ("queued", "started"):
            assert time.monotonic() < deadline, f"job {job_id} never ended"
            time.sleep(0.05)


def test_a_200_cancel_never_runs_against_a_running_worker(
    app: Flask,
    client: FlaskClient,
    auth_headers: Callable[..., Headers],
    r: redis.Redis,
    marking_job: str,
    looping_worker: multiprocessing.Process,
) -> None:
    app.config["JOBS_QUEUED_MAX"] = TRIES + 10
    headers = auth_headers("jobs:read", "jobs:write", rate_limit="100000/minute")
    answers: dict[str, int] = {}
    for _ in range(TRIES):
        job_id = _enqueue(client, headers, marking_job)
        answer = client.delete(f"/jobs/{job_id}", headers=headers)
        assert answer.status_code in (200, 202, 409), answer.get_json()
        answers[job_id] = answer.status_code
    _wait_idle(client, headers, list(answers))
    ran = set(r.smembers(RAN))
    lies = [job_id for job_id, code in answers.items() if code == 200 and job_id in ran]
    canceled = [job_id for job_id, code in answers.items() if code == 200]
    races = sum(1 for code in answers.values() if code != 200)
    print(f"\ncancel races in {TRIES} tries: {races} found the job taken; {len(lies)} 200s ran")
    assert not lies, f"{len(lies)} of {len(canceled)} jobs answered 200 canceled then ran"
    for job_id in canceled:
        assert client.get(f"/jobs/{job_id}", headers=headers).get_json()["status"] == "canceled"


def test_one_owners_backlog_does_not_starve_another(
    app: Flask,
    client: FlaskClient,
    auth_headers: Callable[..., Headers],
    runner: FlaskCliRunner,
    r: redis.Redis,
    marking_job: str,
) -> None:
    a, b = auth_headers("jobs:read", "jobs:write"), auth_headers("jobs:read", "jobs:write")
    for _ in range(50):
        _enqueue(client, a, marking_job)
    _enqueue(client, b, marking_job)
    b_owner = "api_key:" + client.get("/auth/me", headers=b).get_json()["id"]
    result = runner.invoke(args=["jobs", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    order = r.lrange(ORDER, 0, -1)
    assert len(order) == 51
    assert order.index(b_owner) <= 2, f"B's job ran {order.index(b_owner) + 1}th of 51"


def test_a_worker_listens_only_on_the_queues_that_hold_work(
    app: Flask,
    client: FlaskClient,
    auth_headers: Callable[..., Headers],
    runner: FlaskCliRunner,
    r: redis.Redis,
    marking_job: str,
) -> None:
    """Owners' queues outlive their jobs: listening on every one would grow with every tenant."""
    for _ in range(20):
        _enqueue(client, auth_headers("jobs:write"), marking_job)
    assert runner.invoke(args=["jobs", "worker", "--burst"]).exit_code == 0
    headers = auth_headers("jobs:write")
    _enqueue(client, headers, marking_job)
    owner = "api_key:" + client.get("/auth/me", headers=headers).get_json()["id"]

    worker = GatewayWorker([get_queue(r)], connection=redis.Redis.from_url(app.config["REDIS_URL"]))
    worker.refresh_queues()
    assert [q.name for q in worker.queues] == [owner_queue_name(owner)]


def test_a_new_owner_is_served_by_a_running_worker(
    client: FlaskClient,
    auth_headers: Callable[..., Headers],
    r: redis.Redis,
    marking_job: str,
    looping_worker: multiprocessing.Process,
) -> None:
    """Owners appear after the worker started: it finds their queues without a restart."""
    time.sleep(0.5)  # the worker is listening already
    headers = auth_headers("jobs:read", "jobs:write")
    job_id = _enqueue(client, headers, marking_job)
    _wait_idle(client, headers, [job_id])
    assert r.sismember(RAN, job_id)


def test_jobs_page_with_after_and_a_true_total(
    client: FlaskClient, auth_headers: Callable[..., Headers], marking_job: str
) -> None:
    mine, other = auth_headers("jobs:read", "jobs:write"), auth_headers("jobs:read", "jobs:write")
    ids = [_enqueue(client, mine, marking_job) for _ in range(5)][::-1]  # newest first
    _enqueue(client, other, marking_job)
    first = client.get("/jobs?limit=2", headers=mine).get_json()
    assert [j["id"] for j in first["jobs"]] == ids[:2] and first["total"] == 5
    second = client.get(f"/jobs?limit=2&after={first['jobs'][-1]['id']}", headers=mine).get_json()
    assert [j["id"] for j in second["jobs"]] == ids[2:4] and second["total"] == 5
    last = client.get(f"/jobs?limit=2&after={second['jobs'][-1]['id']}", headers=mine).get_json()
    assert [j["id"] for j in last["jobs"]] == ids[4:]
    assert client.get("/jobs?after=" + "0" * 32, headers=mine).status_code == 400
    owner = "api_key:" + client.get("/auth/me", headers=mine).get_json()["id"]
    assert client.get(f"/jobs?owner={owner}", headers=other).status_code == 403
    admin = auth_headers("admin")
    assert client.get("/jobs", headers=admin).get_json()["total"] == 6
    filtered = client.get(f"/jobs?owner={owner}", headers=admin).get_json()
    assert filtered["total"] == 5 and [j["id"] for j in filtered["jobs"]] == ids
