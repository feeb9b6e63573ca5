"""API keys: format, digest, storage, look-up, revocation, rotation and sweeping.

A key reads ``rgw_<30 base62 chars><6 base62 chars of CRC32>``: the prefix lets
people and secret scanners recognise it, the checksum rejects a mistyped key
offline (GitHub's token format). Only an HMAC-SHA256 digest of the whole key is
stored; the secret itself is shown once and never kept.

Redis layout (names in core.redis.KEYS): the record (hash, kept forever for audit, tag
``{k:<id>}``), the digest's look-up -> id (tag ``{kd:<hmac>}``), the index (zset of ids).

Every change that can end a secret or change what a key may do (revoke, rotate,
sweep, edit) bumps the record's ``version`` in the same transaction: workers keep
a record for minutes and learn that it changed from the version check that rides
on each request's one round trip (gateway.ratelimit.admission).

A key has at most two live secrets: its current one (``digest``) and, for the
grace period a rotation asked for, the one that rotation replaced
(``prev_digest`` until ``prev_expires_ts``). The record is the authority: the
look-up script accepts a digest only when the record names it, so a look-up
left behind by anything can never bring an older secret back.
"""

from __future__ import annotations

import functools
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from core.redis import KEYS, LuaScript, cross_slot_pipeline, is_cluster

KEY_PREFIX = "rgw_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 30  # 30 base62 characters = 178 random bits
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
# The record field every change bumps (absent on records older than it: read as "0").
VERSION_FIELD = "version"
# Look-ups of keys revoked or expired longer ago than this are removed by sweep_expired().
SWEEP_AFTER_DAYS = 30

# Fields of a stored key record that may be shown to people (never the digest).
PUBLIC_FIELDS = (
    "id",
    "name",
    "prefix",
    "last4",
    "scopes",
    "rate_limit",
    "quota",
    "token_quota",
    "allowed_ips",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "rotated_at",
    "created_by",
)


# Record fields of the secret a rotation replaced and left live for its grace period.
_PREV_FIELDS = (
    "prev_digest",
    "prev_prefix",
    "prev_last4",
    "prev_created_at",
    "prev_expires_at",
    "prev_expires_ts",
)


class KeyStateError(ValueError):
    """The key exists but cannot take this change (e.g. rotating a revoked key)."""


def _base62(number: int, width: int) -> str:
    chars = []
    for _ in range(width):
        number, rem = divmod(number, 62)
        chars.append(_ALPHABET[rem])
    return "".join(reversed(chars))


def _checksum(body: str) -> str:
    return _base62(zlib.crc32(body.encode()), _CHECKSUM_LENGTH)


def generate_secret() -> str:
    """A new key: prefix, random body from the secrets module, CRC32 checksum."""
    body = "".join(secrets.choice(_ALPHABET) for _ in range(_BODY_LENGTH))
    return f"{KEY_PREFIX}{body}{_checksum(body)}"


def looks_valid(secret: str) -> bool:
    """Offline check of prefix, length, alphabet and checksum (no Redis, no timing concern)."""
    if len(secret) != KEY_LENGTH or not secret.startswith(KEY_PREFIX):
        return False
    body = secret[len(KEY_PREFIX) : -_CHECKSUM_LENGTH]
    if any(c not in _ALPHABET for c in body):
        return False
    return hmac.compare_digest(_checksum(body), secret[-_CHECKSUM_LENGTH:])


def digest(secret: str, pepper: bytes) -> str:
    """The keyed digest stored in place of the key (HMAC-SHA256 with a server-side secret).

    For one key (creation, the CLI); request handling keeps ``digester(pepper)`` per app.
    """
    return digester(pepper)(secret)


def digester(pepper: bytes) -> Callable[[str], str]:
    """``digest`` with the pepper keyed into HMAC once per app, not once per request.

    ``hmac.new`` derives the two keyed SHA-256 states from the pepper; ``copy()`` of
    the keyed object clones them (in C) instead of deriving them again for every
    presented key. The same value as ``hmac.new(pepper, secret, "sha256")``.
    """
    keyed = hmac.new(pepper, digestmod="sha256")

    def digest_with_pepper(secret: str) -> str:
        mac = keyed.copy()
        mac.update(secret.encode())
        return mac.hexdigest()

    return digest_with_pepper


def record_key(key_id: str) -> str:
    return KEYS.key_record(key_id)


