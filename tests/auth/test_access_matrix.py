"""Every protected route x every kind of credential, through real gunicorn workers,
and deny by default: every route off the contract's public list needs credentials.

The routes come from the live ``app.url_map``, so a route added later is covered
without touching this file; the scopes come from CONTRACT section 3, not from the
code, so a view declaring the wrong scope fails here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from werkzeug.routing import Rule

from auth import keys
from auth.scopes import ADMIN, ALL_SCOPES
from devtools.gunicorn import GunicornServer

# CONTRACT section 3: public routes.
PUBLIC_PATHS = frozenset(
    {"/health", "/healthz", "/readyz", "/", "/docs", "/openapi.json", "/command-center",
     "/control-center", "/dashboard", "/favicon.ico", "/auth/login"}
)  # fmt: skip
# CONTRACT section 7, "/admin/: server-rendered pages to log in": the console's login page and
# its assets are open; its other pages answer a visitor without a session with the login page.
CONSOLE_PUBLIC = frozenset({"console.login_form", "console.login", "console.static"})
CONSOLE_LOGIN = "/admin/login"
ANY_IDENTITY = ""
# CONTRACT section 3: (method, rule) -> scope ("" = any identity); "/admin/..." needs admin.
CONTRACT_SCOPES = {
    ("GET", "/auth/me"): ANY_IDENTITY,
    ("GET", "/auth/usage"): ANY_IDENTITY,  # section 8: its own usage
    ("POST", "/auth/logout"): ANY_IDENTITY,
    ("POST", "/agents/session"): "agents:write",
    ("POST", "/agents/message"): "agents:write",
    ("GET", "/agents/stream"): "agents:write",
    ("POST", "/agents/stream/ticket"): "agents:write",  # section 8
    ("GET", "/agents/sessions"): "agents:read",
    ("GET", "/agents/session/<session_id>/messages"): "agents:read",
    ("GET", "/jobs"): "jobs:read",
    ("GET", "/jobs/<job_id>"): "jobs:read",
    ("POST", "/jobs"): "jobs:write",
    ("DELETE", "/jobs/<job_id>"): "jobs:write",
    ("POST", "/events"): "events:write",
    ("GET", "/events"): "events:read",
    ("GET", "/metrics"): "metrics:read",
    ("GET", "/metrics/prometheus"): "metrics:read",
}
CASES = ("none", "malformed", "unknown", "revoked", "expired", "query", "wrong_scope", "right_scope")


def is_public(rule: Rule) -> bool:
    return rule.rule in PUBLIC_PATHS or rule.endpoint in CONSOLE_PUBLIC


def required_scope(method: str, rule: Rule) -> str:
    """The contract's scope; a route the contract does not list is admin-only (deny by default)."""
    if rule.rule.startswith("/admin"):
        return ADMIN
    return CONTRACT_SCOPES.get((method, re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"<\1>", rule.rule)), ADMIN)


