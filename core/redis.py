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
import functools
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from queue import Empty
from typing import Any, TypeVar

import redis
from redis import exceptions as rex
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool

from config.redis_url import CLUSTER, SENTINEL, RedisTarget, parse_redis_target
from core.background import BackgroundLoop

try:  # gevent's dependency; the gateway's workers run on greenlets
    from greenlet import getcurrent as _current_task
except ImportError:  # pragma: no cover - threads only
    _current_task = threading.current_thread  # type: ignore[assignment]

T = TypeVar("T")


class RedisRefusedError(redis.ResponseError):
    """Redis refused a command for a reason that passes, one redis-py has no class for:
    BUSY (a script or module command holds the server), MISCONF (it cannot persist, so it
    refuses writes), NOREPLICAS (fewer replicas in sync than ``min-replicas-to-write``)."""


class NotReplicatedError(redis.RedisError):
    """An acknowledged write did not reach ``REDIS_WAIT_REPLICAS`` replicas within
    ``REDIS_WAIT_TIMEOUT_MS`` (or its connection changed before WAIT could vouch for it):
    the write may or may not survive a failover, so it is not acknowledged (503)."""


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
    NotReplicatedError,
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
        self.gw_connects = 0  # sockets opened so far: WAIT must run on the writes' socket

    def on_connect_check_health(self, *args: Any, **kwargs: Any) -> None:
        super().on_connect_check_health(*args, **kwargs)  # type: ignore[misc]
        self.gw_connects += 1

    def make_current(self) -> None:
        """Reconnect now if opened before the last READONLY (as the next send would)."""
        if self.stale:
            self.disconnect()  # type: ignore[attr-defined]
            self._epoch = self.primary_epoch[0]
        self.connect()  # type: ignore[attr-defined]

    @property
    def stale(self) -> bool:
        """Opened before a connection of the pool met READONLY or MASTERDOWN."""
        return self._epoch != self.primary_epoch[0]

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if self.stale:
            self.disconnect()  # type: ignore[attr-defined]
            self._epoch = self.primary_epoch[0]  # the connect() below belongs to this epoch
        # Connect through connect() (a no-op when connected): redis-py 7.4's own send
        # reconnects with connect_check_health(), which for a Sentinel connection skips
        # asking the sentinels, so a retry after READONLY went back to the demoted primary.
        self.connect()  # type: ignore[attr-defined]
        super().send_packed_command(command, check_health)  # type: ignore[misc]

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().read_response(*args, **kwargs)  # type: ignore[misc]
        except PRIMARY_LOST:
            self._leave_old_primary()
            raise
        except redis.ConnectionError as exc:
            # redis-py's Sentinel connection turns READONLY into "The previous master is now
            # a slave" (a ConnectionError, so its retry reconnects through the sentinels):
            # the rest of the pool leads to the demoted primary too.
            if isinstance(exc.__context__, PRIMARY_LOST):
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
    lead to the current primary (one in use at the pool-wide close was not reached by it).

    It can also *pin* one connection to the current thread (greenlet, under gevent):
    while pinned, every command and pipeline of this thread on this pool runs on it, so a
    WAIT sent afterwards covers exactly those writes (:func:`replicated`)."""

    wait: WaitPolicy | None = None  # REDIS_WAIT_*, for replicated(); None or 0 replicas: off
    durable: _FaultAwarePool | None = None  # where pinned connections come from

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        pinned = _pins.get(self)
        return pinned if pinned is not None else super().get_connection(*args, **kwargs)

    def release(self, connection: Any) -> None:
        if _pins.get(self) is connection:
            return  # given back when the pin ends
        if getattr(connection, "stale", False):
            connection.disconnect()
        super().release(connection)

    def disconnect(self, inuse_connections: bool = True) -> None:
        # The WAIT pool leads to the same server: closed with this one (a client's close,
        # a READONLY, the Sentinel pool's change of primary).
        super().disconnect(inuse_connections)
        if self.durable is not None:
            self.durable.disconnect(inuse_connections)


class _Pins:
    """The connection each pool has pinned, per thread of control: a greenlet under gevent
    (each OS thread also runs in a greenlet of its own). Keyed by the running greenlet
    itself rather than a ``threading.local``, which is greenlet-local only when gevent
    patched it before this module was imported."""

    def __init__(self) -> None:
        self.by_task: dict[tuple[int, int], Any] = {}

    def get(self, pool: Any) -> Any:
        return self.by_task.get((id(pool), id(_current_task()))) if self.by_task else None

    def pin(self, pool: Any, conn: Any) -> None:
        self.by_task[(id(pool), id(_current_task()))] = conn

    def unpin(self, pool: Any) -> None:
        del self.by_task[(id(pool), id(_current_task()))]


_pins = _Pins()


@dataclass(frozen=True)
class WaitPolicy:
    replicas: int
    timeout_ms: int


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


class _SentinelPool(SentinelConnectionPool, _ReapingPool):
    """redis-py's Sentinel pool (each new connection asks the sentinels for the primary,
    and a changed answer closes the idle ones) on this module's blocking, fault-aware,
    reaping pool. The reaper is kept: a managed Sentinel set has a client limit too, and a
    reaped connection reconnects through the sentinels like any other new one."""


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
    wait_replicas: int = 0,
    wait_timeout_ms: int = 500,
    **extra: Any,
) -> Any:
    """Build a client for any URL config/redis_url.py accepts, with bounded waits.

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

    With ``wait_replicas`` > 0, :func:`replicated` blocks wait for that many replicas;
    their connections come from a second, smaller pool whose read timeout also covers
    WAIT's own ``wait_timeout_ms``, so a slow replica reads as "not replicated", never
    as a socket timeout that would make redis-py retry the writes.
    """
    target = parse_redis_target("REDIS_URL", url)
    extra.setdefault("socket_read_size", 4 * 1024)
    options = _options(socket_timeout, connect_timeout, max_connections, decode_responses, extra)
    if target.topology == CLUSTER:
        client = _cluster(target, options)
        client.gw_wait = WaitPolicy(wait_replicas, wait_timeout_ms) if wait_replicas > 0 else None
        return client
    pool = _pool(target, options)
    pool.idle_seconds, pool.min_idle = idle_seconds, min_idle
    if wait_replicas > 0:
        pool.wait = WaitPolicy(wait_replicas, wait_timeout_ms)
        slower = socket_timeout + wait_timeout_ms / 1000
        durable_options = {**options, "socket_timeout": slower, "timeout": slower}
        durable_options["max_connections"] = max(2, max_connections // 4)
        pool.durable = _pool(target, durable_options)
        pool.durable.idle_seconds, pool.durable.min_idle = idle_seconds, min_idle
    client = redis.Redis(connection_pool=pool)
    client.auto_close_connection_pool = True  # as Redis.from_url does: closing the client closes the pool
    client.gw_target = target  # type: ignore[attr-defined]  # readyz reports the topology
    return client


def _options(
    socket_timeout: float, connect_timeout: float, max_connections: int, decode: bool, extra: dict[str, Any]
) -> dict[str, Any]:
    return {
        "timeout": socket_timeout,  # the blocking pool's wait for a free connection
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": connect_timeout,
        "retry": Retry(ExponentialBackoff(cap=0.05, base=0.01), retries=1),
        "retry_on_error": [redis.ConnectionError, redis.TimeoutError],
        # No health_check_interval: redis-py would PING (with its own timeout and retry) before
        # the first command on every new connection, so a stalled Redis held a request ~2 s,
        # not ~1 s. The retry above already replaces a dead pooled connection.
        "health_check_interval": 0,
        "max_connections": max_connections,
        "decode_responses": decode,
        "client_name": "gateway",
        **extra,
    }


def _pool(target: RedisTarget, options: dict[str, Any]) -> _ReapingPool:
    if target.topology == SENTINEL:
        pool: _ReapingPool = _sentinel_pool(target, options)
    else:
        pool = _ReapingPool.from_url(target.url, **options)
    _make_fault_aware(pool)
    return pool


def _auth(target: RedisTarget) -> dict[str, str]:
    """The URL's username and password, those it gives (redis-py's defaults otherwise)."""
    given = {"username": target.username, "password": target.password}
    return {k: v for k, v in given.items() if v}


def _sentinel_pool(target: RedisTarget, options: dict[str, Any]) -> _SentinelPool:
    """Through redis-py's public Sentinel API; the password (as in ``limits``) is the
    sentinels' and the primary's, and TLS applies to both."""
    auth = _auth(target)
    tls = {"ssl": True} if target.tls else {}
    # The sentinels get the same short timeouts and no retry: a dead sentinel must not hold
    # a request (redis-py's default retries 3 times with backoffs of seconds), the next
    # sentinel is asked instead.
    asking = {k: options[k] for k in ("socket_timeout", "socket_connect_timeout")}
    asking["retry"] = Retry(NoBackoff(), retries=0)
    sentinel = Sentinel(list(target.hosts), sentinel_kwargs={**asking, **auth, **tls})
    client = sentinel.master_for(
        target.master, connection_pool_class=_SentinelPool, db=target.db, **auth, **tls, **options
    )
    return client.connection_pool  # type: ignore[no-any-return]


def _cluster(target: RedisTarget, options: dict[str, Any]) -> RedisCluster:
    """RedisCluster follows MOVED/ASK itself; its nodes get the same bounded timeouts.
    (Every key carries a hash tag, KEYS; what a cluster changes: docs/redis-cluster.md.)

    The nodes' connections note which node they write to inside :func:`replicated`
    (a ``url`` makes the nodes' pools take that connection class as given; with
    ``ssl=True`` redis-py would replace it by its own TLS class)."""
    kept = ("socket_timeout", "socket_connect_timeout", "max_connections", "decode_responses")
    kept += ("client_name", "health_check_interval", "socket_read_size", "retry_on_error", "retry")
    base = redis.SSLConnection if target.tls else redis.Connection
    noting = type(f"Noting{base.__name__}", (_NotingConnection, base), {})
    (first_host, first_port), *others = target.hosts
    client = RedisCluster(
        url=f"redis://{first_host}:{first_port}",  # the nodes' pools built as from_url builds them
        startup_nodes=[ClusterNode(host, port) for host, port in others],
        connection_class=noting,
        **_auth(target),
        **{k: options[k] for k in kept if k in options},
    )
    client.gw_target = target  # type: ignore[attr-defined]
    return client


class _NotingConnection:
    """Mixed into a cluster node's connection class: tells :data:`_written` where it sends."""

    host: str
    port: int

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        _written.note((self.host, self.port))
        super().send_packed_command(command, check_health)  # type: ignore[misc]


