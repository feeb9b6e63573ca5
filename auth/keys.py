"""API keys: format, digest, storage and look-up.

A key reads ``rgw_<30 base62 chars><6 base62 chars of CRC32>``: the prefix lets
people and secret scanners recognise it, the checksum rejects a mistyped key
offline (GitHub's token format). Only an HMAC-SHA256 digest of the whole key is
stored; the secret itself is shown once and never kept.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
import zlib
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from gateway.redis import key as redis_key

KEY_PREFIX = "rgw_"
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_BODY_LENGTH = 30  # 30 base62 characters = 178 random bits
_CHECKSUM_LENGTH = 6
KEY_LENGTH = len(KEY_PREFIX) + _BODY_LENGTH + _CHECKSUM_LENGTH

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
    "created_by",
)


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
    """The keyed digest stored in place of the key (HMAC-SHA256 with a server-side secret)."""
    return hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


def record_key(key_id: str) -> str:
    return redis_key("keys", "record", key_id)


def digest_key(key_digest: str) -> str:
    return redis_key("keys", "digest", key_digest)


def index_key() -> str:
    return redis_key("keys", "index")


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _decode(raw: dict[str, str]) -> dict[str, Any]:
    record: dict[str, Any] = {k: (v or None) for k, v in raw.items()}
    record["scopes"] = json.loads(raw.get("scopes") or "[]")
    return record


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    """What people and clients may see of a key record."""
    view = {name: record.get(name) for name in PUBLIC_FIELDS}
    view["status"] = key_status(record)
    return view


def key_status(record: dict[str, Any], now: float | None = None) -> str:
    if record.get("revoked_at"):
        return "revoked"
    expires = record.get("expires_at")
    if expires and _parse_iso(expires) <= (now or time.time()):
        return "expired"
    return "active"


def _parse_iso(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


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
    """Store a new key and return (record, secret). The secret is not kept anywhere."""
    secret = generate_secret()
    key_id = "key_" + secrets.token_hex(8)
    created = now_iso()
    expires = None
    if expires_in_days is not None:
        expires = (datetime.now(UTC) + timedelta(days=expires_in_days)).isoformat(timespec="seconds")
        expires = expires.replace("+00:00", "Z")
    fields = {
        "id": key_id,
        "name": name,
        "prefix": secret[: len(KEY_PREFIX) + 4],
        "last4": secret[-4:],
        "scopes": json.dumps(list(scopes)),
        "rate_limit": rate_limit or "",
        "quota": quota or "",
        "created_at": created,
        "expires_at": expires or "",
        "last_used_at": "",
        "revoked_at": "",
        "created_by": created_by or "",
        "digest": digest(secret, pepper),
    }
    pipe = r.pipeline(transaction=True)
    pipe.hset(record_key(key_id), mapping=fields)
    pipe.set(digest_key(fields["digest"]), key_id)
    pipe.zadd(index_key(), {key_id: time.time()})
    pipe.execute()
    return _decode(fields), secret


def get_key(r: redis.Redis, key_id: str) -> dict[str, Any] | None:
    raw = r.hgetall(record_key(key_id))
    return _decode(raw) if raw else None


def list_keys(r: redis.Redis) -> list[dict[str, Any]]:
    """Every key record, oldest first."""
    ids = r.zrange(index_key(), 0, -1)
    pipe = r.pipeline(transaction=False)
    for key_id in ids:
        pipe.hgetall(record_key(key_id))
    return [_decode(raw) for raw in pipe.execute() if raw]


# One round trip for every look-up, found or not, so an unknown key costs the
# same time as a revoked or expired one.
_LOOKUP_SCRIPT = """
local id = redis.call('GET', KEYS[1])
if not id then return false end
return redis.call('HGETALL', ARGV[1] .. id)
"""


def lookup(r: redis.Redis, secret: str, pepper: bytes) -> dict[str, Any] | None:
    """The active record for a presented key, or None for unknown, revoked or expired keys."""
    flat = r.eval(_LOOKUP_SCRIPT, 1, digest_key(digest(secret, pepper)), record_key(""))
    if not flat:
        return None
    record = _decode(dict(zip(flat[::2], flat[1::2], strict=True)))
    return record if key_status(record) == "active" else None