def digest_key(key_digest: str) -> str:
    return KEYS.key_digest(key_digest)


def index_key() -> str:
    return KEYS.keys_index()


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def now_iso() -> str:
    return _iso(datetime.now(UTC))


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
    record["scopes"] = json.loads(raw.get("scopes") or "[]")
    # Records written before allow-lists existed have no field: any IP.
    record["allowed_ips"] = json.loads(raw.get("allowed_ips") or "[]")
    return record


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """What people and clients may see of a key record."""
    view = {name: record.get(name) for name in PUBLIC_FIELDS}
    view["status"] = key_status(record)
    view["secrets"] = live_secrets(record)
    return view


def live_secrets(record: dict[str, Any], now: float | None = None) -> list[dict[str, Any]]:
    """The secrets that work now, newest first: prefix, last four, since and until (None: the
    key's own life). Never a digest. Empty for a revoked or expired key."""
    if key_status(record, now) != "active" or not record.get("digest"):
        return []
    key_end = record.get("expires_at")
    current = {
        "prefix": record.get("prefix"),
        "last4": record.get("last4"),
        "created_at": record.get("rotated_at") or record.get("created_at"),
        "expires_at": key_end,
    }
    prev_end = record.get("prev_expires_at")
    if not record.get("prev_digest") or not prev_end or _parse_iso(prev_end) <= (now or time.time()):
        return [current]
    previous = {
        "prefix": record.get("prev_prefix"),
        "last4": record.get("prev_last4"),
        "created_at": record.get("prev_created_at"),
        "expires_at": min(prev_end, key_end) if key_end else prev_end,  # same ISO format: sortable
    }
    return [current, previous]


def secret_view(record: dict[str, Any], secret: str) -> dict[str, Any]:
    """The one-time answer of create and rotate (CONTRACT section 6, `keys create --json`).

    Exactly the contract's fields: token_quota and allowed_ips are in every public view
    (show, list, the edit's answer), not in this fixed object."""
    return {
        "id": record["id"],
        "name": record["name"],
        "key": secret,
        "prefix": record["prefix"],
        "scopes": record["scopes"],
        "rate_limit": record.get("rate_limit"),
        "quota": record.get("quota"),
        "expires_at": record.get("expires_at"),
        "created_at": record["created_at"],
    }


def key_status(record: dict[str, Any], now: float | None = None) -> str:
    """``active``, ``revoked`` or ``expired``."""
    if record.get("revoked_at"):
        return "revoked"
    expires = record.get("expires_at")
    if expires and _parse_iso(expires) <= (now or time.time()):
        return "expired"
    return "active"


def key_expires_ts(record: dict[str, Any], key_digest: str | None = None) -> float | None:
    """When the key (or, given its digest, the replaced secret in its grace) stops working,
    as epoch seconds; None when it never does."""
    ends = [_parse_iso(record["expires_at"])] if record.get("expires_at") else []
    if key_digest is not None and key_digest != record.get("digest") and record.get("prev_expires_at"):
        ends.append(_parse_iso(record["prev_expires_at"]))
    return min(ends) if ends else None


def _secret_fields(secret: str, pepper: bytes) -> dict[str, str]:
    return {
        "prefix": secret[: len(KEY_PREFIX) + 4],
        "last4": secret[-4:],
        "digest": digest(secret, pepper),
    }


