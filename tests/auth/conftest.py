"""Fixtures for the identity tests: generous limits (D's suite tests the limits) and an admin user."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import users

ORIGIN = "http://localhost"  # the Flask test client's host_url
EMAIL = "admin@example.com"
PASSWORD = "correct horse battery staple 9"


@pytest.fixture
def test_env(test_env: dict[str, str]) -> dict[str, str]:
    """Limits high enough that the auth matrix never meets a 429."""
    return {
        **test_env,
        "RATELIMIT_ANONYMOUS": "100000/minute",
        "RATELIMIT_DEFAULT": "100000/minute",
        "RATELIMIT_LOGIN": "100000/minute",
        "RATELIMIT_LOGIN_EMAIL": "100000/minute",
    }


@pytest.fixture
def admin_user(r: redis.Redis) -> dict[str, str]:
    users.create_user(r, email=EMAIL, password=PASSWORD)
    return {"email": EMAIL, "password": PASSWORD}


@pytest.fixture
def login(app: Flask, admin_user: dict[str, str]) -> Callable[..., FlaskClient]:
    """``login()`` -> a test client holding a fresh admin session cookie."""

    def log_in(client: FlaskClient | None = None) -> FlaskClient:
        client = client or app.test_client()
        response = client.post("/auth/login", json=admin_user, headers={"Origin": ORIGIN})
        assert response.status_code == 200, response.get_json()
        return client

    return log_in
