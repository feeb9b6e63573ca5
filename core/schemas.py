"""Request schemas on views: one source for validation and for the OpenAPI document.

Views declare their pydantic models with :func:`endpoint`; they validate input
with :func:`parse_json` / :func:`parse_query` against those same models, and
``/openapi.json`` is built from the declarations and the URL map, so the
document cannot drift from what the code accepts.

Why pydantic directly rather than spectree or flask-openapi3: those libraries
own validation and answer with their own error bodies, while the contract fixes
both the error shape and the FastAPI-era messages word for word
("session_id is required", ...). Pydantic gives the models, the validation and
the JSON Schema; this module adds the contract's messages and the metadata.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from flask import request
from pydantic import BaseModel, ConfigDict, ValidationError

from core.echo import clip
from core.errors import APIError
from core.strict_json import NO_JSON

F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)
ENDPOINT_ATTR = "_gateway_endpoint"
# Longest validation detail sent back: room for a clipped quote and a list of allowed values.
MAX_DETAIL = 256


class Schema(BaseModel):
    """Base for request models. ``error_messages`` maps a field, or (field, pydantic error
    type), to the exact message the contract gives for it."""

    model_config = ConfigDict(extra="ignore", str_strip_whitespace=False)
    error_messages: ClassVar[Mapping[str | tuple[str, str], str]] = {}


@dataclass(frozen=True)
class EndpointSpec:
    """What the OpenAPI document says about one view."""

    summary: str
    tags: tuple[str, ...] = ()
    body: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    # status -> response model, or a plain description for non-JSON answers.
    responses: Mapping[int, type[BaseModel] | str] = field(default_factory=dict)
    content_type: str = "application/json"


def endpoint(
    summary: str,
    *,
    tags: tuple[str, ...] = (),
    body: type[BaseModel] | None = None,
    query: type[BaseModel] | None = None,
    responses: Mapping[int, type[BaseModel] | str] | None = None,
    content_type: str = "application/json",
) -> Callable[[F], F]:
    """Attach schema metadata to a view (read by the OpenAPI builder)."""
    spec = EndpointSpec(summary, tags, body, query, dict(responses or {}), content_type)

    def decorate(view: F) -> F:
        setattr(view, ENDPOINT_ATTR, spec)
        return view

    return decorate


def endpoint_spec(view: Callable[..., Any]) -> EndpointSpec | None:
    return getattr(view, ENDPOINT_ATTR, None)


def _message_for(model: type[BaseModel], error: Mapping[str, Any]) -> str:
    loc = error.get("loc") or ("body",)
    name = str(loc[0])
    messages: Mapping[str | tuple[str, str], str] = getattr(model, "error_messages", {})
    specific = messages.get((name, error["type"])) or messages.get(name)
    if specific:
        return specific
    # May quote the client (an unknown field's name, a validator's "got '...'"): bounded.
    where = ".".join(clip(part) for part in loc)
    return clip(_sentence(where, error), limit=MAX_DETAIL)


# Pydantic's error types as the gateway's own sentences: its wording ("Field required",
# "Input should be ...", links to errors.pydantic.dev) is the library's, not the API's.
_PHRASES = {
    "missing": "is required",
    "string_type": "must be a string",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "list_type": "must be a list",
    "dict_type": "must be a JSON object",
    "model_type": "must be a JSON object",
    "extra_forbidden": "is not an accepted field",
}
_BOUNDS = {
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "too_short": "must hold at least {min_length} items",
    "too_long": "must hold at most {max_length} items",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be greater than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
}


def _sentence(where: str, error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])  # a validator's own sentence, already naming its field
    if kind in _PHRASES:
        return f"{where} {_PHRASES[kind]}"
    if kind in _BOUNDS:
        try:
            return f"{where} {_BOUNDS[kind].format(**ctx)}"
        except (KeyError, IndexError):
            pass
    return f"{where} is not valid"


def validate(model: type[M], data: Any) -> M:
    """Validate ``data`` or raise a 400 APIError with the first field's contract message."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise APIError(400, _message_for(model, exc.errors()[0])) from None


def json_object(*, empty_ok: bool = False) -> dict[str, Any]:
    """The request body as a non-empty JSON object (``empty_ok``: ``{}`` too).

    415 when a body is sent as another type; 400 when it is missing, not strict JSON
    (core.strict_json, the app's one parser), or not an object with members. Routes
    newer than the FastAPI era pass ``empty_ok``, so that ``{}`` is validated and the
    answer names the missing field rather than saying no data came.
    """
    raw = request.get_data(cache=True)
    if not raw.strip():
        raise APIError(400, NO_JSON)
    if not request.is_json:
        raise APIError(415, "Unsupported Media Type")
    data = request.get_json()  # strict; a refusal raises the 400 with its reason
    if not isinstance(data, dict) or not (data or empty_ok):
        raise APIError(400, NO_JSON)  # the FastAPI-era answer for `{}` and non-objects alike
    return data


def parse_json(model: type[M], *, empty_ok: bool = False) -> M:
    """The request body (see :func:`json_object`) validated as ``model``."""
    return validate(model, json_object(empty_ok=empty_ok))


def parse_query(model: type[M]) -> M:
    """Query-string parameters as ``model`` (first value of each name)."""
    return validate(model, request.args.to_dict())