def create_key(
    r: redis.Redis,
    *,
    pepper: bytes,
    name: str,
    scopes: Iterable[str],
    rate_limit: str | None = None,
    quota: str | None = None,
    token_quota: str | None = None,
    allowed_ips: Iterable[str] = (),
    expires_in_days: int | None = None,
    created_by: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Store a new key and return (record, secret). The secret is not kept anywhere.

    Callers validate their input (auth.management); a negative ``expires_in_days``
    is accepted here so tests can make an already expired key.
    """
    secret = generate_secret()
    key_id = "key_" + secrets.token_hex(8)
    fields = {
        "id": key_id,
        "name": name,
        **_secret_fields(secret, pepper),
        "scopes": json.dumps(list(scopes)),
        "rate_limit": rate_limit or "",
        "quota": quota or "",
        "token_quota": token_quota or "",
        # CIDRs as given by the caller (validated in auth.management); an empty list: any IP.
        "allowed_ips": json.dumps(list(allowed_ips)),
        "created_at": now_iso(),
        **_expiry_fields(expires_in_days),
        "last_used_at": "",
        "revoked_at": "",
        "rotated_at": "",
        "created_by": created_by or "",
        VERSION_FIELD: "1",
    }
    # The look-up last: on a cluster (no MULTI across slots) a fault midway leaves at most
    # a record nobody can present yet.
    pipe = cross_slot_pipeline(r)
    pipe.hset(record_key(key_id), mapping=fields)
    pipe.zadd(index_key(), {key_id: time.time()})
    pipe.set(digest_key(fields["digest"]), key_id)
    pipe.execute()
    return _decode(fields), secret


def _expiry_fields(expires_in_days: int | None) -> dict[str, str]:
    """``expires_at`` and ``expires_ts`` for a key ending ``expires_in_days`` from now (None: never)."""
    if expires_in_days is None:
        return {"expires_at": "", "expires_ts": ""}
    expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=expires_in_days)
    # Epoch seconds for the look-up script, which cannot parse ISO dates cheaply.
    return {"expires_at": _iso(expires), "expires_ts": str(int(expires.timestamp()))}


def get_key(r: redis.Redis, key_id: str) -> dict[str, Any] | None:
    """The stored record of ``key_id`` (with its digest: never show it as is), or None."""
    raw = r.hgetall(record_key(key_id))
    return _decode(raw) if raw else None


def list_keys(r: redis.Redis) -> list[dict[str, Any]]:
    """Every key record, oldest first."""
    ids = r.zrange(index_key(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for key_id in ids:
        pipe.hgetall(record_key(key_id))
    return [_decode(raw) for raw in pipe.execute() if raw]


# One round trip for every look-up on one server (two on a cluster, see lookup_digest).
# Revocation, expiry and which secrets are live are decided inside Redis, and an unknown
# key runs the same commands (on an empty record name), so unknown, revoked, expired and
# replaced secrets all come back as the same nil reply after the same work: the same
# answer in the same time, with no record on the wire. The digest must be named by the
# record as its current secret or as the replaced one still within its grace.
# Lua functions, so that the admission script (gateway.ratelimit.admission) can run the
# same look-up in the same call as an unknown key's per-IP limit.
#
# check_record(record_key, id, digest): the record, if it is live and names the digest.
# lookup_key(digest_key, prefix, suffix, digest): ONE SERVER ONLY (never run on a cluster):
# the record's name is made here from the id the look-up holds (prefix .. id .. suffix),
# since it cannot be known before; a cluster could hold it on another shard, so there
# lookup_digest reads the look-up first and then calls check_record with the record declared.
LOOKUP_LUA = """
local function check_record(record_key, id, digest)
  local state = redis.call('HMGET', record_key, 'revoked_at', 'expires_ts', 'digest', 'prev_digest',
    'prev_expires_ts')
  local now = tonumber(redis.call('TIME')[1])
  local live = id ~= '' and state[1] == ''
  local expires = tonumber(state[2] or '')
  if expires and expires <= now then live = false end
  if state[3] ~= digest then
    local grace_end = tonumber(state[5] or '')
    if state[4] ~= digest or not grace_end or grace_end <= now then live = false end
  end
  if not live then return false end
  return redis.call('HGETALL', record_key)
end
local function lookup_key(digest_key, prefix, suffix, digest)
  local id = redis.call('GET', digest_key) or ''
  return check_record(prefix .. id .. suffix, id, digest)
end
"""
_LOOKUP_SCRIPT = LuaScript(LOOKUP_LUA + "return lookup_key(KEYS[1], ARGV[1], ARGV[2], ARGV[3])")
# KEYS[1] the record; ARGV: its id (or ''), the digest. Cluster-safe: one key.
_CHECK_SCRIPT = LuaScript(LOOKUP_LUA + "return check_record(KEYS[1], ARGV[1], ARGV[2])")


@functools.cache
def record_name_parts() -> tuple[str, str]:
    """(prefix, suffix) around the id in a record's name, for lookup_key (one server only)."""
    prefix, suffix = record_key("@").split("@")
    return prefix, suffix


def record_from_reply(flat: list[str] | None) -> dict[str, Any] | None:
    """The record a look-up returned (HGETALL's flat list), if the app's clock agrees it is live."""
    if not flat:
        return None
    record = _decode(dict(zip(flat[::2], flat[1::2], strict=True)))
    # Re-checked here too: the app's clock, not only Redis's, must agree the key is live.
    return record if key_status(record) == "active" else None


def record_version(record: dict[str, Any]) -> str:
    """The version a record was read at (records from before versions read as "0")."""
    return str(record.get(VERSION_FIELD) or "0")


def lookup(r: redis.Redis, secret: str, pepper: bytes) -> dict[str, Any] | None:
    """The active record for a presented key, or None for unknown, revoked or expired keys."""
    return lookup_digest(r, digest(secret, pepper))


def lookup_digest(r: redis.Redis, key_digest: str) -> dict[str, Any] | None:
    """:func:`lookup` for a key whose digest the caller has already computed."""
    if not is_cluster(r):
        args = [*record_name_parts(), key_digest]
        return record_from_reply(_LOOKUP_SCRIPT(r, [digest_key(key_digest)], args))
    return record_from_reply(check_digest(r, r.get(digest_key(key_digest)) or "", key_digest))


def check_digest(r: redis.Redis, key_id: str, key_digest: str) -> list[str] | None:
    """The second call of a cluster's look-up: the record of ``key_id`` ('' for an unknown
    digest: the same work on an empty name) if it is live and names ``key_digest``."""
    return _CHECK_SCRIPT(r, [record_key(key_id)], [key_id, key_digest])  # type: ignore[no-any-return]


def touch(r: redis.Redis, key_id: str) -> None:
    """Write last_used_at (callers throttle this to about once a minute per key)."""
    r.hset(record_key(key_id), "last_used_at", now_iso())


def revoke_key(r: redis.Redis, key_id: str) -> dict[str, Any] | None:
    """Mark a key revoked (idempotent); None when it does not exist.

    Every secret ends at once: the look-up script refuses all of a revoked key's
    digests. The current digest's look-up is kept, so a revoked key costs the same
    look-up as any other (sweep_expired() removes it later); the one of a secret in
    its grace period is removed now. The record is kept for audit.
    """
    record = get_key(r, key_id)
    if record is None:
        return None
    if not record.get("revoked_at"):
        record["revoked_at"] = now_iso()
        pipe = cross_slot_pipeline(r)  # the record's writes first: they end every secret
        pipe.hset(record_key(key_id), mapping={"revoked_at": record["revoked_at"], **_no_previous()})
        pipe.hincrby(record_key(key_id), VERSION_FIELD, 1)
        if record.get("prev_digest"):
            pipe.delete(digest_key(record["prev_digest"]))
        version = pipe.execute()[1]
        record.update(_no_previous(), **{VERSION_FIELD: str(version)})
    return record


def _no_previous() -> dict[str, str]:
    return dict.fromkeys(_PREV_FIELDS, "")


def _previous_fields(raw: dict[str, str], grace_seconds: int) -> dict[str, str]:
    """The replaced secret's fields: live for ``grace_seconds``, or none at all."""
    if grace_seconds <= 0:
        return _no_previous()
    ends = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=grace_seconds)
    return {
        "prev_digest": raw["digest"],
        "prev_prefix": raw.get("prefix", ""),
        "prev_last4": raw.get("last4", ""),
        "prev_created_at": raw.get("rotated_at") or raw.get("created_at", ""),
        "prev_expires_at": _iso(ends),
        "prev_expires_ts": str(int(ends.timestamp())),
    }


