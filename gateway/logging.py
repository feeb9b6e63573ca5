"""Structured logs: one JSON object per line, each carrying the request's id.

A request id comes from the client's ``X-Request-ID`` when it is short and plain
(so a proxy's or caller's id links their logs to ours), else a fresh one; it is
returned in the answer. Access lines name the method, path (never the query
string: a stream ticket rides in it), status, duration and identity; headers are never
logged, so the ``Authorization`` and ``X-API-Key`` headers and cookies cannot leak, and the
formatter blanks anything shaped like a key, a stream ticket or a bearer token in any
message (the servers' own loggers get the same through a filter).
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import threading
import time
from datetime import UTC, datetime
from json.encoder import encode_basestring_ascii as _quote  # C: what the encoder uses
from typing import Any

from flask import Flask, Response, g, has_request_context, request

from auth.identity import loaded_identity
from core import forks
from core.background import BackgroundLoop
from gateway.health import is_probe

REQUEST_ID_HEADER = "X-Request-ID"
_random_bits = random.getrandbits
# CONTRACT section 8. fullmatch, not `^...$`: `$` also matches before a trailing newline.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# API keys (auth.keys format), stream tickets (gateway.agents.tickets: gwt_...), bearer
# credentials and key=value secrets in free text (a URL's `?ticket=...` too).
_SECRETS = re.compile(
    r"rgw_[A-Za-z0-9]{4,}|gwt_[A-Za-z0-9_-]{4,}|(?i:bearer)\s+\S+"
    r"|(?i:(?:api[_-]?key|password|secret|token|ticket)[\"']?\s*[:=]\s*)[^\s&]+"
)
REDACTED = "[redacted]"
# Loggers whose records get the JSON handler (the app's own and the auth package's).
LOGGERS = ("gateway", "auth", "config")
ACCESS_LOGGER = "gateway.access"


def redact(text: str) -> str:
    return _SECRETS.sub(REDACTED, text)


# Loggers of the servers around the app, which write request lines and URIs with their query
# strings (werkzeug's development server, gunicorn's "Error handling request <uri>").
SERVER_LOGGERS = ("werkzeug", "gunicorn.error", "gunicorn.access")


class RedactingFilter(logging.Filter):
    """Blanks secrets in records of loggers whose lines the gateway does not format."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def _redact_server_loggers() -> None:
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactingFilter) for f in logger.filters):
            logger.addFilter(RedactingFilter())


def request_id() -> str | None:
    """This request's id (None outside a request)."""
    return g.get("request_id") if has_request_context() else None


# json.dumps(..., default=str) would build a new encoder for every line.
_encode = json.JSONEncoder(default=str).encode


class _Timestamps:
    """ISO-8601 UTC timestamps with milliseconds; the part up to the second is made once a second."""

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second = second
            self.prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        return f"{self.prefix}.{int((created - second) * 1000):03d}+00:00"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "request_id", ...extra fields}`` on one line."""

    def __init__(self) -> None:
        super().__init__()
        self.timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        entry = self.entry(record.created, record.levelname, record.name, redact(record.getMessage()))
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["exc_info"] = redact(self.formatException(record.exc_info))
        return _encode(entry)

    def entry(self, created: float, level: str, name: str, message: str) -> dict[str, Any]:
        """The fields every line starts with (the message must be redacted already)."""
        entry: dict[str, Any] = {
            "ts": self.timestamp(created),
            "level": level,
            "logger": name,
            "message": message,
        }
        rid = request_id()
        if rid:
            entry["request_id"] = rid
        return entry


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever sys.stderr is at the time (gunicorn and test capture swap it).

    Access lines go into the batch; any other line flushes the batch first, so the
    stream stays in order.
    """

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass

    def emit(self, record: logging.LogRecord) -> None:
        # StreamHandler.emit, without its second lock round for flush(): handle() holds the lock.
        try:
            line = self.format(record) + "\n"
            if record.name == ACCESS_LOGGER:
                _batch.write(line)
                return
            _batch.flush()  # access lines written before this one come first
            _write_stderr(line)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


class _AccessBatch:
    """Access lines, written to stderr in batches every ``flush_ms`` (0: each line at once).

    One write(2) per line was about 5% of a secured request's CPU. Batching as nginx's
    ``access_log ... buffer= flush=`` does trades that for at most ``flush_ms`` of
    delay, and, if a worker is killed outright, at most that much of its access lines.
    A batch never exceeds PIPE_BUF bytes, so one write is atomic on a pipe and lines of
    several workers sharing stderr never interleave. The flusher is the process's
    ``BackgroundLoop``: started on first use after the fork, a forked child drops the
    lines it inherited (they are its parent's to write), and exit flushes the rest.
    """

    def __init__(self) -> None:
        self.flush_ms = 0
        self.lines: list[str] = []
        self.size = 0
        self.lock = threading.Lock()
        self.loop = BackgroundLoop(
            "access-log", IDLE_FLUSH_MS / 1000, self.flush, final=self.flush, on_fork=self._drop
        )

    def configure(self, flush_ms: int) -> None:
        """Batch for ``flush_ms`` from now on (the lines held so far are written first)."""
        self.flush()
        self.flush_ms = flush_ms
        # flush_ms may be set to 0 later (another app in the process): the loop never spins.
        self.loop.interval = (flush_ms or IDLE_FLUSH_MS) / 1000

    def write(self, line: str) -> None:
        if not self.flush_ms:
            _write_stderr(line)
            return
        self.loop.ensure_started()
        with self.lock:
            if self.size + len(line) > PIPE_BUF:
                self._flush_locked()
            self.lines.append(line)
            self.size += len(line)

    def flush(self) -> None:
        # Lines held at a fork are the parent's to write, not a forked child's.
        if self.lines and self.loop.owned():
            with self.lock:
                self._flush_locked()

    def _drop(self) -> None:
        with self.lock:
            self.lines, self.size = [], 0

    def _flush_locked(self) -> None:
        if self.lines:
            data, self.lines, self.size = "".join(self.lines), [], 0
            _write_stderr(data)


