"""Hostile JSON bodies: strict RFC 8259 in one parser, 400 in the error shape; nothing odd kept or served."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from auth import public, users
from core.strict_json import MAX_JSON_DEPTH

ERROR_FIELDS = {"error", "status_code", "message", "path"}
JSON = "application/json"
PASSWORD = "correct horse battery staple 9"
DEEP = "[" * 5000 + "]" * 5000
DEEP_OBJECT = '{"a":' * 5000 + "1" + "}" * 5000

# (route, a valid body the hostile value is put into, the field that gets it)
JSON_ROUTES = [
    ("/auth/login", {"email": "a@example.com", "password": "pw"}, "email"),
    ("/agents/message", {"session_id": "s", "role": "user", "content": "hi"}, "content"),
    ("/events", {"event_type": "t", "data": {}}, "event_type"),
    ("/jobs", {"name": "agent.run", "args": {}}, "name"),
    ("/admin/keys", {"name": "k", "scopes": ["events:read"]}, "name"),
    ("/admin/keys/key_0000000000000000/rotate", {"grace_seconds": 0}, "grace_seconds"),
]

HOSTILE = {
    "deep array": DEEP,
    "deep object": DEEP_OBJECT,
    "just over the depth cap": "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1),
    "NaN": '{"x": NaN}',
    "Infinity": '{"x": Infinity}',
    "-Infinity": '{"x": -Infinity}',
    "overflowing float": '{"x": 1e999}',
    "lone high surrogate": '{"x": "\\ud800"}',
    "lone low surrogate": '{"x": "\\udfff"}',
    "reversed pair": '{"x": "\\udc00\\ud800"}',
    "surrogate in a key": '{"\\ud800": 1}',
    "raw surrogate bytes": b'{"x": "\xed\xa0\x80"}',
    "invalid utf-8": b'{"x": "\xff"}',
    "utf-16 body": '{"x": 1}'.encode("utf-16"),
    "duplicate keys": '{"x": 1, "x": 2}',
    "trailing garbage": '{"x": 1} x',
    "huge integer": '{"x": ' + "9" * 5000 + "}",
    "top-level array": "[1, 2]",
    "top-level string": '"x"',
    "top-level number": "7",
    "top-level null": "null",
    "single quotes": "{'x': 1}",
    "comment": '{"x": 1 /* c */}',
    "bom": b'\xef\xbb\xbf{"x": 1}',
}


def _with_field(base: dict[str, object], field: str, raw_value: str) -> str:
    """``base`` as JSON text with ``field`` set to the raw JSON ``raw_value``."""
    marker = "__HOSTILE__"
    return json.dumps({**base, field: marker}).replace(json.dumps(marker), raw_value)


def _assert_error_shape(answer, status: int = 400) -> None:  # type: ignore[no-untyped-def]
    assert answer.status_code == status, answer.get_data(as_text=True)
    body = answer.get_json()
    assert set(body) >= ERROR_FIELDS, body
    assert body["status_code"] == status
    assert "Traceback" not in answer.get_data(as_text=True)


@pytest.fixture
def test_env(test_env: dict[str, str]) -> dict[str, str]:
    # Hostile bodies are sent in bulk; the login limit (tested elsewhere) would answer 429 first.
    return {**test_env, "RATELIMIT_LOGIN": "100000/minute", "RATELIMIT_ANONYMOUS": "100000/minute"}


@pytest.fixture
def admin(auth_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_headers()


@pytest.mark.parametrize("name", list(HOSTILE))
@pytest.mark.parametrize(("path", "base", "field"), JSON_ROUTES, ids=[p for p, _, _ in JSON_ROUTES])
def test_hostile_bodies_answer_400(
    client: FlaskClient,
    admin: dict[str, str],
    caplog: pytest.LogCaptureFixture,
    path: str,
    base: dict[str, object],
    field: str,
    name: str,
) -> None:
    caplog.set_level(logging.INFO)
    answer = client.post(path, data=HOSTILE[name], content_type=JSON, headers=admin)
    _assert_error_shape(answer)
    assert "Traceback" not in caplog.text
    assert not [record for record in caplog.records if record.exc_info]


@pytest.mark.parametrize("raw_value", ["NaN", "Infinity", "1e400", '"\\ud800"', DEEP])
@pytest.mark.parametrize(("path", "base", "field"), JSON_ROUTES, ids=[p for p, _, _ in JSON_ROUTES])
def test_hostile_values_inside_valid_bodies_answer_400(
    client: FlaskClient, admin: dict[str, str], path: str, base: dict[str, object], field: str, raw_value: str
) -> None:
    body = _with_field(base, field, raw_value)
    _assert_error_shape(client.post(path, data=body, content_type=JSON, headers=admin))


def test_hostile_login_before_authentication(client: FlaskClient) -> None:
    """No credentials at all: the public login route must not 500 on any of them."""
    for name, body in HOSTILE.items():
        answer = client.post("/auth/login", data=body, content_type=JSON)
        assert answer.status_code == 400, name
        _assert_error_shape(answer)


def test_surrogate_in_login_email_is_400_not_500(client: FlaskClient, r: redis.Redis) -> None:
    users.create_user(r, email="admin@example.com", password=PASSWORD)
    body = '{"email": "admin\\ud800@example.com", "password": "correct horse battery staple 9"}'
    _assert_error_shape(client.post("/auth/login", data=body, content_type=JSON))


def test_nan_never_reaches_the_event_stream(client: FlaskClient, admin: dict[str, str]) -> None:
    for raw in ('{"event_type": "t", "data": {"x": NaN}}', '{"event_type": "t", "data": {"x": 1e999}}'):
        _assert_error_shape(client.post("/events", data=raw, content_type=JSON, headers=admin))
    listed = client.get("/events", headers=admin)
    assert listed.status_code == 200
    assert listed.get_json()["events"] == []


def test_valid_bodies_within_the_cap_still_work(client: FlaskClient, admin: dict[str, str]) -> None:
    nested: object = {}
    for _ in range(MAX_JSON_DEPTH - 3):  # event body + data + the innermost object
        nested = {"n": nested}
    body = {"event_type": "deep", "data": {"n": nested, "pair": "\U0001f600", "escaped": "é"}}
    text = json.dumps(body).replace("\\ud83d\\ude00", "\\uD83D\\uDE00")  # a valid escaped pair
    answer = client.post("/events", data=text, content_type=JSON, headers=admin)
    assert answer.status_code == 201, answer.get_json()
    # The list wraps the event three levels deeper than the cap on requests: read with plain json.
    served = json.loads(client.get("/events", headers=admin).get_data())["events"][0]["data"]
    assert served["pair"] == "\U0001f600" and served["escaped"] == "é"


def test_answers_never_carry_nan(app: Flask) -> None:
    """The JSON provider refuses NaN on output; a view that tried would get a clean 500 shape."""

    @app.get("/_probe/nan")
    @public
    def nan_probe() -> object:
        return {"x": math.nan}

    app.config["PROPAGATE_EXCEPTIONS"] = False
    answer = app.test_client().get("/_probe/nan")
    assert b"NaN" not in answer.get_data()
    _assert_error_shape(answer, 500)
    with app.test_request_context(), pytest.raises(ValueError):
        app.json.dumps({"x": math.inf})


def test_form_login_is_unaffected(client: FlaskClient, r: redis.Redis) -> None:
    users.create_user(r, email="admin@example.com", password=PASSWORD)
    answer = client.post("/auth/login", data={"email": "admin@example.com", "password": PASSWORD})
    assert answer.status_code == 200