def rotate_key(
    r: redis.Redis, key_id: str, *, pepper: bytes, grace_seconds: int = 0
) -> tuple[dict[str, Any], str] | None:
    """Give an active key a new secret; the old one stays valid ``grace_seconds`` more.

    Every earlier secret ends now, including one still in the grace of an earlier
    rotation: at most the new secret and the one just replaced are ever live.
    Returns (record, new secret), None for an unknown key; raises KeyStateError
    for a revoked or expired one. WATCH makes two concurrent rotations of one key
    fail cleanly instead of leaving three live secrets.
    """
    cluster = is_cluster(r)
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(record_key(key_id))
        raw = pipe.hgetall(record_key(key_id))
        if not raw:
            return None
        record = _decode(raw)
        if key_status(record) != "active":
            raise KeyStateError(f"key {key_id} is {key_status(record)} and cannot be rotated")
        secret = generate_secret()
        previous = _previous_fields(raw, grace_seconds)
        fields = {**_secret_fields(secret, pepper), "rotated_at": now_iso(), **previous}
        pipe.multi()
        pipe.hset(record_key(key_id), mapping=fields)
        pipe.hincrby(record_key(key_id), VERSION_FIELD, 1)
        if not cluster:  # one server: the look-ups change in the same MULTI
            _queue_rotated_lookups(pipe, key_id, raw, fields, previous)
        try:
            pipe.execute()
        except redis.WatchError:
            raise KeyStateError(f"key {key_id} changed during rotation; try again") from None
    if cluster:
        # A MULTI cannot span slots: the look-ups follow the record, which already names
        # the new digest and no longer the old ones, so no secret lives longer meanwhile.
        lookups = r.pipeline(transaction=False)
        _queue_rotated_lookups(lookups, key_id, raw, fields, previous)
        lookups.execute()
    fields[VERSION_FIELD] = str(int(raw.get(VERSION_FIELD) or 0) + 1)
    return _decode({**raw, **fields}), secret


