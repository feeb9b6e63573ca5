"""``GET /openapi.json``: the OpenAPI 3.1 document, built from the live app.

The document is derived, never written by hand: paths and methods come from
``app.url_map``, request and response schemas from each view's
:func:`core.schemas.endpoint` declaration (the same pydantic models that
validate requests), and security from the access markers of ``auth.access``.
So a route, a field or a scope cannot change without the document following.

Why a small builder over pydantic rather than a library: spectree and
flask-openapi3 generate documents only for views they validate themselves (see
core/schemas.py for why the gateway validates on its own), and apispec would
need the same model-to-schema glue written here plus a plugin layer on top.
Pydantic's ``models_json_schema`` (the multi-model form of
``model_json_schema``) already emits JSON Schema 2020-12, the dialect of
OpenAPI 3.1, with shared ``$defs`` and name-collision handling; what is left is
walking the URL map.
"""

from __future__ import annotations

import inspect
import json
import re
from collections.abc import Callable, Iterable
from typing import Any

from flask import Blueprint, Flask, Response, current_app
from pydantic import BaseModel, ConfigDict
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule

from auth import public
from auth.access import ACCESS_ATTR, Access
from auth.credentials import TICKET_EXTENSION, TICKET_PARAM
from auth.scopes import ADMIN, ALL_SCOPES
from core.schemas import EndpointSpec, endpoint, endpoint_spec
from gateway.health import HEALTH_ENDPOINTS
from gateway.version import SERVICE_NAME, __version__

bp = Blueprint("openapi", __name__)

CACHE_KEY = "gateway.openapi"
HIDDEN_ATTR = "_openapi_hidden"
REF_TEMPLATE = "#/components/schemas/{model}"
_METHODS = ("get", "post", "put", "patch", "delete")
_CONVERTER_TYPES = {"int": {"type": "integer"}, "float": {"type": "number"}}
_PATH_ARG = re.compile(r"<(?:(?P<converter>[a-zA-Z_]+)(?:\([^)]*\))?:)?(?P<name>[a-zA-Z_][a-zA-Z0-9_]*)>")

# Error statuses and where they can happen (CONTRACT section 4).
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: the body or parameters are missing or invalid.",
    401: (
        'No valid credentials (`WWW-Authenticate: Bearer realm="gateway"`; a presented key '
        'that is not valid adds `error="invalid_token"`).'
    ),
    403: "The credentials lack the scope this route needs, or a cookie request came from a foreign origin.",
    404: "Not found.",
    405: "Method not allowed.",
    409: "Conflict with the current state of the resource.",
    413: "The request body is larger than the gateway accepts.",
    415: "The request body is not JSON.",
    429: "Rate limit or quota exhausted; retry after `Retry-After` seconds.",
    500: "Unexpected error (details are logged, never returned).",
    503: "A dependency (Redis) is unavailable; retry shortly.",
}
RATE_LIMIT_HEADERS: dict[str, str] = {
    "X-RateLimit-Limit": "Requests allowed in the current window.",
    "X-RateLimit-Remaining": "Requests left in the current window.",
    "X-RateLimit-Reset": "Unix time (seconds) when the window resets.",
}


class Error(BaseModel):
    """The one error shape of the gateway (CONTRACT section 4)."""

    model_config = ConfigDict(extra="allow")

    error: str
    status_code: int
    message: str
    path: str
    retry_after: int | None = None


def hide_from_schema(view: Callable[..., Any]) -> Callable[..., Any]:
    """Leave a route out of the document (form posts of the HTML console, for instance)."""
    setattr(view, HIDDEN_ATTR, True)
    return view


def _first_line(text: str | None) -> str:
    return (inspect.cleandoc(text or "").splitlines() or [""])[0]


def _openapi_path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    """Werkzeug's ``/a/<int:id>`` as ``/a/{id}`` plus its path parameters."""
    params = []
    for match in _PATH_ARG.finditer(rule.rule):
        schema = _CONVERTER_TYPES.get(match["converter"] or "", {"type": "string", "pattern": "^[^/]+$"})
        params.append({"name": match["name"], "in": "path", "required": True, "schema": dict(schema)})
    return _PATH_ARG.sub(lambda m: "{" + m["name"] + "}", rule.rule), params


