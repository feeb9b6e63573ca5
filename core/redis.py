"""The one place that builds Redis clients and names Redis keys.

redis-py's defaults let a stalled server hold a worker for many seconds; every
client here has connect and read timeouts well under a second, a bounded retry
and a bounded pool, so a Redis fault becomes a quick 503 instead of a hang. Its
connections also name the refusals redis-py leaves as a bare ResponseError, and
close themselves when the server stopped being the primary (docs/operations.md,
"Redis faults").
"""

from __future__ import annotations

import contextlib
import threading
import time
import weakref
from collections.abc import Callable
from queue import Empty
from typing import Any

import redis
from redis import exceptions as rex
from redis.backoff import ExponentialBackoff
from redis.cluster import RedisCluster
from redis.retry import Retry

from core.background import BackgroundLoop


class RedisRefusedError(redis.ResponseError):
    """Redis refused a command for a reason that passes, one redis-py has no class for:
    BUSY (a script or module command holds the server), MISCONF (it cannot persist, so it
    refuses writes), NOREPLICAS (fewer replicas in sync than ``min-replicas-to-write``)."""


# A server that stopped being the primary (a failover, a REPLICAOF): the socket must go.
PRIMARY_LOST: tuple[type[Exception], ...] = (rex.ReadOnlyError, rex.MasterDownError)

# Errors that mean "Redis cannot serve this right now" (503), as opposed to a bug in a
# command (WRONGTYPE, a syntax error: 500, logged). Listed by class on purpose, so that
# a ResponseError of a programming mistake is never answered as a passing outage.
REDIS_UNAVAILABLE: tuple[type[Exception], ...] = (
    redis.ConnectionError,  # refused, reset, AUTH failures; BusyLoadingError (LOADING) is one
    redis.TimeoutError,
    rex.OutOfMemoryError,  # OOM: maxmemory reached under noeviction
    *PRIMARY_LOST,
    rex.TryAgainError,
    # A cluster mid-failover or mid-resharding: CLUSTERDOWN, a slot with no primary yet,
    # redirections beyond redis-py's retries ("TTL exhausted"), MOVED/ASK left over.
    rex.ClusterError,  # ClusterDownError is one
    rex.SlotNotCoveredError,
    rex.AskError,  # MovedError is one
    RedisRefusedError,
)
# redis-py's RedisClusterException is mostly a usage error (a bug: 500), except when no node
# answers while it maps the cluster; those are told by their message alone.
_CLUSTER_UNREACHABLE = ("cannot be connected", "could not agree on a valid slots cache")

# First words of error replies that redis-py leaves as a bare ResponseError.
_REFUSED_CODES = frozenset({"BUSY", "MISCONF", "NOREPLICAS"})
# Every reply code that means "not now", for errors from a client not built here (NOSCRIPT
# included: a script cache emptied by a flush or a failover; callers reload, else 503).
_UNAVAILABLE_CODES = _REFUSED_CODES | {
    "OOM", "READONLY", "LOADING", "MASTERDOWN", "NOSCRIPT", "TRYAGAIN", "CLUSTERDOWN", "MOVED", "ASK",
}  # fmt: skip
_PIPELINE_PREFIX = "caused error: "  # redis-py's annotation of a pipeline's failed command


def reply_code(exc: BaseException) -> str:
    """The first word of a bare error reply ("BUSY", "WRONGTYPE"), also inside redis-py's
    pipeline annotation; empty for other errors (their class says what they are)."""
    if type(exc) is not redis.ResponseError:
        return ""
    text = str(exc)
    _, found, rest = text.partition(_PIPELINE_PREFIX)
    return (rest if found else text).split(" ", 1)[0]


def is_unavailable(exc: BaseException) -> bool:
    """True when ``exc`` means Redis cannot serve now (answer 503), False for anything else."""
    if isinstance(exc, REDIS_UNAVAILABLE) or reply_code(exc) in _UNAVAILABLE_CODES:
        return True
    return isinstance(exc, rex.RedisClusterException) and any(m in str(exc) for m in _CLUSTER_UNREACHABLE)


