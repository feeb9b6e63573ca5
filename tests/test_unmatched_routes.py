"""Unmatched URLs are rate-limited like any other, and access lines stay short (issue 11, item 6)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
import redis
from flask import Flask

from gateway import create_app


@pytest.fixture
def limited_app(test_env: dict[str, str], r: redis.Redis) -> Flask:
    return create_app({**test_env, "RATELIMIT_ANONYMOUS": "30/minute"})


def test_unknown_urls_are_counted_per_ip(limited_app: Flask) -> None:
    client = limited_app.test_client()
    answers = [client.get(f"/no/such/page/{n}") for n in range(31)]
    assert {a.status_code for a in answers[:30]} == {404}
    assert answers[0].headers["X-RateLimit-Limit"] == "30"
    assert answers[30].status_code == 429
    assert answers[30].get_json()["status_code"] == 429


def test_wrong_methods_are_counted_too(limited_app: Flask) -> None:
    client = limited_app.test_client()
    answers = [client.put("/auth/login") for _ in range(31)]
    assert {a.status_code for a in answers[:30]} == {405}
    assert answers[30].status_code == 429


def test_unknown_urls_count_against_a_presented_key(
    limited_app: Flask, auth_headers: Callable[..., dict[str, str]]
) -> None:
    headers = auth_headers(rate_limit="3/minute")
    client = limited_app.test_client()
    statuses = [client.get("/nowhere", headers=headers).status_code for _ in range(4)]
    assert statuses == [404, 404, 404, 429]


def test_health_routes_stay_unlimited(limited_app: Flask) -> None:
    client = limited_app.test_client()
    assert {client.get("/healthz").status_code for _ in range(35)} == {200}


def _access_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if '"gateway.access"' in line]


def test_access_lines_stay_under_2_kib(limited_app: Flask, capfd: pytest.CaptureFixture[str]) -> None:
    client = limited_app.test_client()
    capfd.readouterr()
    long = "x" * 10_000
    headers = {"User-Agent": "u" * 10_000, "Referer": "https://r.example/" + "r" * 10_000}
    assert client.get("/" + long, headers=headers).status_code == 404
    assert client.get("/%C3%A9" * 2000, headers=headers).status_code == 404  # escapes grow
    lines = _access_lines(capfd.readouterr().err)
    assert len(lines) == 2
    for line in lines:
        assert len(line.encode()) + 1 < 2048
        entry = json.loads(line)
        assert entry["path"].endswith("[truncated]")
        assert entry["status"] == 404


def test_short_paths_are_logged_whole(limited_app: Flask, capfd: pytest.CaptureFixture[str]) -> None:
    client = limited_app.test_client()
    capfd.readouterr()
    client.get("/docs")
    (line,) = _access_lines(capfd.readouterr().err)
    assert json.loads(line)["path"] == "/docs"