class _Builder:
    """Collects operations and the pydantic models they reference, then resolves schemas once."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.paths: dict[str, dict[str, Any]] = {}
        self.models: set[tuple[type[BaseModel], JsonSchemaMode]] = {(Error, "serialization")}
        self.operation_ids: set[str] = set()
        # $defs of query models (their fields become parameters, not a body schema).
        self.extra_schemas: dict[str, Any] = {}

    def rules(self) -> Iterable[tuple[Rule, Callable[..., Any]]]:
        for rule in sorted(self.app.url_map.iter_rules(), key=lambda r: (r.rule, r.endpoint)):
            view = self.app.view_functions.get(rule.endpoint)
            if view is None or rule.endpoint.split(".")[-1] == "static" or getattr(view, HIDDEN_ATTR, False):
                continue
            yield rule, view

    def build(self) -> dict[str, Any]:
        for rule, view in self.rules():
            path, path_params = _openapi_path(rule)
            for method in sorted(m.lower() for m in rule.methods or () if m.lower() in _METHODS):
                operation = self.operation(rule, view, method, path_params)
                self.paths.setdefault(path, {})[method] = operation
        return _with_stream_tickets(self.app, self.document())

    def operation(
        self, rule: Rule, view: Callable[..., Any], method: str, path_params: list[dict[str, Any]]
    ) -> dict[str, Any]:
        spec = endpoint_spec(view)
        access: Access = getattr(view, ACCESS_ATTR, Access(scope=ADMIN))
        operation: dict[str, Any] = {
            "operationId": self.operation_id(rule, method),
            "summary": spec.summary if spec else _first_line(view.__doc__) or rule.endpoint,
            "tags": list(spec.tags) if spec and spec.tags else [rule.endpoint.split(".")[0]],
        }
        description = inspect.cleandoc(view.__doc__ or "")
        if description and description != operation["summary"]:
            operation["description"] = description
        parameters = list(path_params) + self.query_parameters(spec)
        if parameters:
            operation["parameters"] = parameters
        if spec and spec.body is not None and method in ("post", "put", "patch", "delete"):
            operation["requestBody"] = self.request_body(spec.body)
        operation["responses"] = self.responses(
            rule, method, spec, access, has_body="requestBody" in operation
        )
        operation["security"] = [] if access.public else _SECURITY
        if not access.public:
            operation["x-required-scope"] = access.scope
        if spec is None:
            operation["x-undeclared"] = True  # no @endpoint: responses are not described in detail
        return operation

    def operation_id(self, rule: Rule, method: str) -> str:
        base = f"{method}_{rule.endpoint.replace('.', '_')}"
        candidate, n = base, 2
        while candidate in self.operation_ids:  # one view on several URLs (/control-center, /dashboard)
            candidate, n = f"{base}_{n}", n + 1
        self.operation_ids.add(candidate)
        return candidate

    def ref(self, model: type[BaseModel], mode: JsonSchemaMode) -> tuple[type[BaseModel], JsonSchemaMode]:
        self.models.add((model, mode))
        return (model, mode)

    def query_parameters(self, spec: EndpointSpec | None) -> list[dict[str, Any]]:
        if spec is None or spec.query is None:
            return []
        schema = spec.query.model_json_schema(ref_template=REF_TEMPLATE)
        self.extra_schemas.update(schema.get("$defs", {}))
        required = set(schema.get("required", ()))
        params = []
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {"name": name, "in": "query", "required": name in required}
            if prop.get("description"):
                param["description"] = prop["description"]
            param["schema"] = _query_schema(prop)
            params.append(param)
        return params

    def request_body(self, model: type[BaseModel]) -> dict[str, Any]:
        return {"required": True, "content": {"application/json": {"schema": self.ref(model, "validation")}}}

    def responses(
        self, rule: Rule, method: str, spec: EndpointSpec | None, access: Access, *, has_body: bool
    ) -> dict[str, Any]:
        limited = rule.endpoint not in HEALTH_ENDPOINTS
        declared = dict(spec.responses) if spec else {}
        if not any(200 <= code < 400 for code in declared):
            declared[200] = "Success."
        answers: dict[str, Any] = {}
        for code, what in sorted(declared.items()):
            answers[str(code)] = self.response(code, what, spec, limited=limited)
        for code in self.error_codes(method, access, has_body=has_body, limited=limited):
            answers.setdefault(str(code), {"$ref": f"#/components/responses/Error{code}"})
        return dict(sorted(answers.items()))

    def response(
        self, code: int, what: type[BaseModel] | str, spec: EndpointSpec | None, *, limited: bool
    ) -> dict[str, Any]:
        if code >= 400 and isinstance(what, str):
            answer: dict[str, Any] = {
                "description": what,
                "content": {"application/json": {"schema": self.ref(Error, "serialization")}},
            }
        elif isinstance(what, str):
            answer = {"description": what}
            if code not in (204, 304) and not 300 <= code < 400 and spec is not None:
                answer["content"] = {spec.content_type: {"schema": _TEXT_SCHEMAS.get(spec.content_type, {})}}
        else:
            answer = {
                "description": _first_line(what.__doc__) or what.__name__,
                "content": {"application/json": {"schema": self.ref(what, "serialization")}},
            }
        if 300 <= code < 400:
            answer["headers"] = {"Location": {"description": "Where to go.", "schema": {"type": "string"}}}
        if limited:
            answer.setdefault("headers", {}).update(_RATE_HEADER_REFS)
        return answer

    @staticmethod
    def error_codes(method: str, access: Access, *, has_body: bool, limited: bool) -> list[int]:
        codes = [400, 404, 405, 500, 503]
        if not access.public:
            codes += [401, 403]
        if has_body or method in ("post", "put", "patch", "delete"):
            codes += [413, 415]
        if limited:
            codes.append(429)
        return sorted(codes)

    def document(self) -> dict[str, Any]:
        refs, defs = models_json_schema(sorted(self.models, key=_model_sort_key), ref_template=REF_TEMPLATE)
        schemas = {**self.extra_schemas, **defs.get("$defs", {})}
        _resolve_refs(self.paths, refs)
        return {
            "openapi": "3.1.0",
            "info": {
                "title": SERVICE_NAME,
                "version": __version__,
                "description": "Secured API gateway. Every route needs an API key with the scope "
                "given in `x-required-scope` unless its `security` is empty. Scopes: "
                + ", ".join(ALL_SCOPES)
                + " (`admin` implies every other scope).",
            },
            "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
            "paths": dict(sorted(self.paths.items())),
            "components": {
                "schemas": dict(sorted(schemas.items())),
                "responses": _error_responses(refs[(Error, "serialization")]),
                "headers": _header_components(),
                "securitySchemes": _security_schemes(self.app.config["SESSION_COOKIE_NAME"]),
            },
        }


def _query_schema(prop: dict[str, Any]) -> dict[str, Any]:
    """A field's schema as a query parameter: a query string cannot say null, so an
    optional ``X | None`` field is documented as X (absent means None)."""
    schema = {k: v for k, v in prop.items() if k not in ("title", "description")}
    branches = [b for b in schema.get("anyOf", ()) if b != {"type": "null"}]
    if "anyOf" in schema and len(branches) == 1:
        schema.pop("anyOf")
        schema.update(branches[0])
    if schema.get("default", 0) is None:
        schema.pop("default")
    return schema


def _model_sort_key(item: tuple[type[BaseModel], JsonSchemaMode]) -> tuple[str, str, str]:
    model, mode = item
    return (model.__module__, model.__qualname__, mode)


def _resolve_refs(node: Any, refs: dict[Any, Any]) -> None:
    """Replace the (model, mode) markers left by ``_Builder.ref`` with real ``$ref`` schemas."""
    if isinstance(node, dict):
        for name, value in node.items():
            if isinstance(value, tuple):
                node[name] = refs[value]
            else:
                _resolve_refs(value, refs)
    elif isinstance(node, list):
        for item in node:
            _resolve_refs(item, refs)


# One server-sent event, as OpenAPI tools read an event stream (fields of the SSE frame).
SSE_EVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "event": {"type": "string"},
        "data": {"type": "string", "contentMediaType": "application/json"},
        "id": {"type": "string"},
        "retry": {"type": "integer"},
    },
}
_TEXT_SCHEMAS: dict[str, dict[str, Any]] = {
    "text/plain": {"type": "string"},
    "text/event-stream": SSE_EVENT_SCHEMA,
    "text/html": {"type": "string"},
}
_RATE_HEADER_REFS = {name: {"$ref": f"#/components/headers/{name}"} for name in RATE_LIMIT_HEADERS}
_SECURITY_SCHEMES = {
    "bearerAuth": {"type": "http", "scheme": "bearer", "description": "An API key: `Bearer rgw_...`."},
    "apiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "An API key."},
    "sessionCookie": {
        "type": "apiKey",
        "in": "cookie",
        "name": "gw_session",
        "description": "Admin session from `POST /auth/login`; changes must come from the same origin.",
    },
}
_SECURITY = [{"bearerAuth": []}, {"apiKeyHeader": []}, {"sessionCookie": []}]


def _security_schemes(cookie_name: str) -> dict[str, Any]:
    # The session cookie's name differs by environment (``__Host-`` prefixed in production).
    return {**_SECURITY_SCHEMES, "sessionCookie": {**_SECURITY_SCHEMES["sessionCookie"], "name": cookie_name}}


def _header_components() -> dict[str, Any]:
    headers: dict[str, Any] = {
        name: {"description": text, "schema": {"type": "integer"}}
        for name, text in RATE_LIMIT_HEADERS.items()
    }
    headers["Retry-After"] = {
        "description": "Seconds to wait before retrying.",
        "schema": {"type": "integer"},
    }
    return headers


def _error_responses(error_schema: dict[str, Any]) -> dict[str, Any]:
    responses = {}
    for code, text in ERROR_DESCRIPTIONS.items():
        answer: dict[str, Any] = {
            "description": text,
            "content": {"application/json": {"schema": error_schema}},
        }
        if code == 429:
            answer["headers"] = {
                **_RATE_HEADER_REFS,
                "Retry-After": {"$ref": "#/components/headers/Retry-After"},
            }
        if code == 503:
            answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}
        if code == 401:
            answer["headers"] = {"WWW-Authenticate": {"schema": {"type": "string"}}}
        responses[f"Error{code}"] = answer
    return responses


# Stream tickets (issue 16): the routes that take ``?ticket=`` in place of a key (GET only).
TICKET_SCHEME = {
    "type": "apiKey",
    "in": "query",
    "name": TICKET_PARAM,
    "description": "A single-use stream ticket from `POST /agents/stream/ticket` (at most 120 s, for "
    "one session); for `EventSource`, which cannot send headers. No other route takes it.",
}


def _with_stream_tickets(app: Flask, document: dict[str, Any]) -> dict[str, Any]:
    """Add the ticket scheme, and the ``ticket`` parameter to the operations that take one."""
    endpoints = app.extensions.get(TICKET_EXTENSION, {})
    taking = [rule for rule in app.url_map.iter_rules() if rule.endpoint in endpoints]
    if not taking:
        return document
    document["components"]["securitySchemes"]["streamTicket"] = TICKET_SCHEME
    parameter = {
        "name": TICKET_PARAM,
        "in": "query",
        "required": False,
        "description": "A stream ticket, in place of a key header; used once.",
        "schema": {"type": "string", "pattern": "^gwt_[A-Za-z0-9_-]{43}$"},
    }
    for rule in taking:
        operation = document["paths"].get(_openapi_path(rule)[0], {}).get("get")
        if operation is not None:
            operation.setdefault("parameters", []).append(parameter)
            operation["security"] = [*operation["security"], {"streamTicket": []}]
    return document


def build_document(app: Flask) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app`` as it is wired now."""
    return _Builder(app).build()


def document_for(app: Flask) -> bytes:
    """The document as JSON, built once per app (the URL map is fixed once the app serves)."""
    if CACHE_KEY not in app.extensions:
        app.extensions[CACHE_KEY] = json.dumps(build_document(app), indent=1).encode()
    return app.extensions[CACHE_KEY]


@bp.get("/openapi.json")
@public
@endpoint("The OpenAPI 3.1 document of the gateway", tags=("meta",), responses={200: "OpenAPI document."})
def openapi_json() -> Response:
    """The OpenAPI 3.1 document, generated from the routes and their pydantic schemas."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return Response(document_for(app), mimetype="application/json")


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