class _Written:
    """The cluster nodes each thread of control (greenlet) sent commands to inside a
    :func:`replicated` block: WAIT goes to each of them afterwards."""

    def __init__(self) -> None:
        self.by_task: dict[int, set[tuple[str, int]]] = {}

    def start(self) -> set[tuple[str, int]] | None:
        """A fresh record for this task; None when one is open already (nested blocks)."""
        task = id(_current_task())
        if task in self.by_task:
            return None
        self.by_task[task] = noted = set()
        return noted

    def note(self, address: tuple[str, int]) -> None:
        noted = self.by_task.get(id(_current_task())) if self.by_task else None
        if noted is not None:
            noted.add(address)

    def stop(self) -> None:
        del self.by_task[id(_current_task())]


_written = _Written()


def redis_from_config(config: Any, *, url_setting: str = "REDIS_URL", **extra: Any) -> Any:
    """A client configured from a Flask config mapping (used by the app, the CLI and jobs)."""
    return create_redis(
        config[url_setting],
        socket_timeout=config["REDIS_SOCKET_TIMEOUT"],
        connect_timeout=config["REDIS_CONNECT_TIMEOUT"],
        max_connections=config["REDIS_MAX_CONNECTIONS"],
        idle_seconds=config.get("REDIS_POOL_IDLE_SECONDS", 0.0),
        min_idle=config.get("REDIS_POOL_MIN_IDLE", 2),
        wait_replicas=config.get("REDIS_WAIT_REPLICAS", 0),
        wait_timeout_ms=config.get("REDIS_WAIT_TIMEOUT_MS", 500),
        **extra,
    )


