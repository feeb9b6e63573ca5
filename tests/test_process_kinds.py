"""Web workers, job workers and RQ work horses are counted apart in the metrics (issue 11, item 9)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import redis
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families

from core.redis import KEYS
from gateway import create_app
from gateway.metrics import recorder


@pytest.fixture
def app(test_env: dict[str, str], r: redis.Redis) -> Iterator[Flask]:
    recorder.flush_all(quiet=True)
    r.delete(KEYS.metrics_counters(), KEYS.metrics_processes())
    yield create_app({**test_env, "RATELIMIT_DEFAULT": "100000/minute"})


def _in_child(work: Callable[[], None]) -> None:
    """Run ``work`` in a forked child (as RQ forks a work horse) and wait for it."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            work()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def _job_worker_with_a_horse(app: Flask) -> Callable[[], None]:
    def job_worker() -> None:
        with app.app_context():
            recorder.set_process_kind("job_worker")  # what `jobs worker` says at start
            recorder.flush()

            def horse() -> None:
                with app.app_context():
                    recorder.flush()  # a horse whose flusher ran: it must not pass as a worker

            _in_child(horse)

    return job_worker


def _by_kind(text: str) -> dict[str, float]:
    for family in text_string_to_metric_families(text):
        if family.name == "gateway_processes_by_kind":
            return {s.labels["kind"]: s.value for s in family.samples}
    return {}


def test_processes_are_counted_by_kind(app: Flask, auth_headers: Callable[..., dict[str, str]]) -> None:
    headers = auth_headers("metrics:read")
    client = app.test_client()
    _in_child(_job_worker_with_a_horse(app))
    text = client.get("/metrics/prometheus", headers=headers).get_data(as_text=True)
    assert _by_kind(text) == {"web": 1, "job_worker": 1, "work_horse": 1}
    # The unlabeled gauge keeps its meaning for dashboards: gateway (web) processes only.
    assert "\ngateway_processes 1.0\n" in text