def failure_label(exc: BaseException) -> str:
    """A name for logs: the class, and a bare reply's code; never the message, which may
    carry a command's arguments (key names, values) after redis-py's annotation."""
    code = reply_code(exc)
    return f"{type(exc).__name__} {code}" if code else type(exc).__name__


class _FaultAware:
    """Mixed into a pool's connection class: classify refusals, leave a demoted primary.

    ``primary_epoch`` is shared by the pool's connections: it grows each time one of them
    meets READONLY or MASTERDOWN, and a connection opened in an earlier epoch reconnects
    before its next command. That reaches the connections checked out for long (the rate
    limiter keeps some aside) without closing a socket another thread may be reading.
    """

    pool_ref: Callable[[], redis.ConnectionPool | None] = staticmethod(lambda: None)
    primary_epoch: list[int] = [0]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch = self.primary_epoch[0]  # it will connect to whatever is primary now

    @property
    def stale(self) -> bool:
        """Opened before a connection of the pool met READONLY or MASTERDOWN."""
        return self._epoch != self.primary_epoch[0]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.stale:
            self.disconnect()  # type: ignore[attr-defined]
            self._epoch = self.primary_epoch[0]  # the connect() inside send belongs to this epoch
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except PRIMARY_LOST:
            self._leave_old_primary()
            raise
        except redis.ResponseError as exc:
            if reply_code(exc) in _REFUSED_CODES:
                raise RedisRefusedError(*exc.args) from None
            raise

    def _leave_old_primary(self) -> None:
        # Every socket of the pool leads to a server that is no longer the primary: the
        # next command of each connects to whatever the URL names now (after a failover),
        # and no stale connection is kept. This one and the idle ones close now; a
        # pipeline's later replies then read as ConnectionError, as much a 503, and a
        # replica applied none of its writes, so redis-py's one retry is safe.
        self.primary_epoch[0] += 1
        self.disconnect()  # type: ignore[attr-defined]
        pool = self.pool_ref()
        if pool is not None:
            pool.disconnect(inuse_connections=False)


class _FaultAwarePool(redis.BlockingConnectionPool):
    """Closes a stale connection when it comes back, so that idle sockets in the pool all
    lead to the current primary (one in use at the pool-wide close was not reached by it)."""

    def release(self, connection: Any) -> None:
        if getattr(connection, "stale", False):
            connection.disconnect()
        super().release(connection)


class _ReapingPool(_FaultAwarePool):
    """Gives idle connections back: a burst grows the pool to its maximum, and redis-py never
    shrinks it, so a managed plan's client limit fills up (89 became 477 after 900 clients).

    A connection released here is stamped; a per-process reaper (:func:`_reap_loop`) closes
    those idle for ``idle_seconds`` beyond the ``min_idle`` most recent. A closed one stays
    in the pool and reconnects when next handed out (``get_connection`` connects it)."""

    idle_seconds = 0.0  # 0: never reap
    min_idle = 2
    next_reap = 0.0  # time.monotonic() of the reaper's next look at this pool

    def release(self, connection: Any) -> None:
        connection.gw_idle_since = time.monotonic()
        super().release(connection)
        if self.idle_seconds > 0:
            _ensure_reaper(self)

    def reap_idle(self, now: float | None = None) -> int:
        """Close the connections idle too long above the floor; the number closed."""
        now = time.monotonic() if now is None else now
        queue = self.pool
        taken: list[Any] = []
        # Taken out, not looked at in place: no other thread may hand one out while it closes.
        # Under gevent nothing here yields, so no greenlet even sees the queue short.
        with contextlib.suppress(Empty):
            while True:
                taken.append(queue.get_nowait())  # most recently released first (LIFO)
        kept = closed = 0
        for conn in taken:
            since = getattr(conn, "gw_idle_since", None)
            if since is None:  # a slot BlockingConnectionPool never filled (None), or closed: no socket
                continue
            if kept < self.min_idle or now - since < self.idle_seconds:
                kept += 1
            else:
                conn.disconnect()
                conn.gw_idle_since = None
                closed += 1
        for conn in reversed(taken):
            queue.put_nowait(conn)
        return closed


