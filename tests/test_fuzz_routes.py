"""Property-based fuzzing of every route in the URL map (issue 10 item 15), in-process, real Redis.

For each (rule, method) of ``app.url_map``, Hypothesis sends hostile requests:
bodies that are deep, huge, NaN-bearing, surrogate-bearing or of the wrong type,
bodies shaped like the route's own model with hostile values, raw bytes, odd
query strings, path parameters, Content-Types, Content-Lengths, X-Request-IDs
and Idempotency-Keys; once with a key holding every scope and once without.
Every answer must be under 500; every non-2xx JSON answer must carry the
error shape; JSON answers must be standard JSON; no log record may carry a
traceback. Runs are derandomized, with no example database, and bounded by
``max_examples`` per route, so CI sees the same cases every time.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from auth.scopes import ALL_SCOPES
from core.schemas import endpoint_spec

EXAMPLES_PER_ROUTE = 25
ERROR_FIELDS = {"error", "status_code", "message", "path"}
SKIPPED_METHODS = {"HEAD", "OPTIONS"}
_PARAM = re.compile(r"<(?:(?P<converter>\w+)(?:\([^)]*\))?:)?(?P<name>\w+)>")
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES_PER_ROUTE,
    deadline=None,  # wall-clock limits flake on a shared 2-core machine; max_examples bounds the cost
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

# --- bodies -------------------------------------------------------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),  # json.dumps writes NaN / Infinity literals
    st.text(max_size=40),
    st.sampled_from(["", " ", "user", "agent.run", "events:read", "100/minute", "2024-05-01T00:00:00Z"]),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)


def _nested(depth: int, as_object: bool) -> str:
    return '{"a":' * depth + "1" + "}" * depth if as_object else "[" * depth + "]" * depth


# One branch per class of hostile JSON, so each is drawn often (one_of picks branches evenly).
_hostile_fragments = st.one_of(
    # Past the interpreter's recursion limit (where json raises RecursionError), and past the cap.
    # Deepest first: Hypothesis favours a list's first entries and an integer range's low end.
    st.builds(_nested, st.sampled_from([5000, 1200, 65]), st.booleans()),
    st.sampled_from(['"\\ud800"', '"a\\udfff"', '"\\udc00\\ud800"', '{"\\ud800": 1}']),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]),
    st.sampled_from(["9" * 5000, "-0", "1.0e-400", "1" + "0" * 400, '"' + "x" * 5000 + '"', '"\\u0000"']),
)


def _with_fragment(mapping: dict[str, Any], key: str, fragment: str) -> str:
    """``mapping`` as JSON with member ``key`` set to a raw hostile fragment."""
    marker = "__fuzz_fragment__"
    return json.dumps({**mapping, key: marker}).replace(json.dumps(marker), fragment, 1)


def _model_fields(rule_endpoint: Callable[..., Any] | None, part: str) -> list[str]:
    spec = endpoint_spec(rule_endpoint) if rule_endpoint else None
    model = getattr(spec, part, None) if spec else None
    return list(model.model_fields) if model is not None else []


def _bodies(fields: list[str]) -> st.SearchStrategy[bytes]:
    known = st.sampled_from(fields or ["name"])
    shaped = st.dictionaries(known | st.text(max_size=12), _json_values, min_size=1, max_size=len(fields) + 2)
    # The hostile value goes into one of the route's own fields, so it travels past the parser.
    hostile = st.builds(_with_fragment, shaped, known, _hostile_fragments) | _hostile_fragments
    plain = shaped.map(json.dumps) | _json_values.map(json.dumps) | st.text(max_size=60)
    as_text = hostile | plain
    utf8 = as_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
    odd_bytes = st.binary(max_size=80) | st.just(b"") | as_text.map(lambda text: text.encode("utf-16"))
    return st.one_of(utf8, utf8, odd_bytes)


# --- query, path, headers -----------------------------------------------------------------------


def _queries(fields: list[str]) -> st.SearchStrategy[str]:
    names = st.sampled_from([*fields, "after", "limit", "owner", "session_id", "ticket", "days"])
    values = st.one_of(
        st.text(max_size=30),
        st.integers(min_value=-(2**70), max_value=2**70).map(str),
        st.sampled_from(["NaN", "1e999", "-1", "0", "1700000000000-0", "%ff", "\x00"]),
    )
    pairs = st.lists(st.tuples(names | st.text(max_size=8), values), max_size=4)
    raw = st.sampled_from(["%", "%zz", "a=%ff%fe", "=&=&", "a" * 3000, ";;", "a[]=1&a[]=2"])
    return pairs.map(urlencode) | raw


_path_values = st.one_of(
    st.text(min_size=1, max_size=40),
    st.sampled_from(["key_0000000000000000", "..", "%2e%2e", "a" * 2000, "0", "-1", "admin@example.com"]),
)
# Header values as a WSGI server hands them over: latin-1 text, no line breaks.
_header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF) | st.just("\t"), max_size=160)
_content_types = st.sampled_from(
    [
        None,
        "application/json",
        "application/json; charset=utf-8",
        "application/json; charset=utf-16",
        "application/merge-patch+json",
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data",
        "multipart/form-data; boundary=x",
        "application/json\x7f",
        "",
    ]
)


@st.composite
def _headers(draw: st.DrawFn, body: bytes) -> dict[str, str]:
    environ: dict[str, str] = {}
    # Mostly a well-formed JSON request, so that hostile bodies reach the parser and the views.
    content_type = draw(st.just("application/json") | _content_types)
    if content_type is not None:
        environ["CONTENT_TYPE"] = content_type
    odd_lengths = st.sampled_from(["0", "-1", "abc", str(len(body) + 10), str(max(len(body) - 1, 0))])
    length = draw(st.none() | st.none() | odd_lengths)
    if length is not None:
        environ["CONTENT_LENGTH"] = length
    for name in ("HTTP_X_REQUEST_ID", "HTTP_IDEMPOTENCY_KEY", "HTTP_ORIGIN", "HTTP_LAST_EVENT_ID"):
        if draw(st.booleans()):
            environ[name] = draw(_header_text)
    return environ


# --- the run ------------------------------------------------------------------------------------


def _routes(app: Flask) -> list[tuple[str, str, str]]:
    """(rule, method, endpoint) for every rule and method a client can call."""
    return sorted(
        (rule.rule, method, rule.endpoint)
        for rule in app.url_map.iter_rules()
        for method in (rule.methods or set()) - SKIPPED_METHODS
    )


def _path(rule: str, values: dict[str, str]) -> str:
    return _PARAM.sub(lambda m: quote(values[m.group("name")], safe=""), rule)


def _assert_sound(answer: Any, where: str) -> None:
    status = answer.status_code
    assert status < 500, f"{where}: {status} {answer.get_data()[:500]!r}"
    data = answer.get_data()
    assert b"Traceback" not in data, where
    if not (answer.mimetype or "").endswith("json") or not data:
        return
    # Standard JSON only: NaN / Infinity would be refused by every strict consumer.
    body = json.loads(data, parse_constant=lambda name: pytest.fail(f"{where}: served {name}"))
    if status >= 300:
        assert isinstance(body, dict) and set(body) >= ERROR_FIELDS, f"{where}: {body!r}"
        assert body["status_code"] == status, where


def _assert_quiet_logs(caplog: pytest.LogCaptureFixture, where: str) -> None:
    bad = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    caplog.clear()
    assert not bad, f"{where}: {bad[0].getMessage()}"


def _fuzz_route(
    client: FlaskClient, caplog: pytest.LogCaptureFixture, route: tuple[str, str, str], auth: dict[str, str]
) -> None:
    rule, method, endpoint = route
    view = client.application.view_functions.get(endpoint)
    params = [m.group("name") for m in _PARAM.finditer(rule)]
    path_values = st.fixed_dictionaries(dict.fromkeys(params, _path_values))
    bodies = _bodies(_model_fields(view, "body"))

    @FUZZ_SETTINGS
    @given(values=path_values, query=_queries(_model_fields(view, "query")), data=st.data())
    def run(values: dict[str, str], query: str, data: st.DataObject) -> None:
        body = data.draw(bodies) if method not in ("GET", "DELETE") or data.draw(st.booleans()) else b""
        environ = data.draw(_headers(body))
        path = _path(rule, values)
        where = f"{method} {path}?{query[:80]} {environ} body={body[:120]!r}"
        caplog.clear()  # records of an earlier, failed example are not this one's
        answer = client.open(
            path, method=method, query_string=query, data=body, headers=auth, environ_overrides=environ
        )
        _assert_sound(answer, where)
        answer.close()
        _assert_quiet_logs(caplog, where)

    run()


@pytest.fixture
def test_env(test_env: dict[str, str]) -> dict[str, str]:
    # The run is about answers, not throttling: limits far above what it sends (429 is tested elsewhere).
    limits = {"RATELIMIT_DEFAULT": "1000000/minute", "RATELIMIT_ANONYMOUS": "1000000/minute"}
    return {**test_env, **limits, "RATELIMIT_LOGIN": "1000000/minute"}


@pytest.mark.parametrize("authenticated", [True, False], ids=["all-scopes key", "anonymous"])
def test_every_route_survives_hostile_requests(
    app: Flask,
    client: FlaskClient,
    make_key: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
    authenticated: bool,
) -> None:
    caplog.set_level(logging.WARNING)
    auth = {"Authorization": f"Bearer {make_key(scopes=ALL_SCOPES, rate_limit='1000000/minute')}"}
    routes = _routes(app)
    assert len(routes) > 30 and any(method == "POST" for _, method, _ in routes)
    for route in routes:
        _fuzz_route(client, caplog, route, auth if authenticated else {})
