"""Jobs service: enqueue registered jobs, read their state, cancel them.

The gateway keeps its own index of the jobs created through it (newest first,
bounded), globally and per owner, so GET /jobs lists real RQ job records
without scanning RQ's keys; entries whose RQ record expired are dropped lazily.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import redis
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import CanceledJobRegistry

from core.redis import KEYS, replicated
from gateway.jobs import guard, limits
from gateway.jobs.queue import get_queue, serializer
from gateway.jobs.registry import RetryPolicy, get_spec, validate_args
from gateway.jobs.tasks import ENTRY_POINT, ERROR_META

INDEX_MAX = 1000  # jobs remembered per index (global and per owner)
RESULT_TTL_SECONDS = 7 * 24 * 3600  # finished and failed jobs stay readable for a week

# RQ's statuses folded into the contract's six.
STATUS_NAMES: dict[str, str] = {
    JobStatus.CREATED: "queued",
    JobStatus.QUEUED: "queued",
    JobStatus.DEFERRED: "queued",
    JobStatus.READY_TO_ENQUEUE: "queued",
    JobStatus.RATE_LIMITED: "queued",
    JobStatus.SCHEDULED: "scheduled",
    JobStatus.STARTED: "started",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "canceled",
    JobStatus.CANCELED: "canceled",
}
JOB_ID = re.compile(r"[0-9a-f]{32}")
FINAL_STATUSES = frozenset({"finished", "failed", "canceled"})
STOP_ATTEMPTS, STOP_RETRY_SECONDS = 20, 0.05


class JobNotFound(Exception):
    """No such job, or not one the caller may see."""


class JobAlreadyDone(Exception):
    """The job already ended; there is nothing to cancel."""

    def __init__(self, status: str) -> None:
        super().__init__(status)
        self.status = status


def index_key(owner: str | None = None) -> str:
    return KEYS.jobs_by_owner(owner) if owner else KEYS.jobs_index()


def enqueue(
    conn: redis.Redis, *, name: str, args: Mapping[str, Any] | None, owner: str, max_queued: int
) -> str:
    """Validate and enqueue a registered job; returns its id.

    Raises JobInputError, or limits.QueuedJobsLimitReached when ``owner`` already has
    ``max_queued`` jobs unfinished (JOBS_QUEUED_MAX).
    """
    spec = get_spec(name)
    clean = validate_args(spec, args).model_dump()
    job_id = uuid.uuid4().hex
    # The place, the index and RQ's own writes on one connection, then WAIT (replicated).
    with replicated(conn):
        _store(conn, spec, clean, job_id=job_id, owner=owner, max_queued=max_queued)
    return job_id


def _store(
    conn: redis.Redis, spec: Any, clean: dict[str, Any], *, job_id: str, owner: str, max_queued: int
) -> None:
    limits.take_place(conn, owner=owner, job_id=job_id, limit=max_queued)
    # Index first: a crash before the enqueue leaves only an id the listing prunes.
    pipe = conn.pipeline(transaction=True)
    for index in (index_key(), index_key(owner)):
        pipe.zadd(index, {job_id: time.time()})
        pipe.zremrangebyrank(index, 0, -INDEX_MAX - 1)
    pipe.execute()
    get_queue(conn, owner).enqueue(
        ENTRY_POINT,
        args=(spec.name, clean),
        job_id=job_id,
        description=spec.name,  # RQ logs the description: never the arguments
        meta={"name": spec.name, "owner": owner},
        retry=spec.retry.to_rq() if isinstance(spec.retry, RetryPolicy) else spec.retry,
        job_timeout=spec.timeout_seconds,
        result_ttl=RESULT_TTL_SECONDS,
        failure_ttl=RESULT_TTL_SECONDS,
    )


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def status_of(job: Job) -> str:
    return STATUS_NAMES.get(job.get_status(refresh=False), "queued")


def summary(job: Job) -> dict[str, Any]:
    """What GET /jobs shows of one job."""
    return {
        "id": job.id,
        "name": job.meta.get("name"),
        "status": status_of(job),
        "enqueued_at": _iso(job.enqueued_at or job.created_at),
        "ended_at": _iso(job.ended_at),
    }


def detail(job: Job) -> dict[str, Any]:
    """What GET /jobs/<id> shows: timestamps, arguments and the result or the error."""
    status = status_of(job)
    view = {
        **summary(job),
        "args": job.args[1] if len(job.args) > 1 else {},
        "created_by": job.meta.get("owner"),
        "started_at": _iso(job.started_at),
        "retries_left": job.retries_left,
    }
    # A job waiting for a retry also shows why its last attempt failed.
    if status == "finished":
        view.update(_result_fields(job.return_value()))
    elif job.meta.get(ERROR_META):
        view["error"] = job.meta[ERROR_META]
    elif status == "failed":
        view["error"] = "The job failed; see the worker log"
    elif status == "canceled":
        view["error"] = "The job was canceled"
    return view


def _result_fields(value: Any) -> dict[str, Any]:
    """``result`` as CONTRACT section 3 has it, and an agent reply's ``usage`` beside it.

    ``agent.run`` returns ``{"reply", "usage"}``; its ``result`` stays the reply text, as
    FastAPI-era clients read it, and the token counts ride next to it (section 8).
    """
    if isinstance(value, dict) and set(value) == {"reply", "usage"}:
        return {"result": value["reply"], "usage": value["usage"]}
    return {"result": value}


def fetch(conn: redis.Redis, job_id: str, *, owner: str | None) -> Job:
    """The job, if it exists and ``owner`` (None: admin) may see it; else JobNotFound."""
    if not JOB_ID.fullmatch(job_id):
        raise JobNotFound  # ids are ours (uuid4 hex): anything else never reaches RQ
    try:
        job = Job.fetch(job_id, connection=conn, serializer=serializer())
    except NoSuchJobError:
        raise JobNotFound from None
    if owner is not None and job.meta.get("owner") != owner:
        raise JobNotFound
    return job


class UnknownCursor(ValueError):
    """``after`` names no job of the listing."""


def list_jobs(
    conn: redis.Redis, *, owner: str | None, limit: int, after: str | None = None
) -> tuple[list[dict[str, Any]], int]:
    """Newest first: up to ``limit`` job summaries older than job ``after``, and how many there are."""
    index = index_key(owner)
    start = 0
    if after is not None:
        rank = conn.zrevrank(index, after) if JOB_ID.fullmatch(after) else None
        if rank is None:
            raise UnknownCursor(after)
        start = int(rank) + 1
    ids = [_text(i) for i in conn.zrevrange(index, start, start + limit - 1)]
    jobs = Job.fetch_many(ids, connection=conn, serializer=serializer())
    gone = [job_id for job_id, job in zip(ids, jobs, strict=True) if job is None]
    if gone:
        conn.zrem(index, *gone)
    return [summary(job) for job in jobs if job is not None], int(conn.zcard(index))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def cancel(conn: redis.Redis, job_id: str, *, owner: str | None) -> Job:
    """Cancel a waiting job, or ask the worker running it to stop. Raises JobAlreadyDone.

    The decision is one script against the worker's claim (gateway.jobs.guard): a job this
    returns as canceled will never run.
    """
    job = fetch(conn, job_id, owner=owner)
    outcome = guard.cancel(conn, job.id)
    if outcome == "gone":
        raise JobNotFound
    if outcome == "canceled":
        # RQ's bookkeeping of canceled jobs; the status is already set, atomically.
        CanceledJobRegistry(job.origin, connection=conn, serializer=serializer()).add(job)
    elif outcome == "started":
        _ask_to_stop(conn, job)
    else:
        ended = outcome.removeprefix("ended:")
        raise JobAlreadyDone(STATUS_NAMES.get(ended, ended))
    job.refresh()
    return job


def _ask_to_stop(conn: redis.Redis, job: Job) -> None:
    """Stop a running job. Its start is claimed a moment before the work horse names its worker."""
    for _ in range(STOP_ATTEMPTS):
        try:
            send_stop_job_command(conn, job.id, serializer=serializer())
            return
        except InvalidJobOperation:
            time.sleep(STOP_RETRY_SECONDS)