REAP_TICK_SECONDS = 0.5
_reaped: weakref.WeakSet[_ReapingPool] = weakref.WeakSet()
_reaped_lock = threading.Lock()


def _reap_all() -> None:
    # Each pool is looked at every idle_seconds / 2: a connection goes within 1.5 x idle_seconds.
    with _reaped_lock:  # a copy: another thread may add a pool while this one walks them
        pools = list(_reaped)
    now = time.monotonic()
    for pool in pools:
        if now >= pool.next_reap:
            pool.next_reap = now + pool.idle_seconds / 2
            with contextlib.suppress(Exception):  # a reaper must outlive any one pool's trouble
                pool.reap_idle(now)


# One reaper per process (after a fork too: gunicorn's workers, RQ's work horses).
_reaper = BackgroundLoop("redis-pool-reaper", REAP_TICK_SECONDS, _reap_all)


def _ensure_reaper(pool: _ReapingPool) -> None:
    if pool not in _reaped:
        with _reaped_lock:
            _reaped.add(pool)
    _reaper.ensure_started()


def _make_fault_aware(pool: redis.ConnectionPool) -> None:
    base = pool.connection_class  # TCP, TLS or unix socket, as the URL's scheme chose
    attrs = {"pool_ref": weakref.ref(pool), "primary_epoch": [0]}
    pool.connection_class = type(f"FaultAware{base.__name__}", (_FaultAware, base), attrs)


KEY_PREFIX = "gw"


def create_redis(
    url: str,
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 200,
    decode_responses: bool = True,
    idle_seconds: float = 0.0,
    min_idle: int = 2,
    **extra: Any,
) -> redis.Redis:
    """Build a client from a redis://, rediss:// or unix:// URL with bounded waits.

    One retry with a short backoff rides over a dropped idle connection without
    doubling the wait when Redis is really gone.

    The pool *blocks* (up to ``socket_timeout``) when all ``max_connections`` are
    in use, rather than failing at once: under gevent a burst of greenlets (say a
    thousand open streams doing their periodic checks) would otherwise turn a
    momentary pool shortage into 503s, and every extra connection costs memory.
    Each connection's parser preallocates ``socket_read_size`` bytes, and a
    worker that had a burst of streams keeps up to ``max_connections`` of them:
    redis-py's 64 KiB default costs ~71 KB of RSS per connection, 16 KiB ~23 KB,
    4 KiB ~11 KB (measured with hiredis). The gateway's replies are small (a key
    record, a counter, a script's answer); the rare large one (a long history) is
    read in more 4 KiB chunks, which hiredis parses incrementally.
    """
    extra.setdefault("socket_read_size", 4 * 1024)
    pool = _ReapingPool.from_url(
        url,
        timeout=socket_timeout,
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
        # No health_check_interval: redis-py would PING (with its own timeout and retry) before
        # the first command on every new connection, so a stalled Redis held a request ~2 s,
        # not ~1 s. The retry above already replaces a dead pooled connection.
        health_check_interval=0,
        max_connections=max_connections,
        decode_responses=decode_responses,
        client_name="gateway",
        **extra,
    )
    pool.idle_seconds, pool.min_idle = idle_seconds, min_idle
    _make_fault_aware(pool)
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as Redis.from_url does: closing the client closes the pool
    return client