def protected_routes(app: Flask) -> Iterator[tuple[str, str, Rule]]:
    """(method, concrete path, rule) for every protected method of every rule."""
    for rule in sorted(app.url_map.iter_rules(), key=lambda rl: rl.rule):
        if is_public(rule):
            continue
        path = re.sub(r"<[^>]+>", "x0", rule.rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            yield method, path, rule


# RFC 6750: every 401 carries the Bearer challenge; a presented key that is not valid adds
# error="invalid_token", the same header and message for each way a key can be invalid.
CHALLENGE = 'Bearer realm="gateway"'
INVALID_TOKEN = f'{CHALLENGE}, error="invalid_token"'
PRESENTED = frozenset({"malformed", "unknown", "revoked", "expired"})
INVALID_KEY_MESSAGE = "The API key presented is not valid: it is unknown, revoked, expired or malformed."


def _denied(response: requests.Response | object, rule: Rule, case: str = "none") -> str | None:
    """None when the answer is the contract's refusal for a caller without valid credentials."""
    status = response.status_code  # type: ignore[attr-defined]
    headers = response.headers  # type: ignore[attr-defined]
    if rule.endpoint.startswith("console."):
        ok = status == 303 and headers["Location"].endswith(CONSOLE_LOGIN)
        return None if ok else f"{status} (console pages send visitors to the login page)"
    expected = INVALID_TOKEN if case in PRESENTED else CHALLENGE
    if status != 401 or headers.get("WWW-Authenticate") != expected:
        return f"{status} {headers.get('WWW-Authenticate')}"
    body = response.json  # type: ignore[attr-defined]
    message = (body() if callable(body) else body)["message"]  # requests' method, Flask's property
    if (message == INVALID_KEY_MESSAGE) != (case in PRESENTED):
        return f"the message does not say whether a key was seen: {message}"
    return None


def test_deny_by_default_every_non_public_route_needs_credentials(app: Flask) -> None:
    client = app.test_client()
    failures = []
    for method, path, rule in protected_routes(app):
        response = client.open(path, method=method, json={} if method != "GET" else None)
        problem = _denied(response, rule)
        if problem:
            failures.append(f"{method} {path}: {problem}")
        elif response.status_code == 401:
            assert response.get_json()["status_code"] == 401
    assert not failures, failures
    assert sum(1 for _ in protected_routes(app)) >= 10  # the walk really found the routes


@pytest.fixture
def credentials(make_key: Callable[..., str], r: redis.Redis, app: Flask) -> dict[str, str]:
    revoked = make_key(scopes=ALL_SCOPES, name="revoked")
    keys.revoke_key(r, keys.lookup(r, revoked, pepper=_pepper(app))["id"])
    return {
        "admin": make_key(scopes=[ADMIN], name="admin"),
        "revoked": revoked,
        "expired": make_key(scopes=ALL_SCOPES, name="expired", expires_in_days=-1),
        "unknown": keys.generate_secret(),
    }


def _pepper(app: Flask) -> bytes:
    from auth.loaders import pepper

    return pepper(app)


def _request_for(
    case: str, scope: str, creds: dict[str, str], make_key: Callable[..., str]
) -> dict[str, object]:
    """requests.request() keyword arguments for one case of the matrix."""
    bearer = {
        "malformed": "not-a-gateway-key",
        "unknown": creds["unknown"],
        "revoked": creds["revoked"],
        "expired": creds["expired"],
    }
    if case in bearer:
        return {"headers": {"Authorization": f"Bearer {bearer[case]}"}}
    if case == "query":
        key = creds["admin"]
        return {"params": {"api_key": key, "key": key, "access_token": key, "session_id": "x0"}}
    if case == "wrong_scope":
        others = [s for s in ALL_SCOPES if s not in (scope, ADMIN)]
        return {"headers": {"X-API-Key": make_key(scopes=others, name="wrong")}}
    if case == "right_scope":
        return {"headers": {"X-API-Key": make_key(scopes=[scope] if scope else [], name="right")}}
    return {}


@pytest.mark.gunicorn
def test_matrix_through_gunicorn(
    app: Flask,
    gunicorn: Callable[..., GunicornServer],
    make_key: Callable[..., str],
    credentials: dict[str, str],
    tmp_path: Path,
) -> None:
    server = gunicorn(workers=2)
    http = requests.Session()
    failures: list[str] = []
    checked = 0
    for method, path, rule in protected_routes(app):
        scope = required_scope(method, rule)
        for case in CASES:
            if case == "wrong_scope" and scope == ANY_IDENTITY:
                continue  # any identity may call it: there is no wrong scope
            kwargs = _request_for(case, scope, credentials, make_key)
            body = {"json": {}} if method != "GET" else {}
            response = http.request(
                method,
                server.url + path,
                timeout=10,
                allow_redirects=False,
                **kwargs,
                **body,  # type: ignore[arg-type]
            )
            checked += 1
            if "Set-Cookie" in response.headers:
                failures.append(f"{case} {method} {path}: API request got a cookie")
            if case == "right_scope":
                if response.status_code in (401, 403) or response.status_code >= 500:
                    failures.append(f"{case} {method} {path}: {response.status_code} {response.text[:120]}")
            elif case == "wrong_scope":
                if response.status_code != 403:
                    failures.append(f"{case} {method} {path}: {response.status_code}")
            elif problem := _denied(response, rule, case):
                failures.append(f"{case} {method} {path}: {problem}")
    server.stop()
    assert not failures, "\n".join(failures)
    assert checked >= 80
    log = (tmp_path / "gunicorn-0.log").read_text()
    for secret in credentials.values():
        assert secret not in log
