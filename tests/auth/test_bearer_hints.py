"""RFC 6750 hints on 401s (CONTRACT section 3): the challenge, and whether a key was seen at all."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask

from auth import keys
from auth.loaders import pepper

CHALLENGE = 'Bearer realm="gateway"'
INVALID_TOKEN = f'{CHALLENGE}, error="invalid_token"'


@pytest.fixture
def invalid_keys(app: Flask, r: redis.Redis, make_key: Callable[..., str]) -> dict[str, str]:
    revoked = make_key(name="revoked")
    keys.revoke_key(r, keys.lookup(r, revoked, pepper=pepper(app))["id"])
    return {
        "unknown": keys.generate_secret(),
        "revoked": revoked,
        "expired": make_key(name="expired", expires_in_days=-1),
        "malformed": "rgw_not-a-key",
    }


def test_no_credentials_get_the_bare_challenge(app: Flask) -> None:
    answer = app.test_client().get("/auth/me")
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"] == CHALLENGE
    assert "send an API key" in answer.get_json()["message"]


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key"])
def test_every_invalid_key_gets_one_answer_with_invalid_token(
    app: Flask, invalid_keys: dict[str, str], header: str
) -> None:
    client = app.test_client()
    answers = set()
    for secret in invalid_keys.values():
        value = f"Bearer {secret}" if header == "Authorization" else secret
        answer = client.get("/jobs", headers={header: value})
        assert answer.status_code == 401
        body = answer.get_json()
        answers.add((answer.headers["WWW-Authenticate"], body["error"], body["message"]))
    assert len(answers) == 1, answers  # unknown, revoked, expired and malformed are alike
    challenge, _, message = answers.pop()
    assert challenge == INVALID_TOKEN
    assert "key presented is not valid" in message
