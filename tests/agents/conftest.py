"""Fixtures of the agents tests: apps with extra settings, sessions with messages."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import keys
from auth.loaders import pepper
from gateway import create_app
from gateway.agents.backends import clear_backends


@pytest.fixture(autouse=True)
def _fresh_backends() -> Iterator[None]:
    """Each test gets new backends, so no circuit breaker state leaks between tests."""
    clear_backends()
    yield
    clear_backends()


@pytest.fixture
def make_app(test_env: dict[str, str], r: redis.Redis) -> Callable[..., Flask]:
    """``make_app(AGENT_BUILTIN_DELAY_MS="50", ...)``: a testing app with extra settings."""

    def make(**env: str) -> Flask:
        return create_app({**test_env, **env})

    return make


@pytest.fixture
def key_id(app: Flask, r: redis.Redis) -> Callable[[dict[str, str]], str]:
    """The stored id of the key in ``headers``."""

    def find(headers: dict[str, str]) -> str:
        secret = headers["Authorization"].removeprefix("Bearer ")
        record = keys.lookup(r, secret, pepper(app))
        assert record is not None
        return str(record["id"])

    return find


@pytest.fixture
def new_session() -> Callable[..., str]:
    """``new_session(client, headers, "first message", ...)``: a session holding those user messages."""

    def make(client: FlaskClient, headers: dict[str, str], *contents: str) -> str:
        response = client.post("/agents/session", headers=headers)
        assert response.status_code == 201
        session_id: str = response.get_json()["session_id"]
        for content in contents:
            body: dict[str, Any] = {"session_id": session_id, "role": "user", "content": content}
            assert client.post("/agents/message", headers=headers, json=body).status_code == 200
        return session_id

    return make
