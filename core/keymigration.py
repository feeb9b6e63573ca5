"""One-shot move of the untagged key layout of earlier releases to the tagged one (core.redis.KEYS).

Earlier releases named keys ``gw:<area>:<what>:<id>`` with no hash tag; a Redis Cluster
needs every key of one script or MULTI in one slot, so names now carry a tag
(``gw:keys:{k:<id>}:record``). ``flask redis migrate-keys`` renames every old-layout key of
stored data (API keys, users, login sessions, audit, agents, events, jobs' indexes,
idempotency records, metrics) to its new name. It is idempotent: a key already moved is no
longer found under its old name, so a second run moves nothing. It runs where deployments
start (render.yaml's preDeployCommand, the Docker image's entry command, devtools/run.py).

Not moved: rate-limit counters (``gw:ratelimit:fw:...``): they run out with their windows
(at most the longest configured window, a day by default); for that long a client's count
starts again from zero once. Health marks (``gw:health:...``) live seconds.

A new name that already exists (the new release wrote it first) is never overwritten: the
old key is left in place and counted as a conflict, for an operator to look at.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click
import redis
from flask.cli import AppGroup

from core.redis import KEY_PREFIX, KEYS, is_cluster

Rule = tuple[re.Pattern[str], Callable[..., str]]


def _rule(pattern: str, new: Callable[..., str]) -> Rule:
    return re.compile(f"^{KEY_PREFIX}:{pattern}$"), new


# Old name -> new name, by the old layout's shapes (ids hold no ':'; owners and e-mails may).
RULES: tuple[Rule, ...] = (
    _rule(r"keys:record:([^:]+)", KEYS.key_record),
    _rule(r"keys:digest:([^:]+)", KEYS.key_digest),
    _rule(r"keys:index", KEYS.keys_index),
    _rule(r"users:record:([^:]+)", KEYS.user_record),
    _rule(r"users:email:(.+)", KEYS.user_email),
    _rule(r"users:index", KEYS.users_index),
    _rule(r"users:enabled", KEYS.users_enabled),
    _rule(r"users:indexed", KEYS.users_indexed),
    _rule(r"sessions:user:(.+)", KEYS.user_sessions),
    _rule(r"sessions:([0-9a-f]{64})", KEYS.login_session),
    _rule(r"audit:log", KEYS.audit_log),
    _rule(r"agents:session:([^:]+)", KEYS.agent_session),
    _rule(r"agents:messages:([^:]+)", KEYS.agent_messages),
    _rule(r"agents:sessions", KEYS.agent_sessions_index),
    _rule(r"agents:owner:(.+)", KEYS.agent_sessions_by_owner),
    _rule(r"agents:stats:messages", KEYS.agent_messages_total),
    _rule(r"agents:stream:([^:]+):frames", KEYS.agent_stream_frames),
    _rule(r"agents:stream:([^:]+)", KEYS.agent_stream),
    _rule(r"agents:streams:(.+)", KEYS.agent_stream_slots),
    _rule(r"agents:reply:([^:]+):([^:]+)", KEYS.agent_reply_claim),
    _rule(r"events:stream", KEYS.events_stream),
    _rule(r"events:owner:(.+)", KEYS.events_by_owner),
    _rule(r"events:idem:([^:]+)", KEYS.event_idempotency),
    _rule(r"metrics:counters", KEYS.metrics_counters),
    _rule(r"metrics:processes", KEYS.metrics_processes),
    _rule(r"jobs:index", KEYS.jobs_index),
    _rule(r"jobs:owner:(.+)", KEYS.jobs_by_owner),
    _rule(r"jobs:unfinished:(.+)", KEYS.jobs_unfinished),
    _rule(r"jobs:claimed:([^:]+)", lambda job_id: KEYS.job_mark(f"rq:job:{job_id}", "claimed")),
    _rule(r"jobs:canceled:([^:]+)", lambda job_id: KEYS.job_mark(f"rq:job:{job_id}", "canceled")),
    _rule(r"idempotency:(.+):([0-9a-f]+)", KEYS.idempotency),
)


def new_name(old: str) -> str | None:
    """The tagged name of an old-layout key, or None (already tagged, a counter, unknown)."""
    parts = old.split(":", 3)
    if len(parts) < 3 or parts[2].startswith("{"):
        return None  # the new layout: gw:<area>:{tag}:...
    for pattern, build in RULES:
        found = pattern.match(old)
        if found:
            return build(*found.groups())
    return None


@dataclass
class Report:
    moved: int = 0
    conflicts: list[str] = field(default_factory=list)


def _old_keys(r: Any) -> Iterator[str]:
    # SCAN, not KEYS: a large store is walked without blocking it (a cluster: every primary).
    for name in r.scan_iter(match=f"{KEY_PREFIX}:*", count=1000):
        yield name.decode() if isinstance(name, bytes) else name


def _move(r: Any, old: str, new: str) -> bool:
    """Rename ``old`` to ``new`` unless ``new`` exists; False when it does (a conflict)."""
    if not is_cluster(r):
        return bool(r.renamenx(old, new))
    # A cluster refuses RENAME across slots: copy (value and expiry), then drop the old key.
    dumped = r.dump(old)
    if dumped is None:
        return True  # expired or moved meanwhile
    ttl = r.pttl(old)
    try:
        r.restore(new, max(int(ttl), 0), dumped)
    except redis.ResponseError as exc:
        if "BUSYKEY" in str(exc):
            return False
        raise
    r.delete(old)
    return True


def migrate_keys(r: Any) -> Report:
    """Move every old-layout key to its tagged name (idempotent; see the module docstring)."""
    report = Report()
    for old in list(_old_keys(r)):
        new = new_name(old)
        if new is None:
            continue
        if _move(r, old, new):
            report.moved += 1
        else:
            report.conflicts.append(old)
    return report


def migrate_while(
    r: Any, seconds: float, interval: float, on_pass: Callable[[Report], None] = lambda _: None
) -> Report:
    """Run :func:`migrate_keys` every ``interval`` seconds for ``seconds`` (then once more):
    during a rolling deploy the old instances keep writing old names (an event, a new key)
    until they are gone, and each pass moves what they wrote since the last. One pass at
    least; the returned report sums them all. Safe beside another run (a rename never
    overwrites), and each pass is a SCAN, so ``interval`` bounds the load it adds."""
    total = Report()
    deadline = time.monotonic() + seconds
    while True:
        last = time.monotonic() >= deadline
        report = migrate_keys(r)
        on_pass(report)
        total.moved += report.moved
        total.conflicts.extend(c for c in report.conflicts if c not in total.conflicts)
        if last:
            return total
        time.sleep(max(0.0, min(interval, deadline - time.monotonic())))


redis_cli = AppGroup("redis", help="Maintain the gateway's Redis data.")


@redis_cli.command("migrate-keys")
@click.option(
    "--watch",
    "watch",
    type=click.FloatRange(min=0),
    default=0,
    show_default=True,
    help="Keep migrating for this many seconds (the rolling deploy's length): old instances "
    "still write old names until they are gone.",
)
@click.option("--interval", type=click.FloatRange(min=0.1), default=30, show_default=True)
def migrate_keys_command(watch: float, interval: float) -> None:
    """Rename keys of the untagged layout of earlier releases (safe to run again)."""
    from core.extensions import get_redis

    if watch <= 0:
        _echo(migrate_keys(get_redis()))
        return
    total = migrate_while(get_redis(), watch, interval, on_pass=_echo)
    click.echo(f"moved {total.moved} keys in all over {watch:g} s")


def _echo(report: Report) -> None:
    click.echo(f"moved {report.moved} keys to the tagged layout")
    for old in report.conflicts:
        click.echo(f"  left {old}: its new name exists already", err=True)