@contextlib.contextmanager
def replicated(r: Any) -> Iterator[None]:
    """Make the writes of the block acknowledged: ``with replicated(r): <writes on r>``.

    With ``REDIS_WAIT_REPLICAS`` > 0, every command and pipeline this thread sends on
    ``r`` inside the block runs on one pinned connection, and WAIT follows on that same
    connection (WAIT counts only its own connection's writes): fewer replicas than asked
    raise :class:`NotReplicatedError`, a 503. Call sites write as before, scripts and
    MULTI included, and read their replies at once; the price is the one WAIT round trip,
    which replication must cost anyway. WAIT is sent by hand, never retried: a retry
    on a new socket would vouch for no write at all. With 0 replicas (the default), or
    a client not built here, nothing is sent and nothing is pinned.
    """
    if is_cluster(r):
        with _replicated_on_cluster(r):
            yield
        return
    pool = getattr(r, "connection_pool", None)
    policy = getattr(pool, "wait", None)
    if policy is None or policy.replicas <= 0 or pool.durable is None or _pins.get(pool) is not None:
        yield  # off, or nested inside another replicated() block that will WAIT
        return
    conn = pool.durable.get_connection()
    try:
        conn.make_current()
        opened = conn.gw_connects
        _pins.pin(pool, conn)
        try:
            yield
        finally:
            _pins.unpin(pool)
        _wait(conn, policy, opened)
    finally:
        pool.durable.release(conn)


