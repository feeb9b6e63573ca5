"""The gateway's Flask class: Flask, with strict JSON both ways.

Request JSON is parsed, and answers serialized, only by :mod:`core.strict_json`.
Speed shortcuts that reach into Flask or Werkzeug internals are not here: they
live in :mod:`gateway.fastpath.responses`, behind the ``GATEWAY_FASTPATH`` switch.
"""

from __future__ import annotations

from flask import Flask

from core.strict_json import StrictJSONProvider, StrictRequest


class Gateway(Flask):
    """Flask with the strict request and JSON provider classes (public class attributes)."""

    request_class = StrictRequest
    json_provider_class = StrictJSONProvider
