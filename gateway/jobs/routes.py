"""HTTP views for jobs (CONTRACT section 7): thin wrappers over gateway.jobs.service.

Each view imports ``service`` (and with it rq) when it runs: web workers that never
serve /jobs do not carry rq's modules (about 2 MB of RSS each).
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, current_app, jsonify
from pydantic import BaseModel, Field

from auth import current_identity, require_scope
from auth.scopes import ADMIN, JOBS_READ, JOBS_WRITE
from core import idempotency
from core.errors import APIError
from core.extensions import get_redis
from core.schemas import Schema, endpoint, parse_json, parse_query
from gateway.jobs.limits import QueuedJobsLimitReached
from gateway.jobs.queue import app_connection
from gateway.jobs.registry import REGISTRY, JobInputError
from gateway.ratelimit import tokens

bp = Blueprint("jobs", __name__)
TAGS = ("jobs",)


class JobIn(Schema):
    """A registered job's name and its arguments."""

    # The document lists the registered names; validation keeps its own message for others.
    name: str = Field(min_length=1, max_length=100, json_schema_extra={"enum": sorted(REGISTRY)})
    args: dict[str, Any] = Field(default_factory=dict, description="The job's arguments (see the registry)")

    error_messages = {"name": "name is required", "args": "args must be a JSON object"}


class JobsQuery(Schema):
    """Paging, newest first: jobs older than job ``after``; admin may pick one ``owner``."""

    limit: int = Field(default=50, ge=1, le=100)
    after: str | None = Field(
        default=None, pattern=r"^[0-9a-f]{32}$", description="A job id from the last page"
    )
    owner: str | None = Field(
        default=None, min_length=1, max_length=200, description="Admin only: that owner's jobs"
    )

    error_messages = {
        "limit": "limit must be an integer between 1 and 100",
        "after": "after must be a job id from an earlier page",
        "owner": "owner must be 1 to 200 characters",
    }


class JobQueued(BaseModel):
    job_id: str
    status: str = "queued"


class JobSummary(BaseModel):
    id: str
    name: str | None
    status: str
    enqueued_at: str | None
    ended_at: str | None


class JobList(BaseModel):
    jobs: list[JobSummary]
    total: int = Field(description="Every job of the listing, not only this page")


class JobDetail(JobSummary):
    args: dict[str, Any]
    created_by: str | None
    started_at: str | None
    retries_left: int | None = None
    result: Any = None
    usage: dict[str, Any] | None = None  # agent.run: the reply's tokens
    error: str | None = None


def _viewer() -> str | None:
    """Whose jobs the caller sees: its own, or every job for admin (None)."""
    identity = current_identity()
    assert identity is not None  # the access guard ran first
    return None if ADMIN in identity.scopes else identity.owner


def _fetch(job_id: str) -> Any:
    from gateway.jobs import service

    try:
        return service.fetch(app_connection(), job_id, owner=_viewer())
    except service.JobNotFound:
        raise APIError(404, "Job not found") from None


@bp.post("/jobs")
@require_scope(JOBS_WRITE)
@endpoint(
    "Enqueue a registered job",
    tags=TAGS,
    body=JobIn,
    responses={
        202: JobQueued,
        409: "Idempotency-Key reused with a different body, or its first request is still running",
        403: "The job needs a scope the caller lacks (maintenance jobs need admin)",
        429: "The caller already has JOBS_QUEUED_MAX jobs unfinished, or (agent.run) its key's "
        "token quota is used up",
    },
)
def create_job() -> tuple[Response, int]:
    """Validate and enqueue a job from the registry (unknown names are refused)."""
    from gateway.jobs import service

    body = parse_json(JobIn)
    identity = current_identity()
    assert identity is not None
    spec = REGISTRY.get(body.name)
    if spec is not None and not identity.has_scope(spec.scope):
        raise APIError(403, "Forbidden", f"The job '{spec.name}' needs the '{spec.scope}' scope.")
    limit = current_app.config["JOBS_QUEUED_MAX"]

    def create() -> idempotency.Answer:
        if body.name == "agent.run":  # its key's token quota: 429 when nothing is left
            tokens.check_remaining(identity)
        try:
            job_id = service.enqueue(
                app_connection(), name=body.name, args=body.args, owner=identity.owner, max_queued=limit
            )
        except JobInputError as exc:
            raise APIError(400, str(exc)) from None
        except QueuedJobsLimitReached as exc:
            raise _too_many_jobs(exc) from None
        return idempotency.Answer(JobQueued(job_id=job_id).model_dump(), 202)

    # A retry with the same Idempotency-Key gets the first job back, not a second job.
    return idempotency.respond(
        get_redis(), scope="jobs", owner=identity.owner, body=body.model_dump(), create=create
    )


def _too_many_jobs(exc: QueuedJobsLimitReached) -> APIError:
    return APIError(
        429,
        "Too many unfinished jobs",
        f"This identity already has {exc.limit} jobs waiting or running (JOBS_QUEUED_MAX); "
        "retry when some have finished.",
        headers={"Retry-After": str(exc.retry_after)},
        extra={"retry_after": exc.retry_after},
    )


@bp.get("/jobs")
@require_scope(JOBS_READ)
@endpoint("List jobs, newest first", tags=TAGS, query=JobsQuery, responses={200: JobList})
def list_jobs() -> Response:
    """The caller's jobs (every job for admin), newest first."""
    from gateway.jobs import service

    query = parse_query(JobsQuery)
    owner = _viewer()
    if query.owner is not None:
        if owner is not None:
            raise APIError(403, "Forbidden", "Only admin may list another owner's jobs.")
        owner = query.owner
    try:
        jobs, total = service.list_jobs(app_connection(), owner=owner, limit=query.limit, after=query.after)
    except service.UnknownCursor:
        raise APIError(400, JobsQuery.error_messages["after"]) from None
    # The next page: pass the last job's id as ``after``.
    return jsonify({"jobs": jobs, "total": total})


@bp.get("/jobs/<job_id>")
@require_scope(JOBS_READ)
@endpoint("Job detail", tags=TAGS, responses={200: JobDetail, 404: "Job not found"})
def get_job(job_id: str) -> Response:
    """Status, timestamps and the result or error of one job."""
    from gateway.jobs import service

    return jsonify(service.detail(_fetch(job_id)))


@bp.delete("/jobs/<job_id>")
@require_scope(JOBS_WRITE)
@endpoint(
    "Cancel a job",
    tags=TAGS,
    responses={
        200: JobDetail,
        202: "Stop requested for a running job",
        404: "Job not found",
        409: "The job already ended",
    },
)
def cancel_job(job_id: str) -> tuple[Response, int]:
    """Cancel a waiting job (200), or stop a running one (202); 409 once it has ended."""
    from gateway.jobs import service

    try:
        job = service.cancel(app_connection(), job_id, owner=_viewer())
    except service.JobAlreadyDone as exc:
        raise APIError(409, f"Job already {exc.status}") from None
    except service.JobNotFound:
        raise APIError(404, "Job not found") from None
    view = service.detail(job)
    return jsonify(view), 200 if view["status"] == "canceled" else 202