@contextlib.contextmanager
def _replicated_on_cluster(r: RedisCluster) -> Iterator[None]:
    """:func:`replicated` on a cluster. The block's commands run on whichever connection of
    each node redis-py picks, so WAIT cannot ride on the writes' own connection; instead,
    on each node the block wrote to, one connection writes a marker key of a slot that node
    owns and WAITs. A primary replicates one ordered stream, so replicas that have the
    marker have the block's earlier writes too. A node no longer primary (MOVED), gone
    (connection error) or slow to answer: NotReplicatedError, a 503."""
    policy = getattr(r, "gw_wait", None)
    noted = _written.start() if policy is not None else None
    if noted is None:
        yield  # off, or nested inside another replicated() block that will WAIT
        return
    try:
        yield
    finally:
        _written.stop()
    for host, port in sorted(noted):
        _wait_on_node(r, host, port, policy)


_markers: dict[str, str] = {}  # node name -> a key of a slot it owns: WAIT's marker


def _marker_key(r: RedisCluster, name: str) -> str | None:
    known = _markers.get(name)
    if known is not None and r.get_node_from_key(known).name == name:
        return known
    for n in range(4096):  # a primary owns about 1/N of the slots: a few tries each
        candidate = tagged("wait", f"m{n}", "mark")
        if r.get_node_from_key(candidate).name == name:
            _markers[name] = candidate
            return candidate
    return None


def _wait_on_node(r: RedisCluster, host: str, port: int, policy: WaitPolicy) -> None:
    node = r.get_node(host=host, port=port)
    marker = _marker_key(r, node.name) if node is not None else None
    if node is None or marker is None:  # the slot map dropped it: a failover came between
        raise NotReplicatedError(f"{host}:{port} no longer serves a slot")
    pool = node.redis_connection.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_command("SET", marker, "1", "PX", 60_000)
        conn.read_response()  # MOVED when the node was demoted: the writes may be lost
        conn.send_command("WAIT", policy.replicas, policy.timeout_ms)
        acked = int(conn.read_response())
    except redis.RedisError as exc:
        conn.disconnect()  # a late WAIT reply must not be read as another command's
        raise NotReplicatedError(f"WAIT on {host}:{port} failed: {failure_label(exc)}") from None
    finally:
        pool.release(conn)
    if acked < policy.replicas:
        raise NotReplicatedError(f"{acked} of {policy.replicas} replicas acknowledged")


