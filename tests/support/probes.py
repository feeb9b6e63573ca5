"""Routes that exist only in tests: an identity echo, a JSON body, a crash, an SSE stream,
a login stand-in and an HTML page (shared by the edge tests: security headers, fast path)."""

from __future__ import annotations

from collections.abc import Iterator

from flask import Flask, Response, jsonify, stream_with_context

from auth import authenticated, current_identity, public
from core.schemas import Schema, parse_json
from gateway.ratelimit import login_limit


class EchoBody(Schema):
    name: str


def add_probe_routes(app: Flask) -> Flask:
    """Routes that exist only in these tests: an identity echo, a JSON body, a crash, an SSE stream."""

    @app.get("/_probe/me")
    @authenticated
    def probe_me() -> Response:
        """Who is calling (like /auth/me)."""
        identity = current_identity()
        assert identity is not None
        return jsonify(identity.as_json())

    @app.post("/_probe/json")
    @public
    def probe_json() -> Response:
        """Echo a JSON body."""
        return jsonify(parse_json(EchoBody).model_dump())

    @app.get("/_probe/crash")
    @public
    def probe_crash() -> Response:
        """An unexpected error."""
        raise RuntimeError("secret internals rgw_notakeybutlookslikeone")

    @app.get("/_probe/stream")
    @public
    def probe_stream() -> Response:
        """A tiny SSE stream."""

        def frames() -> Iterator[str]:
            yield 'event: message\ndata: {"type": "done"}\n\n'

        return Response(stream_with_context(frames()), mimetype="text/event-stream")

    @app.post("/_probe/login")
    @public
    @login_limit
    def probe_login() -> Response:
        """A stand-in for /auth/login: only the login limit in front of it."""
        return jsonify({"ok": True})

    @app.get("/_probe/page")
    @public
    def probe_page() -> Response:
        """An HTML page (like the admin console's)."""
        return Response("<!doctype html><title>x</title>", mimetype="text/html")

    return app