def redis_from_config(config: Any, **extra: Any) -> redis.Redis:
    """A client configured from a Flask config mapping (used by the app, the CLI and jobs)."""
    return create_redis(
        config["REDIS_URL"],
        socket_timeout=config["REDIS_SOCKET_TIMEOUT"],
        connect_timeout=config["REDIS_CONNECT_TIMEOUT"],
        max_connections=config["REDIS_MAX_CONNECTIONS"],
        idle_seconds=config.get("REDIS_POOL_IDLE_SECONDS", 0.0),
        min_idle=config.get("REDIS_POOL_MIN_IDLE", 2),
        **extra,
    )


def key(*parts: str | int) -> str:
    """An untagged ``gw:<...>`` name: only for single-key, per-process things (health marks)
    and the old layout (core.keymigration). Stored data is named by ``KEYS``."""
    return ":".join((KEY_PREFIX, *map(str, parts)))


def tagged(area: str, tag: str, *rest: str | int) -> str:
    """``gw:<area>:{<tag>}:<rest...>``: Redis Cluster hashes only the part in braces, so the
    keys one script or MULTI touches carry one tag and land in one slot."""
    return ":".join((KEY_PREFIX, area, "{" + _safe(tag) + "}", *map(str, rest)))


def _safe(tag: str) -> str:
    # A brace inside would end (or open) the hash tag early: never in ids, guarded anyway.
    return tag.replace("{", "(").replace("}", ")")


def owner_tag(owner: str) -> str:
    """The tag of an identity: an API key's ``k:<id>``, a user's ``u:<id>`` (owners read
    ``api_key:<id>`` / ``user:<id>``; rate-limit subjects ``key:<id>`` / ``user:<id>``)."""
    kind, _, rest = owner.partition(":")
    ident = rest.split(":", 1)[0]
    if kind in ("api_key", "key") and ident:
        return f"k:{ident}"
    if kind == "user" and ident:
        return f"u:{ident}"
    return f"o:{owner}"


def subject_tag(subject: str) -> str:
    """The tag of a rate-limit subject (a limit's key): the identity's, else the client IP's
    ``ip:<addr>``, else the e-mail digest's ``e:<digest>`` (login limits)."""
    kind, _, rest = subject.partition(":")
    if kind in ("key", "user"):
        return owner_tag(subject)
    if kind in ("ip", "login-ip"):
        return f"ip:{rest}"
    if kind == "login-email-ip":  # <digest>:<ip>: with the IP's other counters
        return f"ip:{rest.partition(':')[2]}"
    if kind == "login-email":
        return f"e:{rest}"
    return subject


def is_cluster(r: Any) -> bool:
    """True for a Redis Cluster client or its pipeline (ClusterPipeline is a RedisCluster)."""
    return isinstance(r, RedisCluster)


def cross_slot_pipeline(r: Any) -> Any:
    """A pipeline for writes to keys of several tags: MULTI (all or nothing) on one server;
    on a cluster a plain pipeline, as a MULTI cannot span slots there: each command is
    applied in order on its own shard, so a fault midway can leave part of it written."""
    return r.pipeline(transaction=not is_cluster(r))


