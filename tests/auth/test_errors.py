"""auth's refusals become the contract's errors in one place: status, JSON shape, headers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask import Flask

from auth import public
from auth.errors import (
    CREDENTIALS_NEEDED,
    INVALID_KEY,
    AuthError,
    CrossSiteRefused,
    Forbidden,
    Unauthenticated,
)
from gateway import create_app

ORIGIN = "https://app.example"
CHALLENGE = 'Bearer realm="gateway"'
INVALID_TOKEN = f'{CHALLENGE}, error="invalid_token"'

# (refusal, status, error, message, WWW-Authenticate or None)
CASES: dict[str, tuple[Callable[[], AuthError], int, str, str, str | None]] = {
    "unauthenticated": (Unauthenticated, 401, "Unauthorized", CREDENTIALS_NEEDED, CHALLENGE),
    "invalid-key": (
        lambda: Unauthenticated(key_presented=True),
        401,
        "Unauthorized",
        INVALID_KEY,
        INVALID_TOKEN,
    ),
    "forbidden": (lambda: Forbidden("Needs more."), 403, "Forbidden", "Needs more.", None),
    "forbidden-default": (
        Forbidden,
        403,
        "Forbidden",
        "The credentials given do not allow this request.",
        None,
    ),
    "cross-site": (lambda: CrossSiteRefused("Not from here."), 403, "Forbidden", "Not from here.", None),
}


@pytest.fixture
def app(test_env: dict[str, str]) -> Flask:
    app = create_app({**test_env, "CORS_ORIGINS": ORIGIN})
    for name, (refusal, *_) in CASES.items():

        def refuse(refusal: Callable[[], AuthError] = refusal) -> None:
            raise refusal()

        app.add_url_rule(f"/_refuse/{name}", f"refuse_{name}", public(refuse))
    return app


@pytest.mark.parametrize("name", list(CASES))
def test_each_refusal_has_its_status_json_shape_and_headers(app: Flask, name: str) -> None:
    _, status, error, message, challenge = CASES[name]
    answer = app.test_client().get(f"/_refuse/{name}", headers={"Origin": ORIGIN})
    assert answer.status_code == status and answer.mimetype == "application/json"
    assert answer.get_json() == {
        "error": error,
        "status_code": status,
        "message": message,
        "path": f"/_refuse/{name}",
    }
    assert answer.headers.get("WWW-Authenticate") == challenge
    # Browsers must be able to read the refusal, and it keeps the security headers.
    assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert answer.headers["X-Content-Type-Options"] == "nosniff"


def test_the_guard_raises_them_for_real_requests(app: Flask, make_key: Callable[..., str]) -> None:
    client = app.test_client()
    assert client.get("/jobs").headers["WWW-Authenticate"] == CHALLENGE
    assert client.get("/jobs", headers={"X-API-Key": "rgw_nope"}).headers["WWW-Authenticate"] == INVALID_TOKEN
    scoped = client.get("/jobs", headers={"X-API-Key": make_key(scopes=["events:read"])})
    assert scoped.status_code == 403
    assert scoped.get_json()["message"] == "This request needs the 'jobs:read' scope."
    assert "WWW-Authenticate" not in scoped.headers
