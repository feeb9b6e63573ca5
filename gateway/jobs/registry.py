"""The named jobs a client may enqueue: a closed registry, nothing imported by name.

A client names a job; the gateway looks the name up here, validates the
arguments with the job's pydantic model and enqueues one fixed function
(``gateway.jobs.tasks.execute``) with that name. A name outside this table is
refused, so a client can never make a worker import or call anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from flask import Flask
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from auth.scopes import ADMIN, JOBS_WRITE
from core.echo import clip
from core.redis import REDIS_UNAVAILABLE

if TYPE_CHECKING:
    from rq import Retry


@dataclass(frozen=True)
class RetryPolicy:
    """Retries of a job: attempts and the delay (seconds) before each.

    A plain value turned into an ``rq.Retry`` only when a job is enqueued, so the
    registry (read by the /jobs views' schemas) does not load rq into every web
    worker at start-up.
    """

    max: int
    intervals: tuple[int, ...]

    def to_rq(self) -> Retry:
        from rq import Retry

        return Retry(max=self.max, interval=list(self.intervals))


# Backoff for transient failures: a few attempts spread over about two minutes.
TRANSIENT_RETRY = RetryPolicy(max=3, intervals=(10, 30, 90))


class JobInputError(ValueError):
    """Arguments a job cannot run with: never retried, shown to the client as is."""


class NoArgs(BaseModel):
    """A job that takes no arguments."""

    model_config = ConfigDict(extra="forbid")


class AgentRunArgs(BaseModel):
    """``agent.run``: one prompt, answered by the configured agent backend."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(min_length=1, max_length=4000)

    @field_validator("prompt")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt cannot be blank")
        return value


def _agent_run(app: Flask, args: AgentRunArgs) -> dict[str, Any]:
    """``{"reply", "usage"}``; the tokens count on the owner's key's token quota."""
    from rq import get_current_job

    from gateway.agents.jobrun import run_prompt

    job = get_current_job()
    owner = str(job.meta.get("owner") or "") if job is not None else ""
    return run_prompt(app, args.prompt, owner=owner)


def _sweep_expired(app: Flask, args: NoArgs) -> dict[str, int]:
    from auth import keys
    from core.extensions import RedisStore

    return {"removed": keys.sweep_expired(RedisStore.client(app))}


def _agent_failure_is_transient(exc: BaseException) -> bool:
    from gateway.agents.backends import AgentBackendError, AgentRequestRefused

    # A request the upstream refused (a 4xx) fails the same way on every retry.
    if isinstance(exc, AgentRequestRefused):
        return False
    return isinstance(exc, (AgentBackendError, *REDIS_UNAVAILABLE))


def _redis_failure(exc: BaseException) -> bool:
    return isinstance(exc, REDIS_UNAVAILABLE)


@dataclass(frozen=True)
class JobSpec:
    """One registered job: its argument model, its work, and how failures are handled."""

    name: str
    summary: str
    args: type[BaseModel]
    run: Callable[[Flask, Any], Any]
    transient: Callable[[BaseException], bool]
    retry: RetryPolicy | Retry | None = TRANSIENT_RETRY  # an rq.Retry is used as it is
    timeout_seconds: int = 300
    # The scope a caller needs to enqueue it: maintenance jobs touch every tenant's data.
    scope: str = JOBS_WRITE


REGISTRY: dict[str, JobSpec] = {
    spec.name: spec
    for spec in (
        JobSpec(
            "agent.run",
            "Run the agent on one prompt; the result is its reply.",
            AgentRunArgs,
            _agent_run,
            _agent_failure_is_transient,
        ),
        JobSpec(
            "keys.sweep_expired",
            "Remove look-ups of API keys that expired long ago; the result counts them.",
            NoArgs,
            _sweep_expired,
            _redis_failure,
            timeout_seconds=600,
            scope=ADMIN,
        ),
    )
}


def get_spec(name: str) -> JobSpec:
    """The registered job called ``name``, or JobInputError."""
    spec = REGISTRY.get(name)
    if spec is None:
        raise JobInputError(f"Unknown job '{clip(name)}'; registered jobs: {', '.join(sorted(REGISTRY))}")
    return spec


def validate_args(spec: JobSpec, args: Mapping[str, Any] | None) -> BaseModel:
    """The job's arguments as its model, or JobInputError with a one-line reason."""
    try:
        return spec.args.model_validate(dict(args or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        # An unknown argument's name is the client's own text: bounded.
        where = ".".join(clip(part) for part in first["loc"]) or "args"
        raise JobInputError(f"Invalid args for '{spec.name}': {where}: {first['msg']}") from None
