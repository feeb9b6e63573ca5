"""API keys: format, digest, storage, look-up, revocation, rotation and sweeping.

A key reads ``rgw_<30 base62 chars><6 base62 chars of CRC32>``: the prefix lets
people and secret scanners recognise it, the checksum rejects a mistyped key
offline (GitHub's token format). Only an HMAC-SHA256 digest of the whole key is
stored; the secret itself is shown once and never kept.

Redis layout: ``gw:keys:record:<id>`` (hash, kept forever for audit),
``gw:keys:digest:<hmac>`` -> id (the look-up), ``gw:keys:index`` (zset of ids).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from gateway.redis import key as redis_key

KEY_PREFIX = "rgw_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 30  # 30 base62 characters = 178 random bits
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH
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
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
    "rotated_at",
    "created_by",
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
    """``digest`` with the pepper's part of HMAC (RFC 2104) done once per app.

    HMAC-SHA256 is H((K ^ opad) || H((K ^ ipad) || m)): the two keyed SHA-256
    states are computed here, and each call copies them, all in C. Same value as
    ``hmac.new(pepper, secret, sha256)`` (tested), for about half the cost of that object.
    """
    block = hashlib.sha256().block_size
    secret_key = hashlib.sha256(pepper).digest() if len(pepper) > block else pepper
    secret_key = secret_key.ljust(block, b"\0")
    inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in secret_key))
    outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in secret_key))

    def digest_with_pepper(secret: str) -> str:
        inner_mac = inner.copy()
        inner_mac.update(secret.encode())
        mac = outer.copy()
        mac.update(inner_mac.digest())
        return mac.hexdigest()

    return digest_with_pepper


def record_key(key_id: str) -> str:
    return redis_key("keys", "record", key_id)


def digest_key(key_digest: str) -> str:
    return redis_key("keys", "digest", key_digest)


def index_key() -> str:
    return redis_key("keys", "index")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def now_iso() -> str:
    return _iso(datetime.now(UTC))


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
    record["scopes"] = json.loads(raw.get("scopes") or "[]")
    return record


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """What people and clients may see of a key record."""
    view = {name: record.get(name) for name in PUBLIC_FIELDS}
    view["status"] = key_status(record)
    return view


def secret_view(record: dict[str, Any], secret: str) -> dict[str, Any]:
    """The one-time answer of create and rotate (CONTRACT section 6, `keys create --json`)."""
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


def key_expires_ts(record: dict[str, Any]) -> float | None:
    """The key's expiry as epoch seconds, or None when it never expires."""
    return _parse_iso(record["expires_at"]) if record.get("expires_at") else None


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
    expires_in_days: int | None = None,
    created_by: str | None = None,
) -> tuple[dict[str, Any], str]:
    """Store a new key and return (record, secret). The secret is not kept anywhere.

    Callers validate their input (auth.management); a negative ``expires_in_days``
    is accepted here so tests can make an already expired key.
    """
    secret = generate_secret()
    key_id = "key_" + secrets.token_hex(8)
    expires = None
    if expires_in_days is not None:
        expires = datetime.now(UTC).replace(microsecond=0) + timedelta(days=expires_in_days)
    fields = {
        "id": key_id,
        "name": name,
        **_secret_fields(secret, pepper),
        "scopes": json.dumps(list(scopes)),
        "rate_limit": rate_limit or "",
        "quota": quota or "",
        "created_at": now_iso(),
        "expires_at": _iso(expires) if expires else "",
        # Epoch seconds for the look-up script, which cannot parse ISO dates cheaply.
        "expires_ts": str(int(expires.timestamp())) if expires else "",
        "last_used_at": "",
        "revoked_at": "",
        "rotated_at": "",
        "created_by": created_by or "",
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(record_key(key_id), mapping=fields)
    pipe.set(digest_key(fields["digest"]), key_id)
    pipe.zadd(index_key(), {key_id: time.time()})
    pipe.execute()
    return _decode(fields), secret


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


# One round trip for every look-up. Revocation and expiry are decided inside
# Redis, and an unknown key runs the same commands (on an empty record name), so
# unknown, revoked and expired keys all come back as the same nil reply after the
# same work: the same answer in the same time, with no record on the wire.
_LOOKUP_SCRIPT = """
local id = redis.call('GET', KEYS[1]) or ''
local state = redis.call('HMGET', ARGV[1] .. id, 'revoked_at', 'expires_ts')
local now = tonumber(redis.call('TIME')[1])
local live = id ~= '' and state[1] == ''
local expires = tonumber(state[2] or '')
if expires and expires <= now then live = false end
if not live then return false end
return redis.call('HGETALL', ARGV[1] .. id)
"""


def lookup(r: redis.Redis, secret: str, pepper: bytes) -> dict[str, Any] | None:
    """The active record for a presented key, or None for unknown, revoked or expired keys."""
    return lookup_digest(r, digest(secret, pepper))


def lookup_digest(r: redis.Redis, key_digest: str) -> dict[str, Any] | None:
    """:func:`lookup` for a key whose digest the caller has already computed."""
    flat = r.eval(_LOOKUP_SCRIPT, 1, digest_key(key_digest), record_key(""))
    if not flat:
        return None
    record = _decode(dict(zip(flat[::2], flat[1::2], strict=True)))
    # Re-checked here too: the app's clock, not only Redis's, must agree the key is live.
    return record if key_status(record) == "active" else None


def touch(r: redis.Redis, key_id: str) -> None:
    """Write last_used_at (callers throttle this to about once a minute per key)."""
    r.hset(record_key(key_id), "last_used_at", now_iso())


def revoke_key(r: redis.Redis, key_id: str) -> dict[str, Any] | None:
    """Mark a key revoked (idempotent); None when it does not exist.

    The digest look-up is kept, so a revoked key costs the same look-up as any
    other; sweep_expired() removes it later. The record is kept for audit.
    """
    record = get_key(r, key_id)
    if record is None:
        return None
    if not record.get("revoked_at"):
        record["revoked_at"] = now_iso()
        r.hset(record_key(key_id), "revoked_at", record["revoked_at"])
    return record


def rotate_key(
    r: redis.Redis, key_id: str, *, pepper: bytes, grace_seconds: int = 0
) -> tuple[dict[str, Any], str] | None:
    """Give an active key a new secret; the old one stays valid ``grace_seconds`` more.

    Returns (record, new secret), None for an unknown key; raises KeyStateError
    for a revoked or expired one. WATCH makes two concurrent rotations of one key
    fail cleanly instead of leaving two live secrets.
    """
    with r.pipeline(transaction=True) as pipe:
        pipe.watch(record_key(key_id))
        raw = pipe.hgetall(record_key(key_id))
        if not raw:
            return None
        record = _decode(raw)
        if key_status(record) != "active":
            raise KeyStateError(f"key {key_id} is {key_status(record)} and cannot be rotated")
        secret = generate_secret()
        fields = {**_secret_fields(secret, pepper), "rotated_at": now_iso()}
        pipe.multi()
        pipe.hset(record_key(key_id), mapping=fields)
        pipe.set(digest_key(fields["digest"]), key_id)
        old = digest_key(raw["digest"])
        if grace_seconds > 0:
            pipe.expire(old, grace_seconds)
        else:
            pipe.delete(old)
        try:
            pipe.execute()
        except redis.WatchError:
            raise KeyStateError(f"key {key_id} changed during rotation; try again") from None
    return _decode({**raw, **fields}), secret


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
        pipe = r.pipeline(transaction=True)
        pipe.delete(digest_key(record["digest"]))
        pipe.hset(record_key(record["id"]), "digest", "")
        pipe.execute()
        swept += 1
    return swept
