"""The app's one JSON parser and serializer: strict RFC 8259 in, strict RFC 8259 out.

Python's ``json`` is lenient where a gateway must not be: it accepts ``NaN`` and
``Infinity`` (and turns ``1e999`` into ``inf``), decodes lone UTF-16 surrogates
into strings that later fail to encode, reads UTF-16/32 and a BOM, keeps the last
of duplicate member names (another parser may keep the first), and raises
``RecursionError`` rather than ``ValueError`` on deep nesting, which escapes
``get_json(silent=True)`` as a 500. Flask reads every request body through
``app.json.loads`` (``Request.get_json``), so the provider below is the single
place request JSON is parsed; every refusal is a :class:`JSONRejected`, a
``ValueError``, which the request class turns into the contract's 400.
"""

from __future__ import annotations

import json
import logging
import math
import re
from typing import Any, NoReturn

from flask import Request, Response
from flask.json.provider import DefaultJSONProvider

from core.errors import APIError, error_response

# Deep enough for any payload the API documents (events' free-form `data` included),
# shallow enough that no recursive consumer (pydantic, the encoder) comes near its limit.
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")
_log = logging.getLogger("gateway.json")
# FastAPI-era wording (CONTRACT section 7) for a body that holds no usable JSON object.
NO_JSON = "No JSON data provided"


class JSONRejected(ValueError):
    """Request JSON that is not strict RFC 8259; the message says why, never quoting the input."""


class UnservableJSON(ValueError):
    """An answer that strict JSON cannot carry (NaN, Infinity, a circular reference)."""


def _reject_constant(name: str) -> NoReturn:
    raise JSONRejected(f"{name} is not a JSON value")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONRejected("a number is too large to represent")
    return value


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Two parsers that disagree on which duplicate wins can be played against each other.
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise JSONRejected("an object repeats a member name")
    return obj


_DECODER = json.JSONDecoder(
    parse_float=_finite_float, parse_constant=_reject_constant, object_pairs_hook=_unique_members
)


def _text(data: str | bytes | bytearray) -> str:
    if isinstance(data, str):
        text = data
    else:
        try:
            # RFC 8259 section 8.1: JSON between systems is UTF-8. Strict decoding also
            # refuses surrogates encoded as raw bytes (which "surrogatepass" would let in).
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError:
            raise JSONRejected("the body is not UTF-8") from None
    if text.startswith("\ufeff"):
        raise JSONRejected("the body starts with a byte order mark")
    return text


def _check_tree(value: Any) -> None:
    """Depth and lone surrogates, walked without recursion (the value may be hostile)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                raise JSONRejected("a string holds a lone UTF-16 surrogate")
        elif isinstance(item, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise JSONRejected(f"values are nested deeper than {MAX_JSON_DEPTH} levels")
            children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)


def strict_loads(data: str | bytes | bytearray) -> Any:
    """Parse strict RFC 8259 JSON or raise :class:`JSONRejected`."""
    text = _text(data)
    try:
        value = _DECODER.decode(text)
    except RecursionError:
        raise JSONRejected(f"values are nested deeper than {MAX_JSON_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        # json's own wording ("Expecting value") and a position; never the input itself.
        raise JSONRejected(f"{exc.msg} at position {exc.pos}") from None
    except JSONRejected:
        raise
    except ValueError:  # e.g. an integer past Python's digit limit
        raise JSONRejected("a number is too long") from None
    _check_tree(value)
    return value


class StrictJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider, strict both ways: :func:`strict_loads` in, ``allow_nan=False`` out."""

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        if kwargs:
            raise TypeError("strict_loads takes no options")
        return strict_loads(s)

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        kwargs.setdefault("allow_nan", False)
        try:
            return super().dumps(obj, **kwargs)
        except ValueError as exc:  # out-of-range floats, circular references
            raise UnservableJSON(str(exc)) from None

    def response(self, *args: Any, **kwargs: Any) -> Response:
        try:
            return super().response(*args, **kwargs)
        except UnservableJSON as exc:
            # A server-side fault (no client input can carry NaN in any more): say so in
            # the error shape and log one line, rather than send non-standard JSON.
            _log.error("answer not sent, strict JSON cannot carry it: %s", exc)
            return error_response(
                500, "Internal Server Error", "The answer held a value that JSON cannot carry."
            )


class StrictRequest(Request):
    """Flask's request; a body :func:`strict_loads` refuses is the contract's 400, with the reason."""

    def on_json_loading_failed(self, e: ValueError | None) -> Any:
        if e is None:  # not a JSON content type: Werkzeug's 415
            return super().on_json_loading_failed(e)
        reason = str(e) if isinstance(e, JSONRejected) else "it could not be parsed"
        raise APIError(400, NO_JSON, f"The body is not strict JSON (RFC 8259): {reason}.")