def _write_stderr(data: str) -> None:
    stream = sys.stderr
    stream.write(data)
    stream.flush()


# Lines of up to this size are written atomically to a pipe (POSIX PIPE_BUF, Linux's value).
# Access lines are ASCII (the JSON is escaped), so their length in characters is in bytes.
PIPE_BUF = 4096
IDLE_FLUSH_MS = 100
_batch = _AccessBatch()


def _configure_loggers(level: str) -> None:
    for name in LOGGERS:
        logger = logging.getLogger(name)
        # create_app() may run many times in one process (tests): keep one handler.
        for old in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
            logger.removeHandler(old)
        handler = _StderrHandler()
        handler.setFormatter(JsonFormatter())
        logger.addHandler(handler)
        logger.setLevel(level)


def start_request() -> None:
    """before_request: adopt a plain client id or make one; start the clock."""
    g.request_started = time.perf_counter()
    offered = request.environ.get("HTTP_X_REQUEST_ID")
    # An id needs to be unique, not secret: the process's PRNG (reseeded in every forked
    # worker) instead of a getrandom() system call on every request.
    g.request_id = offered if offered and _REQUEST_ID.fullmatch(offered) else f"{_random_bits(128):032x}"


def finish_request(response: Response) -> Response:
    """after_request: return the id and write the access line (health probes excepted)."""
    rid = g.get("request_id")
    if rid:
        response.headers.add(REQUEST_ID_HEADER, rid)  # nothing else writes this header
    if not is_probe():
        _log_access(response)
    return response


_access_log = logging.getLogger(ACCESS_LOGGER)  # looked up once, not per request


def _log_access(response: Response) -> None:
    if not _access_log.isEnabledFor(logging.INFO):
        return
    started = g.get("request_started")
    fields = {
        "method": clip(request.method, _SHORT_BUDGET),
        "path": clip(request.path, _PATH_BUDGET),
        "status": response.status_code,
        "duration_ms": round((time.perf_counter() - started) * 1000, 2) if started else None,
        "remote_addr": clip(request.remote_addr, _SHORT_BUDGET),
        "identity": _caller(),
    }
    # The handler batches the line (see _StderrHandler.emit).
    _access_log.handle(_access_record(fields))


# A prepared access record: LogRecord.__init__ (and so .info() and makeRecord) works
# out, for every record, the caller's file and module, the process name and more,
# and makeRecord copies ``extra`` key by key: about half the cost of an access line.
# Only the time, the thread and the process change from one access line to the next.
_ACCESS_RECORD = logging.LogRecord(ACCESS_LOGGER, logging.INFO, "", 0, "request", (), None).__dict__


def _access_record(fields: dict[str, Any]) -> logging.LogRecord:
    """A ``gateway.access`` record carrying ``fields``, with the attributes LogRecord gives."""
    created = time.time()
    record = logging.LogRecord.__new__(logging.LogRecord)
    record.__dict__.update(
        _ACCESS_RECORD,
        created=created,
        msecs=int((created - int(created)) * 1000) + 0.0,
        relativeCreated=_ACCESS_RECORD["relativeCreated"] + (created - _ACCESS_RECORD["created"]) * 1000,
        thread=threading.get_ident(),
        threadName=threading.current_thread().name,
        process=forks.pid(),
        fields=fields,
    )
    return record


def _caller() -> str | None:
    # The identity this request has already resolved, if any: an access line never
    # resolves one (no Redis call after the answer, and Redis may be why it failed).
    return getattr(loaded_identity(), "owner", None)


# Access lines stay under 2 KiB (CONTRACT section 8) whatever a client sends: each field
# it controls gets a budget of JSON-escaped characters (an escape like \u00e9 is six).
TRUNCATED = "[truncated]"
_PATH_BUDGET = 512
_SHORT_BUDGET = 64  # method, remote_addr (X-Forwarded-For when a proxy is trusted)


def clip(value: str | None, budget: int) -> str | None:
    """``value``, or its longest head whose JSON form fits ``budget``, marked TRUNCATED."""
    if value is None or len(value) * 6 <= budget or len(_quote(value)) <= budget:
        return value
    cut = value[: budget - len(TRUNCATED)]
    while len(_quote(cut)) > budget - len(TRUNCATED):
        cut = cut[: len(cut) // 2]  # heavy escaping: halve until it fits (a few steps at most)
    return cut + TRUNCATED


def init_app(app: Flask) -> None:
    """JSON log lines for the app's loggers, request ids and access lines; call first."""
    _configure_loggers(app.config["LOG_LEVEL"])
    _redact_server_loggers()
    _batch.configure(app.config["ACCESS_LOG_FLUSH_MS"])
    app.before_request(start_request)
    app.after_request(finish_request)
