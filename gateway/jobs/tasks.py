"""What an RQ worker runs: one fixed entry point that dispatches through the registry.

Every job runs inside an app context of the gateway's own app, so job code
reads ``app.config`` and the same Redis and metrics as the web workers. The
``jobs worker`` command hands its app over with :func:`set_worker_app` (its forked
work horses inherit it); a job picked up by any other worker is refused with a
clear error rather than run against an app this module would have to build (the
factory imports the areas, so an area building the factory would run the import
graph upward).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from core.redis import REDIS_UNAVAILABLE
from gateway.jobs.registry import JobInputError, JobSpec, get_spec, validate_args
from gateway.metrics import recorder
from gateway.ratelimit.tokens import TokenQuotaError

ENTRY_POINT = "gateway.jobs.tasks.execute"
ERROR_META = "error"
MAX_ERROR_LENGTH = 500
log = logging.getLogger(__name__)
_worker_app: Flask | None = None


def set_worker_app(app: Flask) -> None:
    global _worker_app
    _worker_app = app


class NoWorkerApp(RuntimeError):
    """A job ran in a worker that the ``jobs worker`` command did not start."""


def worker_app() -> Flask:
    if _worker_app is None:
        raise NoWorkerApp("gateway jobs run under `flask --app wsgi jobs worker`, which provides their app")
    return _worker_app


def client_message(exc: BaseException, spec: JobSpec | None) -> str:
    """One line a client may see: the reason, never a traceback or internal detail."""
    if isinstance(exc, (JobInputError, TokenQuotaError)):  # written for clients; never retried
        message = str(exc)
    elif isinstance(exc, JobTimeoutException):
        limit = spec.timeout_seconds if spec else "its"
        message = f"The job ran longer than its {limit}-second limit"
    elif isinstance(exc, REDIS_UNAVAILABLE):
        message = "The data store was unavailable"
    elif spec is not None and spec.transient(exc):
        # Transient upstream errors (AgentBackendError) carry a message written for clients.
        message = f"{type(exc).__name__}: {exc}"
    else:
        message = f"Internal error ({type(exc).__name__}); see the worker log"
    first_line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    return first_line[:MAX_ERROR_LENGTH]


def _note_failure(exc: BaseException, spec: JobSpec | None) -> None:
    """Keep the client's one-line error on the job; stop retries that cannot help."""
    job = get_current_job()
    if job is None:
        return
    if spec is None or not spec.transient(exc):
        job.retries_left = 0  # read by the worker right after this job raises
    job.meta[ERROR_META] = client_message(exc, spec)
    try:
        job.save_meta()
    except REDIS_UNAVAILABLE:
        log.warning("could not save the error of job %s: Redis unavailable", job.id)


def execute(name: str, args: dict[str, Any]) -> Any:
    """Run the registered job ``name`` with ``args`` (validated again: the queue is input too)."""
    app = worker_app()
    spec: JobSpec | None = None
    with app.app_context():
        try:
            spec = get_spec(name)
            return spec.run(app, validate_args(spec, args))
        except BaseException as exc:
            _note_failure(exc, spec)
            raise
        finally:
            recorder.flush(heartbeat=False)  # a work horse exits with os._exit: flush its counts now