class KEYS:
    """Named key builders, one per stored thing: the whole key layout lives here.

    Every name reads ``gw:<area>:{<tag>}:<what>[:<more>]``. Redis Cluster places a key by
    its tag alone, so the keys of one Lua script or MULTI share a tag, and tags are per
    identity wherever that is possible, so data and load spread over the shards:

    ========================  ==============================================================
    tag                       keys
    ========================  ==============================================================
    ``{k:<key id>}``          the key's record ``gw:keys:{k:..}:record``; its rate-limit
                              counters ``gw:ratelimit:{k:..}:fw:<subject>:<kind>:<n>:<s>``;
                              its agent-session and stream-slot indexes
    ``{u:<user id>}``         ``gw:users:{u:..}:record``, the user's counters, its login
                              sessions' index ``gw:sessions:{u:..}:user`` and agent indexes
    ``{ip:<addr>}``           every counter of one client IP (anonymous, login, login+e-mail)
    ``{e:<digest>}``          the login limit of one e-mail across IPs
    ``{kd:<hmac>}``           ``gw:keys:{kd:..}:digest`` -> key id (looked up by digest alone)
    ``{ue:<email>}``          ``gw:users:{ue:..}:email`` -> user id
    ``{ls:<hash>}``           one login session ``gw:sessions:{ls:..}:record``
    ``{s:<session id>}``      an agent session's hash, messages and reply claims
    ``{st:<stream id>}``      one agent stream's meta and frames (written in one MULTI)
    ``{i:<scope>:<digest>}``  one Idempotency-Key record
    ``{rq:job:<id>}``         a job's claim and cancel marks: the slot of RQ's own job hash
                              (whose name has no tag, so its tag is the whole name)
    ``{keys}`` ``{users}``    the key index; the user index, enabled set and indexed flag
    ``{audit}`` ``{metrics}`` the audit log; the metrics counters and process gauges
    ``{agents}``              the global agent-session index and message total
    ``{ev}``                  the events stream, every owner's event index and the events'
                              Idempotency-Keys: one script appends to all three
    ``{jobs}``                the job indexes (global, per owner, unfinished per owner): the
                              jobs' Redis (RQ) is never a cluster, one tag keeps them together
    ========================  ==============================================================

    ``redis-cli --scan --pattern 'gw:*:{k:key_0123abcd}*'`` lists one key's data. Deployments
    of the earlier, untagged layout move with ``flask redis migrate-keys`` (core.keymigration).
    """

    # API keys (auth.keys)
    @staticmethod
    def key_record(key_id: str) -> str:
        return tagged("keys", owner_tag(f"key:{key_id}"), "record")

    @staticmethod
    def key_digest(key_digest: str) -> str:
        return tagged("keys", f"kd:{key_digest}", "digest")

    @staticmethod
    def keys_index() -> str:
        return tagged("keys", "keys", "index")

    # admin users (auth.users) and their login sessions (auth.sessions)
    @staticmethod
    def user_record(user_id: str) -> str:
        return tagged("users", owner_tag(f"user:{user_id}"), "record")

    @staticmethod
    def user_email(normalized_email: str) -> str:
        return tagged("users", f"ue:{normalized_email}", "email")

    @staticmethod
    def users_index() -> str:
        return tagged("users", "users", "index")

    @staticmethod
    def users_enabled() -> str:
        return tagged("users", "users", "enabled")

    @staticmethod
    def users_indexed() -> str:
        return tagged("users", "users", "indexed")

    @staticmethod
    def login_session(hashed_sid: str) -> str:
        return tagged("sessions", f"ls:{hashed_sid}", "record")

    @staticmethod
    def user_sessions(user_id: str) -> str:
        return tagged("sessions", owner_tag(f"user:{user_id}"), "user")

    # audit (auth.audit)
    @staticmethod
    def audit_log() -> str:
        return tagged("audit", "audit", "log")

    # rate limits (gateway.ratelimit.policies)
    @staticmethod
    def rate_counter(tag: str, *name: str | int) -> str:
        return tagged("ratelimit", tag, *name)

    # idempotency (core.idempotency)
    @staticmethod
    def idempotency(scope: str, scoped_digest: str) -> str:
        return tagged("idempotency", f"i:{scope}:{scoped_digest}")

    # agents
    @staticmethod
    def agent_session(session_id: str) -> str:
        return tagged("agents", f"s:{session_id}", "session")

    @staticmethod
    def agent_messages(session_id: str) -> str:
        return tagged("agents", f"s:{session_id}", "messages")

    @staticmethod
    def agent_sessions_index() -> str:
        return tagged("agents", "agents", "sessions")

    @staticmethod
    def agent_sessions_by_owner(owner: str) -> str:
        return tagged("agents", owner_tag(owner), "sessions", owner)

    @staticmethod
    def agent_messages_total() -> str:
        return tagged("agents", "agents", "stats", "messages")

    @staticmethod
    def agent_stream(stream_id: str) -> str:
        return tagged("agents", f"st:{stream_id}", "stream")

    @staticmethod
    def agent_stream_frames(stream_id: str) -> str:
        return tagged("agents", f"st:{stream_id}", "frames")

    @staticmethod
    def agent_stream_slots(owner: str) -> str:
        return tagged("agents", owner_tag(owner), "streams", owner)

    @staticmethod
    def agent_reply_claim(session_id: str, message_id: str) -> str:
        """The stream answering one user message (one reply per message)."""
        return tagged("agents", f"s:{session_id}", "reply", message_id)

    # events
    @staticmethod
    def events_stream() -> str:
        return tagged("events", "ev", "stream")

    @staticmethod
    def events_by_owner(owner: str) -> str:
        # The ids of one owner's events (the global stream's ids), for its own paging; in the
        # stream's slot, since the append script writes both.
        return tagged("events", "ev", "owner", owner)

    @staticmethod
    def event_idempotency(idempotency_key_digest: str) -> str:
        return tagged("events", "ev", "idem", idempotency_key_digest)

    # metrics
    @staticmethod
    def metrics_counters() -> str:
        return tagged("metrics", "metrics", "counters")

    @staticmethod
    def metrics_processes() -> str:
        return tagged("metrics", "metrics", "processes")

    # jobs
    @staticmethod
    def jobs_index() -> str:
        return tagged("jobs", "jobs", "index")

    @staticmethod
    def jobs_by_owner(owner: str) -> str:
        return tagged("jobs", "jobs", "owner", owner)

    @staticmethod
    def jobs_unfinished(owner: str) -> str:
        # Jobs of one owner not yet ended, for the JOBS_QUEUED_MAX cap.
        return tagged("jobs", "jobs", "unfinished", owner)

    @staticmethod
    def job_mark(rq_job_key: str, mark: str) -> str:
        """``claimed`` / ``canceled`` of one job, in the slot of RQ's ``rq:job:<id>`` hash."""
        return tagged("jobs", rq_job_key, mark)


