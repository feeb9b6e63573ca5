"""Client-controlled echoes and ids (issue 11 item 7): quoted input is bounded, request ids are plain."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from flask.testing import FlaskClient

from auth import users
from core.echo import ECHO_LIMIT, MARKER, clip

LONG = "z" * 5000
HEADER = "X-Request-ID"


@pytest.fixture
def admin(auth_headers: Callable[..., dict[str, str]]) -> dict[str, str]:
    return auth_headers()


def _assert_bounded_echo(answer, needle: str = "z") -> None:  # type: ignore[no-untyped-def]
    assert answer.status_code == 400, answer.get_data(as_text=True)
    body = answer.get_json()
    for field in ("error", "message"):
        assert needle * (ECHO_LIMIT + 1) not in body[field], body[field][:300]
    assert needle * ECHO_LIMIT + MARKER in body["error"] + body["message"]


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/jobs", {"name": "z" * 100, "args": {}}),  # the longest name that reaches the registry
        ("/jobs", {"name": "agent.run", "args": {"prompt": "hi", LONG: 1}}),
        ("/admin/keys", {"name": "k", "scopes": [LONG]}),
        ("/admin/keys", {"name": "k", "scopes": ["events:read"], "rate_limit": LONG}),
    ],
    ids=["unknown job", "unknown job argument", "unknown scope", "bad rate limit"],
)
def test_quoted_input_is_cut_short(
    client: FlaskClient, admin: dict[str, str], path: str, body: object
) -> None:
    _assert_bounded_echo(client.post(path, json=body, headers=admin))


def test_clip_keeps_short_text_and_marks_cuts() -> None:
    assert clip("short") == "short"
    assert clip("a" * ECHO_LIMIT) == "a" * ECHO_LIMIT
    assert clip("a" * (ECHO_LIMIT + 1)) == "a" * ECHO_LIMIT + MARKER
    assert clip(12345, limit=3) == "123" + MARKER


@pytest.mark.parametrize(
    "offered",
    ["abc", "A-Z.a_z-09", "a" * 128, "0f8fad5b-d9cb-469f-a165-70867728950e", "trace.1_2-3"],
)
def test_plain_request_ids_are_kept(client: FlaskClient, offered: str) -> None:
    assert client.get("/healthz", headers={HEADER: offered}).headers[HEADER] == offered


@pytest.mark.parametrize(
    "offered",
    [
        "a" * 129,
        "abc:def",  # colons are outside the contract's alphabet
        "abc def",
        "abc/../x",
        "id;drop",
        "é",
        "abc\n",  # `$` matched before a trailing newline: it would have been echoed into a header
        "",
    ],
)
def test_other_request_ids_are_replaced(client: FlaskClient, offered: str) -> None:
    answer = client.get("/healthz", environ_overrides={"HTTP_X_REQUEST_ID": offered})
    assert answer.status_code == 200
    made = answer.headers[HEADER]
    assert made != offered
    assert len(made) == 32 and all(c in "0123456789abcdef" for c in made)


def test_a_hostile_email_is_quoted_short() -> None:
    """An operator's typo may be a pasted megabyte: the CLI and API message quote a short prefix."""
    with pytest.raises(ValueError, match="is not an email address") as caught:
        users.validate_email("z" * 5000)
    assert len(str(caught.value)) < 120
