"""/openapi.json: generated from the URL map, the @endpoint models and the access markers.

The contract-route tests are the drift alarm: a route of CONTRACT section 7 that
is missing from the document, or whose view has no @endpoint declaration, fails here.
"""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from flask import Flask
from flask.testing import FlaskClient
from openapi_spec_validator import validate as validate_openapi

from core.schemas import endpoint_spec
from gateway import create_app
from gateway.openapi import CACHE_KEY, RATE_LIMIT_HEADERS

ANY = "any identity"
PUBLIC = "public"
# (method, path, access) for every route of CONTRACT sections 3 and 7.
CONTRACT_ROUTES: list[tuple[str, str, str]] = [
    ("get", "/healthz", PUBLIC),
    ("get", "/health", PUBLIC),
    ("get", "/readyz", PUBLIC),
    ("get", "/", PUBLIC),
    ("get", "/docs", PUBLIC),
    ("get", "/openapi.json", PUBLIC),
    ("get", "/command-center", PUBLIC),
    ("get", "/control-center", PUBLIC),
    ("get", "/dashboard", PUBLIC),
    ("get", "/favicon.ico", PUBLIC),
    ("post", "/auth/login", PUBLIC),
    ("get", "/auth/me", ANY),
    ("post", "/auth/logout", ANY),
    ("post", "/agents/session", "agents:write"),
    ("post", "/agents/message", "agents:write"),
    ("get", "/agents/stream", "agents:write"),
    ("get", "/agents/sessions", "agents:read"),
    ("get", "/agents/session/{}/messages", "agents:read"),
    ("get", "/jobs", "jobs:read"),
    ("get", "/jobs/{}", "jobs:read"),
    ("post", "/jobs", "jobs:write"),
    ("delete", "/jobs/{}", "jobs:write"),
    ("post", "/events", "events:write"),
    ("get", "/events", "events:read"),
    ("get", "/metrics", "metrics:read"),
    ("get", "/metrics/prometheus", "metrics:read"),
    ("get", "/admin/keys", "admin"),
    ("post", "/admin/keys", "admin"),
    ("get", "/admin/keys/{}", "admin"),
    ("delete", "/admin/keys/{}", "admin"),
    ("post", "/admin/keys/{}/rotate", "admin"),
    ("get", "/admin/audit", "admin"),
    ("get", "/admin/users", "admin"),
    ("post", "/admin/users/{}/password", "admin"),
    ("post", "/admin/users/{}/disable", "admin"),
    ("post", "/admin/users/{}/enable", "admin"),
    ("post", "/admin/users/{}/logout-all", "admin"),
    ("get", "/admin/", "admin"),
]
_PARAM = re.compile(r"\{[^}]+\}")


@pytest.fixture
def document(client: FlaskClient) -> dict[str, Any]:
    response = client.get("/openapi.json")
    assert response.status_code == 200 and response.mimetype == "application/json"
    return response.get_json()


def _operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any] | None:
    for documented, item in document["paths"].items():
        if _PARAM.sub("{}", documented) == path and method in item:
            return item[method]
    return None


def _view_for(app: Flask, method: str, path: str) -> Any:
    for rule in app.url_map.iter_rules():
        werkzeug_path = re.sub(r"<[^>]+>", "{}", rule.rule)
        if werkzeug_path == path and method.upper() in (rule.methods or ()):
            return app.view_functions[rule.endpoint]
    return None


