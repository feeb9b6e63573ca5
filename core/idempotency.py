"""Idempotency-Key for POST routes that create something (events, jobs, admin keys).

A key is scoped per identity (two clients may pick the same one) and stored only as a
digest, next to a digest of the request it came with, for 24 hours. The same key with the
same request replays the first answer; with another request it is a 409.

Events decide "new or repeat" inside their own append script. Routes whose creation is not
one script (an RQ enqueue, a key with its audit entry) *claim* the key first, atomically:
the first request holds a short ``pending`` claim while it works and then stores its answer;
a concurrent repeat meanwhile gets 409 (retry shortly), and a failed attempt drops the claim
so the retry can create. A claim whose request died is dropped after ``PENDING_SECONDS``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis
from flask import Response, jsonify, request

from core.errors import APIError
from core.redis import KEYS, LuaScript

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
TTL_SECONDS = 24 * 3600
PENDING_SECONDS = 60

_CLAIM = LuaScript(
    """
local previous = redis.call('GET', KEYS[1])
if previous then return previous end
redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
return false
"""
)
_DROP_PENDING = LuaScript(
    """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
)


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body."""


class IdempotencyInProgress(Exception):
    """The first request with this Idempotency-Key has not answered yet."""


class BadIdempotencyKey(ValueError):
    """The header is empty, too long or not printable."""


@dataclass(frozen=True)
class Answer:
    body: dict[str, Any]
    status: int
    replayed: bool = False


def digest(*parts: str) -> str:
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def request_digest(body: Any) -> str:
    """A request body's identity: its JSON value, whatever the spacing or key order."""
    return digest(json.dumps(body, sort_keys=True, separators=(",", ":")))


def scoped_digest(owner: str, idempotency_key: str) -> str:
    return digest(owner, idempotency_key)


def parse_header(headers: Mapping[str, str]) -> str | None:
    """The header's value, None without one; BadIdempotencyKey for an unusable value."""
    value = headers.get(HEADER)
    if value is None:
        return None
    if not value or len(value) > MAX_KEY_LENGTH or not value.isprintable():
        raise BadIdempotencyKey(f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable characters")
    return value


def request_key() -> str | None:
    """The current request's Idempotency-Key, None without one; a 400 for an unusable value."""
    try:
        return parse_header(request.headers)
    except BadIdempotencyKey as exc:
        raise APIError(400, str(exc)) from None


def run_once(
    r: redis.Redis,
    *,
    scope: str,
    owner: str,
    idempotency_key: str,
    request: str,
    create: Callable[[], Answer],
    stored: Callable[[Answer], dict[str, Any]] = lambda answer: answer.body,
    replay: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
) -> Answer:
    """``create()`` once per (owner, key); a repeat gets its answer back.

    ``stored`` turns the answer into what is kept (to keep a secret out of Redis in clear),
    ``replay`` turns that back into the answer a repeat gets.
    """
    record_key = KEYS.idempotency(scope, scoped_digest(owner, idempotency_key))
    pending = json.dumps({"request": request, "pending": True})
    previous = _CLAIM(r, [record_key], [pending, PENDING_SECONDS])
    if previous:
        return _repeat(json.loads(previous), request, replay)
    try:
        answer = create()
    except BaseException:
        _DROP_PENDING(r, [record_key], [pending])
        raise
    if answer.status >= 400:  # a refusal is not remembered: the client may fix and retry
        _DROP_PENDING(r, [record_key], [pending])
        return answer
    done = {"request": request, "status": answer.status, "body": stored(answer)}
    r.set(record_key, json.dumps(done), ex=TTL_SECONDS)
    return answer


def _repeat(
    first: dict[str, Any], request: str, replay: Callable[[dict[str, Any]], dict[str, Any]]
) -> Answer:
    if first.get("request") != request:
        raise IdempotencyConflict
    if first.get("pending"):
        raise IdempotencyInProgress
    return Answer(replay(first["body"]), int(first["status"]), replayed=True)


def respond(
    r: redis.Redis,
    *,
    scope: str,
    owner: str,
    body: Any,
    create: Callable[[], Answer],
    stored: Callable[[Answer], dict[str, Any]] = lambda answer: answer.body,
    replay: Callable[[dict[str, Any]], dict[str, Any]] = lambda body: body,
) -> tuple[Response, int]:
    """A view's answer under the request's Idempotency-Key (or plainly, without one)."""
    idempotency_key = request_key()
    if idempotency_key is None:
        answer = create()
    else:
        try:
            answer = run_once(
                r,
                scope=scope,
                owner=owner,
                idempotency_key=idempotency_key,
                request=request_digest(body),
                create=create,
                stored=stored,
                replay=replay,
            )
        except IdempotencyConflict:
            raise APIError(
                409, "Idempotency-Key conflict", f"This {HEADER} was used with a different request body."
            ) from None
        except IdempotencyInProgress:
            raise APIError(
                409,
                "Idempotency-Key in use",
                f"The first request with this {HEADER} is still being answered; retry shortly.",
            ) from None
    response = jsonify(answer.body)
    if answer.replayed:
        response.headers["Idempotent-Replayed"] = "true"
    return response, answer.status


def _keystream(server_secret: bytes, owner: str, idempotency_key: str, length: int) -> bytes:
    """HMAC-SHA256 in counter mode: a pad only the server secret *and* the client's key make."""
    seed = "\n".join(("idempotency-seal", owner, idempotency_key)).encode()
    blocks = (
        hmac.new(server_secret, seed + b"\n" + str(i).encode(), "sha256").digest()
        for i in range(length // 32 + 1)
    )
    return b"".join(blocks)[:length]


def seal(
    body: dict[str, Any], field: str, server_secret: bytes, owner: str, idempotency_key: str
) -> dict[str, Any]:
    """``body`` with ``field`` (a secret) replaced by its sealed form, for storing.

    Redis holds only a digest of the Idempotency-Key, so a copy of Redis alone cannot open it;
    each (owner, key) seals one value once, so the pad is never reused.
    """
    secret = str(body[field]).encode()
    pad = _keystream(server_secret, owner, idempotency_key, len(secret))
    sealed = {k: v for k, v in body.items() if k != field}
    sealed[f"{field}_sealed"] = bytes(a ^ b for a, b in zip(secret, pad, strict=True)).hex()
    return sealed


def unseal(
    stored: dict[str, Any], field: str, server_secret: bytes, owner: str, idempotency_key: str
) -> dict[str, Any]:
    """The answer ``seal`` was given, with the secret back in its place."""
    body = dict(stored)
    sealed = bytes.fromhex(body.pop(f"{field}_sealed"))
    pad = _keystream(server_secret, owner, idempotency_key, len(sealed))
    body[field] = bytes(a ^ b for a, b in zip(sealed, pad, strict=True)).decode()
    return body