class LuaScript:
    """A Lua script, run through redis-py's ``register_script`` on whichever client is given
    (a pipeline too): EVALSHA, with the body sent only to a server that does not have it yet
    (NOSCRIPT: a restarted or failed-over server)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.script: Any = None  # redis-py's Script, made on first use (its digest computed once)

    def __call__(self, r: Any, keys: list[Any], args: list[Any]) -> Any:
        if self.script is None:
            self.script = r.register_script(self.source)
        return self.script(keys=keys, args=args, client=r)


def create_cluster_client(
    nodes: list[tuple[str, int]],
    *,
    socket_timeout: float = 0.5,
    connect_timeout: float = 0.5,
    max_connections: int = 200,
    decode_responses: bool = True,
    **extra: Any,
) -> RedisCluster:
    """A Redis Cluster client with the same bounded waits as :func:`create_redis`.

    redis-py follows MOVED/ASK itself and maps the cluster again after a failover; its bounded
    retry (two, with a short backoff) bounds how long a request waits for a promoted replica
    before the error (a 503) reaches it. The URL form (``redis+cluster://``) is parsed by
    config (the Sentinel/URL work); this takes its nodes.
    """
    from redis.cluster import ClusterNode

    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in nodes],
        socket_timeout=socket_timeout,
        socket_connect_timeout=connect_timeout,
        # Retries of a command that met a connection error, a timeout or CLUSTERDOWN, each after
        # redis-py mapped the cluster again (redis-py 6+: no cluster_error_retry_attempts).
        retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=2),
        max_connections=max_connections,
        decode_responses=decode_responses,
        client_name="gateway",
        **extra,
    )
