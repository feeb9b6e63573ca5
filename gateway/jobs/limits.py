"""JOBS_QUEUED_MAX: the jobs one owner may have unfinished (waiting, scheduled for a retry, or
running), held exactly across every web worker and instance.

Each owner has a sorted set of its unfinished job ids, scored by when the place was taken.
Taking a place is one script: it first lets go of the jobs that ended (RQ's own ``status``
of the job says so: finished, failed, stopped, canceled, or the record expired), then counts
and adds. Redis runs a script without interleaving others, so concurrent requests cannot
pass the cap between a count and an add. Nothing has to remember to free a place: a job
that ends frees it the next time its owner enqueues.
"""

from __future__ import annotations

import time

import redis

from core.redis import KEYS, LuaScript

# A place is taken just before RQ writes the job: until then the job has no record. A
# place whose job never appeared (the request died in between) is let go after this.
RESERVATION_GRACE_SECONDS = 60
# No one can say when a running job ends; a client polling its jobs meanwhile is fine.
RETRY_AFTER_SECONDS = 5
SET_TTL_SECONDS = 7 * 24 * 3600  # refreshed by each enqueue; RQ keeps ended jobs as long
RQ_JOB_PREFIX = "rq:job:"  # rq.job.Job.redis_job_namespace_prefix, without importing rq here

# RQ runs on a standalone or Sentinel Redis only (never Cluster), so the script may read
# RQ's job hashes by name instead of declaring each key.
_TAKE_PLACE = LuaScript(
    """
local ended = {finished = true, failed = true, stopped = true, canceled = true}
local now, grace = tonumber(ARGV[3]), tonumber(ARGV[4])
local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local unfinished = 0
for i = 1, #members, 2 do
  local id, taken_at = members[i], tonumber(members[i + 1])
  local status = redis.call('HGET', ARGV[5] .. id, 'status')
  local live
  if status then live = not ended[status] else live = taken_at > now - grace end
  if live then unfinished = unfinished + 1 else redis.call('ZREM', KEYS[1], id) end
end
if unfinished >= tonumber(ARGV[2]) then return 0 end
redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""
)


class QueuedJobsLimitReached(Exception):
    """The owner already has JOBS_QUEUED_MAX jobs unfinished."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"{limit} jobs unfinished")
        self.limit = limit
        self.retry_after = RETRY_AFTER_SECONDS


def take_place(conn: redis.Redis, *, owner: str, job_id: str, limit: int) -> None:
    """Count ``job_id`` among ``owner``'s unfinished jobs, or raise QueuedJobsLimitReached."""
    args = (job_id, limit, time.time(), RESERVATION_GRACE_SECONDS, RQ_JOB_PREFIX, SET_TTL_SECONDS)
    if not int(_TAKE_PLACE(conn, [KEYS.jobs_unfinished(owner)], list(args))):
        raise QueuedJobsLimitReached(limit)
