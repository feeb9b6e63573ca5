"""The gateway's Flask and Response classes: Flask's, minus two costs paid on every request.

Request JSON is parsed, and answers serialized, only by :mod:`core.strict_json`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from flask import Flask, Response
from werkzeug.datastructures import Headers

from core.strict_json import StrictJSONProvider, StrictRequest

# Headers whose presence makes Werkzeug rewrite an answer's headers (see get_wsgi_headers).
_REWRITTEN = frozenset({"location", "content-location"})


class GatewayResponse(Response):
    """Flask's response, sent without copying its headers when nothing in them changes."""

    def get_wsgi_headers(self, environ: Any) -> Headers:
        # Werkzeug copies (and re-validates) every header of every answer, to make a
        # Location absolute, drop Content-Length where the status forbids it, or add
        # one. An answer with a length, an ordinary status and no location needs none
        # of that, and a secured answer carries fifteen headers. The caller turns the
        # result into a new list for the server at once, so sharing is safe.
        status = self.status_code
        if status >= 200 and status not in (204, 304):
            names = {name.lower() for name, _ in self.headers._list}  # type: ignore[attr-defined]
            if "content-length" in names and _REWRITTEN.isdisjoint(names):
                return self.headers
        return super().get_wsgi_headers(environ)


class Gateway(Flask):
    """Flask, with cheaper answers (GatewayResponse) and hook calls, and strict JSON both ways.

    Whether a hook or view is a coroutine is found out once.

    Flask asks ``inspect.iscoroutinefunction`` before every call of every hook and
    view; the gateway runs about a dozen per request, and the answer never changes.
    """

    response_class = GatewayResponse
    request_class = StrictRequest
    json_provider_class = StrictJSONProvider

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync: dict[Callable[..., Any], bool] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            plain = self._sync[func]
        except KeyError:
            plain = self._sync[func] = not inspect.iscoroutinefunction(func)
        except TypeError:  # an unhashable callable: ask every time, as Flask does
            return super().ensure_sync(func)
        return func if plain else self.async_to_sync(func)
