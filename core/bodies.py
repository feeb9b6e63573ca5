"""Request bodies arrive whole within BODY_READ_TIMEOUT seconds, and a chunked one within
MAX_CONTENT_LENGTH bytes: the one place that bounds how a body is read.

gunicorn bounds the header read only (its keepalive timeout): a client that sends a body
a byte a second holds its connection, and a worker's greenlet, for as long as it likes,
and fifty of them fill a 50-connection worker. This WSGI middleware wraps ``wsgi.input``
in a reader whose every read ends at the body's deadline. Under gevent (the gunicorn
worker class) a ``gevent.Timeout`` around the read is the cooperative way to do that;
elsewhere, where the server gives its socket (gunicorn's sync worker), a socket timeout.
The reader raises :class:`BodyTimeout`, the contract's 408; it is an ``Exception``, so
gunicorn marks the body failed and closes the connection instead of draining the rest.

Werkzeug stops reading a chunked body at MAX_CONTENT_LENGTH and hands the view the cut
body (a misleading 400 for JSON); the reader looks one byte further and answers 413.

Nothing is read here before a view asks: the rate limiter decides before any body is read.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from flask import Flask

from core.errors import APIError


class BodyTimeout(APIError):
    """The body did not arrive whole within BODY_READ_TIMEOUT seconds (408)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(
            408, "Request Timeout", f"The request body did not arrive within {seconds:g} seconds."
        )


def _too_large(limit: int) -> APIError:
    return APIError(413, "Payload Too Large", f"The request body must be at most {limit} bytes.")


def _gevent_patched() -> bool:
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("socket"))


class DeadlineInput:
    """``wsgi.input`` whose reads end by ``deadline`` (time.monotonic()), and which counts a
    chunked body against ``max_bytes`` (None: the server knows the length)."""

    def __init__(
        self, stream: Any, seconds: float, max_bytes: int | None, sock: Any, cooperative: bool
    ) -> None:
        self.stream = stream
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.max_bytes = max_bytes
        self.sock = sock
        self.cooperative = cooperative
        self.total = 0

    def _bounded(self, read: Callable[..., bytes], *args: Any) -> bytes:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise BodyTimeout(self.seconds)
        if self.cooperative:
            from gevent import Timeout

            # Raised inside the server's read: gunicorn then knows the body is broken.
            with Timeout(remaining, BodyTimeout(self.seconds)):
                return read(*args)
        if self.sock is None:  # a server that gives no socket: bounded by the server, if at all
            return read(*args)
        self.sock.settimeout(remaining)
        try:
            return read(*args)
        except TimeoutError:
            raise BodyTimeout(self.seconds) from None

    def _counted(self, data: bytes) -> bytes:
        if self.max_bytes is not None and data:
            self.total += len(data)
            if self.total > self.max_bytes:
                raise _too_large(self.max_bytes)
            if self.total == self.max_bytes and self._bounded(self.stream.read, 1):
                raise _too_large(self.max_bytes)  # Werkzeug would stop here and cut the body
        return data

    def read(self, size: int = -1) -> bytes:
        return self._counted(self._bounded(self.stream.read, size))

    def readline(self, size: int = -1) -> bytes:
        return self._counted(self._bounded(self.stream.readline, size))

    def readlines(self, hint: int = -1) -> list[bytes]:
        return [self._counted(line) for line in self._bounded(self.stream.readlines, hint)]

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """WSGI middleware: every request with a body reads it through a :class:`DeadlineInput`."""

    def __init__(self, wsgi_app: Callable[..., Iterable[bytes]], seconds: float, max_bytes: int) -> None:
        self.wsgi_app = wsgi_app
        self.seconds = seconds
        self.max_bytes = max_bytes
        self.cooperative = _gevent_patched()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH")
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if (length and length != "0") or chunked:
            environ["wsgi.input"] = DeadlineInput(
                environ["wsgi.input"],
                self.seconds,
                None if length else self.max_bytes,
                environ.get("gunicorn.socket"),
                self.cooperative,
            )
        return self.wsgi_app(environ, start_response)


def init_app(app: Flask) -> None:
    """Bound every request body's read (BODY_READ_TIMEOUT, MAX_CONTENT_LENGTH for chunked)."""
    config = app.config
    app.wsgi_app = BodyDeadline(  # type: ignore[method-assign]
        app.wsgi_app, config["BODY_READ_TIMEOUT"], config["MAX_CONTENT_LENGTH"]
    )