def primaries(r: Any) -> dict[str, Any]:
    """What /readyz reports beside its write: the topology and each primary's reachability.

    Standalone: the one server (reachable is the readiness write's verdict, set by the
    caller). Sentinel: the primary the sentinels name now, and how many sentinels answer.
    Cluster: every primary of the slot map, each PINGed. Never a password or a URL."""
    target = getattr(r, "gw_target", None)
    if target is None or target.topology not in (SENTINEL, CLUSTER):
        hosts = target.hosts if target is not None else ()
        return {"topology": "standalone", "primaries": [{"address": _address(h)} for h in hosts]}
    if target.topology == CLUSTER:
        return {"topology": CLUSTER, "primaries": [_node(r, node) for node in r.get_primaries()]}
    manager = r.connection_pool.sentinel_manager
    answering = sum(_pings(sentinel) for sentinel in manager.sentinels)
    report: dict[str, Any] = {"topology": SENTINEL, "master": target.master}
    report["sentinels"] = {"configured": len(manager.sentinels), "reachable": answering}
    try:
        report["primaries"] = [{"address": _address(manager.discover_master(target.master))}]
    except redis.RedisError as exc:  # MasterNotFoundError: no sentinel names a primary
        report["primaries"] = []
        report["error"] = type(exc).__name__
    return report


def _address(host_port: tuple[str, int]) -> str:
    return f"{host_port[0]}:{host_port[1]}"


def _pings(client: Any) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def _node(r: Any, node: Any) -> dict[str, Any]:
    try:
        reachable = bool(r.ping(target_nodes=node))
    except redis.RedisError:
        reachable = False
    return {"address": _address((node.host, node.port)), "reachable": reachable}


def acknowledged(fn: Callable[..., T]) -> Callable[..., T]:
    """Run ``fn(r, ...)`` inside :func:`replicated` on its first argument, its Redis client:
    for functions whose every write is one the gateway acknowledges."""

    @functools.wraps(fn)
    def wrapper(r: Any, *args: Any, **kwargs: Any) -> T:
        with replicated(r):
            return fn(r, *args, **kwargs)

    return wrapper


def _wait(conn: Any, policy: WaitPolicy, opened: int) -> None:
    if conn.gw_connects != opened:  # a retry reconnected: earlier writes may be elsewhere
        raise NotReplicatedError("the connection changed before WAIT")
    conn.send_command("WAIT", policy.replicas, policy.timeout_ms)
    acked = int(conn.read_response())
    if conn.gw_connects != opened or acked < policy.replicas:
        raise NotReplicatedError(f"{acked} of {policy.replicas} replicas acknowledged")


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
    ``{s:<session id>}``      an agent session's hash, messages, reply claims, stream tickets
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
    def agent_stream_ticket(session_id: str, ticket_digest: str) -> str:
        """A stream ticket (its digest only), in its session's slot: the stream's query names
        the session, so a ticket is found (and consumed by GETDEL) without an identity."""
        return tagged("agents", f"s:{session_id}", "ticket", ticket_digest)

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


def hash_reply(reply: Any) -> dict[str, Any]:
    """HGETALL's reply from a pipeline as a dict. redis-py 7.4's cluster pipeline in
    transaction mode runs only its cluster-specific response callbacks, so there HGETALL
    comes back as the flat list ``[field, value, ...]`` (a resumed stream answered 500 on a
    cluster, tests/cluster/test_cluster.py); one server's pipeline gives the dict already."""
    if isinstance(reply, dict):
        return reply
    items = list(reply or [])
    return dict(zip(items[::2], items[1::2], strict=True))
