"""Admin users: creation, password hashing (argon2id) and login checks.

Redis layout: ``gw:users:record:<id>`` (hash: id, email, password_hash,
created_at, created_by) and ``gw:users:email:<email>`` -> id. Only the argon2id
hash is stored, never the password.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from functools import lru_cache
from typing import Any, TypeVar

import redis
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from auth.keys import now_iso
from gateway.redis import key as redis_key

MIN_PASSWORD_LENGTH = 12
# Bounds the hashing work an attacker can ask for with one login attempt.
MAX_PASSWORD_LENGTH = 1024
MAX_EMAIL_LENGTH = 254
T = TypeVar("T")


class UserExistsError(ValueError):
    """An admin user with that email already exists."""


@lru_cache(maxsize=1)
def hasher() -> PasswordHasher:
    """argon2-cffi's defaults: argon2id with the RFC 9106 low-memory profile."""
    return PasswordHasher()


@lru_cache(maxsize=1)
def _dummy_hash() -> str:
    # Verified when the email is unknown, so that answer costs the same hashing
    # work as a wrong password and timing does not reveal which emails exist.
    return _hash(secrets.token_urlsafe(24))


# At most this many hashes run at once per worker: each takes 64 MiB of memory.
HASH_THREADS = 2


@lru_cache(maxsize=1)
def _hash_pool() -> Any:
    from gevent.threadpool import ThreadPool

    return ThreadPool(HASH_THREADS)


def off_loop(fn: Callable[..., T], *args: Any) -> T:
    """Run CPU-heavy hashing (~0.25 s, 64 MiB) beside the gevent loop, not on it.

    Under gunicorn's gevent worker one slow call would stall every greenlet of
    the worker (streams, health probes); argon2-cffi releases the GIL, so a
    small native thread pool lets the loop keep serving meanwhile.
    """
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        return fn(*args)
    return _hash_pool().apply(fn, args)  # type: ignore[no-any-return]


def _hash(password: str) -> str:
    return off_loop(hasher().hash, password)


def _matches(stored: str, password: str) -> bool:
    try:
        return bool(hasher().verify(stored, password))
    except (VerificationError, InvalidHashError):
        return False


def _verify(stored: str, password: str) -> bool:
    # The exception is caught inside the pool: gevent would print the traceback of a task that raises.
    return off_loop(_matches, stored, password)


def record_key(user_id: str) -> str:
    return redis_key("users", "record", user_id)


def email_key(email: str) -> str:
    return redis_key("users", "email", normalize_email(email))


def normalize_email(email: str) -> str:
    return email.strip().lower()


def validate_email(email: str) -> str:
    """The normalized email, or ValueError with a sentence for the operator."""
    value = normalize_email(email)
    local, _, domain = value.partition("@")
    if not local or "." not in domain or len(value) > MAX_EMAIL_LENGTH or any(c.isspace() for c in value):
        raise ValueError(f"{email!r} is not an email address")
    return value


def validate_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(password) > MAX_PASSWORD_LENGTH:
        raise ValueError(f"the password must have at most {MAX_PASSWORD_LENGTH} characters")
    return password


def create_user(r: redis.Redis, *, email: str, password: str, created_by: str = "") -> dict[str, Any]:
    """Store a new admin user; raises ValueError for bad input, UserExistsError for a taken email."""
    email = validate_email(email)
    validate_password(password)
    user_id = "usr_" + secrets.token_hex(8)
    # Claim the email first (SET NX), so two concurrent creations cannot both win.
    if not r.set(email_key(email), user_id, nx=True):
        raise UserExistsError(f"an admin user with email {email} already exists")
    record = {
        "id": user_id,
        "email": email,
        "password_hash": _hash(password),
        "created_at": now_iso(),
        "created_by": created_by,
    }
    r.hset(record_key(user_id), mapping=record)
    return public_view(record)


def get_user(r: redis.Redis, user_id: str) -> dict[str, Any] | None:
    raw = r.hgetall(record_key(user_id))
    return raw or None


def public_view(record: dict[str, Any]) -> dict[str, Any]:
    return {name: record.get(name) for name in ("id", "email", "created_at", "created_by")}


def authenticate(r: redis.Redis, *, email: str, password: str) -> dict[str, Any] | None:
    """The user record when email and password match, else None (same work either way)."""
    dummy = _dummy_hash()  # made before the look-up, so a process's first attempt is not slower
    user_id = r.get(email_key(email)) if len(email) <= MAX_EMAIL_LENGTH else None
    record = get_user(r, user_id) if user_id else None
    stored = record["password_hash"] if record else dummy
    if not _verify(stored, password) or record is None:
        return None
    if hasher().check_needs_rehash(stored):
        # Parameters were raised since this hash was made: upgrade it while we hold the password.
        r.hset(record_key(record["id"]), "password_hash", _hash(password))
    return record