def _queue_rotated_lookups(
    pipe: Any, key_id: str, raw: dict[str, str], fields: dict[str, str], previous: dict[str, str]
) -> None:
    """A rotation's look-up changes: the new digest's, and the replaced ones' end."""
    pipe.set(digest_key(fields["digest"]), key_id)
    if raw.get("prev_digest"):
        pipe.delete(digest_key(raw["prev_digest"]))
    old = digest_key(raw["digest"])
    if previous["prev_digest"]:
        pipe.expireat(old, int(previous["prev_expires_ts"]))
    else:
        pipe.delete(old)


def _ended_at(record: dict[str, Any]) -> float | None:
    """When a key stopped working (revocation or expiry), or None while it works."""
    ends = [_parse_iso(v) for v in (record.get("revoked_at"), record.get("expires_at")) if v]
    ended = min(ends) if ends else None
    return ended if ended is not None and ended <= time.time() else None


def sweep_expired(r: redis.Redis, *, older_than_days: int = SWEEP_AFTER_DAYS) -> int:
    """Remove the digest look-ups of keys revoked or expired more than ``older_than_days``
    ago; records stay for audit. Returns how many look-ups were removed."""
    cutoff = time.time() - older_than_days * 86400
    swept = 0
    for record in list_keys(r):
        ended = _ended_at(record)
        if not record.get("digest") or ended is None or ended > cutoff:
            continue
        pipe = cross_slot_pipeline(r)
        pipe.delete(digest_key(record["digest"]))
        if record.get("prev_digest"):
            pipe.delete(digest_key(record["prev_digest"]))
        pipe.hset(record_key(record["id"]), mapping={"digest": "", **_no_previous()})
        pipe.hincrby(record_key(record["id"]), VERSION_FIELD, 1)
        pipe.execute()
        swept += 1
    return swept


# Fields an edit may change (auth.management validates the values), and how each is stored.
EDITABLE_FIELDS = ("name", "scopes", "rate_limit", "quota", "token_quota", "allowed_ips", "expires_in_days")


def _stored_changes(changes: dict[str, Any]) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, value in changes.items():
        if name not in EDITABLE_FIELDS:
            raise ValueError(f"{name} cannot be edited")
        if name == "expires_in_days":
            fields.update(_expiry_fields(value))
        elif name in ("scopes", "allowed_ips"):
            fields[name] = json.dumps(list(value or ()))
        else:
            fields[name] = value or ""
    return fields


def update_key(
    r: redis.Redis, key_id: str, changes: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Change a key's fields in place (the secret stays); returns (before, after) records,
    None for an unknown key; KeyStateError for a revoked one.

    The fields and the version bump are one MULTI on the record alone (one hash tag, so
    also one slot on a cluster): a worker sees either the old record at the old version or
    the new one at the new version, and its next admission call re-reads it before counting
    anything. WATCH turns a concurrent change of the same key into a clean refusal.
    """
    fields = _stored_changes(changes)
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(record_key(key_id))
        raw = pipe.hgetall(record_key(key_id))
        if not raw:
            return None
        before = _decode(raw)
        if key_status(before) == "revoked":
            raise KeyStateError(f"key {key_id} is revoked and cannot be edited")
        pipe.multi()
        if fields:
            pipe.hset(record_key(key_id), mapping=fields)
        pipe.hincrby(record_key(key_id), VERSION_FIELD, 1)
        try:
            version = pipe.execute()[-1]
        except redis.WatchError:
            raise KeyStateError(f"key {key_id} changed during the edit; try again") from None
    return before, _decode({**raw, **fields, VERSION_FIELD: str(version)})
