"""Login limits count failures only (CONTRACT section 5; issue 10, item 10): at most
RATELIMIT_LOGIN failures per (email, IP) and per IP, RATELIMIT_LOGIN_EMAIL per email
across IPs, so one IP guessing an admin's password never locks that admin out."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from auth import users
from tests.auth.conftest import EMAIL, ORIGIN, PASSWORD

WRONG = {"email": EMAIL, "password": "not the password 1"}
RIGHT = {"email": EMAIL, "password": PASSWORD}


@pytest.fixture
def test_env(test_env: dict[str, str]) -> dict[str, str]:
    """The production login limits, a small per-email one, and one trusted proxy to name IPs."""
    return {
        **test_env,
        "RATELIMIT_LOGIN": "5/minute",
        "RATELIMIT_LOGIN_EMAIL": "8/hour",
        "TRUSTED_PROXY_COUNT": "1",  # set explicitly: its default is being changed elsewhere
    }


def from_ip(ip: str) -> dict[str, str]:
    """Headers of a same-site request that the one trusted proxy says came from ``ip``."""
    return {"X-Forwarded-For": ip, "Origin": ORIGIN}


def attempt(client: FlaskClient, body: dict[str, str], ip: str) -> Any:
    return client.post("/auth/login", json=body, headers=from_ip(ip))


def statuses(client: FlaskClient, body: dict[str, str], ip: str, times: int) -> list[int]:
    return [attempt(client, body, ip).status_code for _ in range(times)]


def test_successes_are_never_counted(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    assert statuses(client, RIGHT, "203.0.113.1", 12) == [200] * 12


def test_one_ip_guessing_does_not_lock_the_admin_out_of_another(
    app: Flask, admin_user: dict[str, str]
) -> None:
    client = app.test_client()
    hammer = statuses(client, WRONG, "203.0.113.2", 20)
    assert hammer == [401] * 5 + [429] * 15
    # The same email from a fresh IP, with the right password, gets in at once.
    assert attempt(app.test_client(), RIGHT, "198.51.100.2").status_code == 200
    # The guessing IP stays locked out, the right password included.
    assert attempt(client, RIGHT, "203.0.113.2").status_code == 429


def test_over_the_limit_the_answer_is_429_without_checking_the_password(
    app: Flask, admin_user: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    client = app.test_client()
    assert statuses(client, WRONG, "203.0.113.3", 5) == [401] * 5
    checks: list[str] = []
    real = users.authenticate

    def counting(*args: Any, **kwargs: Any) -> Any:
        checks.append(kwargs.get("email", ""))
        return real(*args, **kwargs)

    monkeypatch.setattr(users, "authenticate", counting)
    refused = attempt(client, RIGHT, "203.0.113.3")
    assert refused.status_code == 429
    assert checks == []  # a locked-out guesser learns nothing about the password
    body = refused.get_json()
    assert body["status_code"] == 429 and body["path"] == "/auth/login"
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert body["retry_after"] == int(refused.headers["Retry-After"])


def test_per_ip_limit_holds_across_emails(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    ip = "203.0.113.4"
    guesses = [attempt(client, {"email": f"u{n}@example.com", "password": "x"}, ip) for n in range(5)]
    assert [g.status_code for g in guesses] == [401] * 5
    assert attempt(client, RIGHT, ip).status_code == 429  # this IP has spent its failures
    assert attempt(client, RIGHT, "203.0.113.40").status_code == 200


def test_per_email_limit_across_ips_stops_credential_stuffing(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    # Eight IPs, one failure each: under every per-IP limit, but the email's 8/hour is spent.
    spread = [attempt(client, WRONG, f"192.0.2.{n}").status_code for n in range(8)]
    assert spread == [401] * 8
    assert attempt(client, RIGHT, "192.0.2.100").status_code == 429
    # Another email is untouched.
    other = attempt(client, {"email": "other@example.com", "password": "x"}, "192.0.2.101")
    assert other.status_code == 401


def test_refused_attempts_take_nothing(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    assert statuses(client, WRONG, "203.0.113.5", 5) == [401] * 5
    assert statuses(client, WRONG, "203.0.113.5", 10) == [429] * 10
    # The email's counter holds the 5 failures only: 3 more failures from elsewhere fit.
    assert [attempt(client, WRONG, f"198.51.100.{50 + n}").status_code for n in range(3)] == [401] * 3
    assert attempt(client, RIGHT, "198.51.100.60").status_code == 429


def test_form_logins_share_the_counters(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    ip = "203.0.113.6"
    for _ in range(3):
        assert attempt(client, WRONG, ip).status_code == 401
    form = {**WRONG, "email": " Admin@Example.com "}  # normalized like the JSON one
    for _ in range(2):
        assert client.post("/auth/login", data=form, headers=from_ip(ip)).status_code == 401
    assert attempt(client, RIGHT, ip).status_code == 429


class ReadRecorder(io.BytesIO):
    """A request body that notes whether anyone read it."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, *args: Any) -> bytes:
        self.reads += 1
        return super().read(*args)

    def readline(self, *args: Any) -> bytes:
        self.reads += 1
        return super().readline(*args)

    def readinto(self, buffer: Any) -> int:
        self.reads += 1
        return super().readinto(buffer)


def post_recorded(client: FlaskClient, raw: bytes, ip: str) -> tuple[Any, ReadRecorder]:
    body = ReadRecorder(raw)
    answer = client.post(
        "/auth/login",
        input_stream=body,
        content_type="application/json",
        content_length=len(raw),
        headers=from_ip(ip),
    )
    return answer, body


def test_a_spent_ip_is_refused_before_its_body_is_read(app: Flask, admin_user: dict[str, str]) -> None:
    client = app.test_client()
    ip = "203.0.113.7"
    assert statuses(client, WRONG, ip, 5) == [401] * 5
    raw = b'{"email": "admin@example.com", "password": "x"}'
    answer, body = post_recorded(client, raw, "203.0.113.70")
    assert answer.status_code == 401 and body.reads > 0  # the recorder does see reads
    refused, body = post_recorded(client, raw, ip)
    assert refused.status_code == 429
    assert body.reads == 0


@pytest.mark.parametrize("path", ["/auth/login"])
def test_login_stays_closed_when_redis_is_down(
    test_env: dict[str, str], admin_user: dict[str, str], path: str, make_stopped: Callable[..., Flask]
) -> None:
    client = make_stopped().test_client()
    answer = client.post(path, json=RIGHT, headers=from_ip("203.0.113.8"))
    assert answer.status_code == 503
    assert answer.get_json()["status_code"] == 503
    assert answer.headers["Retry-After"] == "1"


@pytest.fixture
def make_stopped(test_env: dict[str, str], tmp_path: Any) -> Any:
    """An app whose Redis (its own server) has been stopped, failing open for other limits."""
    from devtools.redis_server import RedisServer
    from gateway import create_app

    server = RedisServer(tmp_path / "stopped-redis")
    server.start()
    url = server.url
    server.stop()

    def make() -> Flask:
        return create_app({**test_env, "REDIS_URL": url, "RATELIMIT_FAIL_OPEN": "true"})

    return make
