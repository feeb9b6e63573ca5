"""Cancel against start, decided atomically: a 200 "canceled" means the job never runs.

RQ's own ``Job.cancel()`` reads the status and then writes it, while a worker may have taken
the job off its queue in between and go on to run it. Here both sides are one script each on
the jobs Redis, so Redis orders them:

* the worker, after taking a job and before forking its work horse, *claims* the start
  (``claim_start``): refused when a cancel marker exists;
* a cancel (``cancel``) first removes the job from its queue list or its scheduled
  registry (nobody can take it then); failing that, a job whose start is claimed is running
  (the caller asks it to stop); a job neither waiting nor claimed is in a worker's hands
  before its start, so the script leaves the marker that makes the claim fail.

The claim lives while one attempt runs; the worker drops it when the attempt ends, so a job
waiting for a retry is canceled from the queue like any other.
"""

from __future__ import annotations

import redis

from core.redis import KEYS, LuaScript

MARK_TTL_SECONDS = 7 * 24 * 3600  # as long as RQ keeps an ended job
RQ_PREFIX = "rq:"

_CANCEL = LuaScript(
    """
local id = ARGV[1]
local origin = redis.call('HGET', KEYS[1], 'origin')
if not origin then return 'gone' end
local removed = redis.call('LREM', ARGV[2] .. 'queue:' .. origin, 0, id)
removed = removed + redis.call('ZREM', ARGV[2] .. 'scheduled:' .. origin, id)
local status = redis.call('HGET', KEYS[1], 'status')
if removed == 0 then
  if status == 'finished' or status == 'failed' or status == 'stopped' or status == 'canceled' then
    return 'ended:' .. status
  end
  if redis.call('EXISTS', KEYS[2]) == 1 then return 'started' end
end
redis.call('SET', KEYS[3], '1', 'EX', ARGV[3])
redis.call('HSET', KEYS[1], 'status', 'canceled')
return 'canceled'
"""
)

_CLAIM = LuaScript(
    """
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
redis.call('SET', KEYS[1], '1', 'EX', ARGV[1])
return 1
"""
)


def _keys(job_id: str) -> tuple[str, str, str]:
    job = f"{RQ_PREFIX}job:{job_id}"
    return (job, KEYS.job_mark(job, "claimed"), KEYS.job_mark(job, "canceled"))


def cancel(conn: redis.Redis, job_id: str) -> str:
    """``canceled`` (it will never run), ``started``, ``gone``, or ``ended:<RQ status>``."""
    outcome = _CANCEL(conn, list(_keys(job_id)), [job_id, RQ_PREFIX, MARK_TTL_SECONDS])
    return outcome.decode() if isinstance(outcome, bytes) else str(outcome)


def claim_start(conn: redis.Redis, job_id: str, *, ttl: int) -> bool:
    """True when the worker may run the job; False when it was canceled first."""
    _, claimed, canceled = _keys(job_id)
    return bool(int(_CLAIM(conn, [claimed, canceled], [ttl])))


def release_start(conn: redis.Redis, job_id: str) -> None:
    """The attempt ended (finished, failed, or back in line for a retry)."""
    conn.delete(_keys(job_id)[1])