def _schema(document: dict[str, Any], ref: dict[str, Any]) -> dict[str, Any]:
    return document["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]


def test_document_is_valid_openapi_3_1(document: dict[str, Any]) -> None:
    assert document["openapi"].startswith("3.1")
    validate_openapi(document)


@pytest.mark.parametrize(("method", "path", "access"), CONTRACT_ROUTES)
def test_contract_route_is_documented_with_its_access(
    document: dict[str, Any], method: str, path: str, access: str
) -> None:
    operation = _operation(document, method, path)
    assert operation is not None, f"{method.upper()} {path} is missing from /openapi.json"
    if access == PUBLIC:
        assert operation["security"] == []
    else:
        assert operation["security"], f"{method.upper()} {path} must need credentials"
        assert operation["x-required-scope"] == (None if access == ANY else access)
        assert {"401", "403"} <= set(operation["responses"])


@pytest.mark.parametrize(("method", "path", "access"), CONTRACT_ROUTES)
def test_contract_route_view_declares_an_endpoint_spec(
    app: Flask, method: str, path: str, access: str
) -> None:
    view = _view_for(app, method, path)
    assert view is not None, f"no view serves {method.upper()} {path}"
    assert endpoint_spec(view) is not None, f"{view.__module__}.{view.__name__} lacks @endpoint(...)"


def test_every_documented_operation_is_declared(document: dict[str, Any]) -> None:
    undeclared = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if operation.get("x-undeclared")
    ]
    assert undeclared == []


def test_request_bodies_are_the_validating_models(app: Flask, document: dict[str, Any]) -> None:
    checked = 0
    for rule in app.url_map.iter_rules():
        spec = endpoint_spec(app.view_functions[rule.endpoint])
        if spec is None or spec.body is None:
            continue
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in (rule.methods or set()) & {"POST", "PUT", "PATCH", "DELETE"}:
            body = document["paths"][path][method.lower()]["requestBody"]
            schema = _schema(document, body["content"]["application/json"]["schema"])
            assert set(schema["properties"]) == set(spec.body.model_json_schema()["properties"])
            checked += 1
    assert checked >= 3  # login, events, jobs, keys... at least


def test_errors_share_the_contract_shape(client: FlaskClient, document: dict[str, Any]) -> None:
    error = document["components"]["schemas"]["Error"]
    assert {"error", "status_code", "message", "path"} <= set(error["required"])
    for code in ("400", "401", "403", "404", "405", "413", "415", "429", "500", "503"):
        content = document["components"]["responses"][f"Error{code}"]["content"]
        assert _schema(document, content["application/json"]["schema"]) is error
    # A real error answer validates against the documented schema.
    jsonschema.validate(client.get("/auth/me").get_json(), error)
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for code, answer in operation["responses"].items():
                if int(code) >= 400 and "$ref" not in answer and path != "/readyz":
                    ref = answer["content"]["application/json"]["schema"]["$ref"]
                    assert ref.endswith("/Error"), f"{method} {path} {code}"


def test_rate_limit_headers_are_documented(document: dict[str, Any]) -> None:
    too_many = document["components"]["responses"]["Error429"]["headers"]
    assert {"Retry-After", *RATE_LIMIT_HEADERS} <= set(too_many)
    me = document["paths"]["/auth/me"]["get"]["responses"]
    assert set(RATE_LIMIT_HEADERS) <= set(me["200"]["headers"])
    assert "429" in me
    # Health probes are never rate-limited, so they promise neither the headers nor a 429.
    healthz = document["paths"]["/healthz"]["get"]["responses"]
    assert "429" not in healthz and "headers" not in healthz["200"]
    assert "text/plain" in healthz["200"]["content"]


def test_console_forms_are_left_out_but_the_console_is_in(document: dict[str, Any]) -> None:
    assert not [path for path in document["paths"] if path.startswith(("/admin/login", "/admin/console"))]
    page = document["paths"]["/admin/"]["get"]["responses"]
    assert "text/html" in page["200"]["content"] and "303" in page


def test_document_is_built_once_per_app(app: Flask, client: FlaskClient, test_env: dict[str, str]) -> None:
    first = client.get("/openapi.json").get_data()
    cached = app.extensions[CACHE_KEY]
    assert client.get("/openapi.json").get_data() == first
    assert app.extensions[CACHE_KEY] is cached
    other = create_app(test_env)
    assert CACHE_KEY not in other.extensions
    assert other.test_client().get("/openapi.json").get_data() == first


def test_openapi_json_is_public_and_docs_keeps_its_fastapi_shape(client: FlaskClient) -> None:
    assert client.get("/openapi.json").status_code == 200
    docs = client.get("/docs").get_json()
    assert {"message", "version", "backend", "endpoints"} <= set(docs)
    assert docs["endpoints"]["openapi"] == "/openapi.json"
