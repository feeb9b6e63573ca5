"""Key format, digest storage, look-up states, rotation, sweeping and the look-up cache."""

from __future__ import annotations

import hashlib
import hmac
import time

import pytest
import redis

from auth import keys
from auth.cache import KeyCache
from auth.identity import Identity

PEPPER = b"k" * 32


def test_key_has_prefix_checksum_and_128_bits() -> None:
    secret = keys.generate_secret()
    assert secret.startswith("rgw_") and len(secret) == keys.KEY_LENGTH
    assert keys.looks_valid(secret)
    # 30 base62 characters carry log2(62**30) ~ 178 random bits.
    assert 62**30 > 2**128
    assert len({keys.generate_secret() for _ in range(200)}) == 200


def test_checksum_rejects_a_mistyped_key() -> None:
    secret = keys.generate_secret()
    body_char = secret[10]
    typo = secret[:10] + ("A" if body_char != "A" else "B") + secret[11:]
    assert not keys.looks_valid(typo)
    assert not keys.looks_valid(secret[:-1])
    assert not keys.looks_valid("sk_" + secret[3:])


@pytest.mark.parametrize("pepper", [b"", b"short", b"k" * 64, b"long" * 40, PEPPER])
def test_the_precomputed_digester_matches_hmac_sha256(pepper: bytes) -> None:
    digest = keys.digester(pepper)
    for secret in ("rgw_" + "a" * 36, "", "é-non-ascii", "x" * 500):
        assert digest(secret) == hmac.new(pepper, secret.encode(), hashlib.sha256).hexdigest()


KNOWN_KEY = "rgw_0123456789ABCDEFGHIJabcdefghij012345"
KNOWN_PEPPER = b"pepper-for-the-pinned-digest-test"
# Computed by the hand-rolled HMAC this module had before it used the stdlib's: stored
# digests must still verify, so the value may never change.
KNOWN_DIGEST = "32be86a4be6d02dbafa2870f1bf3603933298395f6fab18c2ec5328afff54e50"


def test_the_digest_of_a_known_key_is_stable_and_plain_hmac_sha256() -> None:
    direct = hmac.new(KNOWN_PEPPER, KNOWN_KEY.encode(), "sha256").hexdigest()
    assert keys.digest(KNOWN_KEY, KNOWN_PEPPER) == direct == KNOWN_DIGEST
    assert keys.digester(KNOWN_PEPPER)(KNOWN_KEY) == KNOWN_DIGEST
    # A pepper longer than SHA-256's block is hashed first (RFC 2104), as before.
    long_pepper = b"p" * 100
    expected = "5d788148c82749d123fd07f409b492ed1bea8a89786e0d10ad95b3c9b1730fe4"
    assert keys.digester(long_pepper)(KNOWN_KEY) == expected


def test_one_digester_serves_many_keys_without_mixing_them() -> None:
    digest = keys.digester(KNOWN_PEPPER)
    first, second = digest("a"), digest("b")
    assert first != second and digest("a") == first  # each call starts from the keyed state


def test_only_a_keyed_digest_is_stored(r: redis.Redis) -> None:
    record, secret = keys.create_key(r, pepper=PEPPER, name="n", scopes=["agents:read"])
    stored = r.hgetall(keys.record_key(record["id"]))
    assert secret not in str(stored) and secret[4:-6] not in str(stored)
    assert stored["digest"] == keys.digest(secret, PEPPER) != keys.digest(secret, b"other" * 8)
    assert stored["prefix"] == secret[:8] and stored["last4"] == secret[-4:]
    assert "digest" not in keys.public_view(keys.get_key(r, record["id"]))


def test_lookup_answers_none_alike_for_unknown_revoked_and_expired(r: redis.Redis) -> None:
    live, live_secret = keys.create_key(r, pepper=PEPPER, name="live", scopes=[])
    revoked, revoked_secret = keys.create_key(r, pepper=PEPPER, name="revoked", scopes=[])
    _, expired_secret = keys.create_key(r, pepper=PEPPER, name="old", scopes=[], expires_in_days=-1)
    keys.revoke_key(r, revoked["id"])
    assert keys.lookup(r, live_secret, PEPPER)["id"] == live["id"]
    for secret in (keys.generate_secret(), revoked_secret, expired_secret):
        assert keys.lookup(r, secret, PEPPER) is None
    # The script's raw reply is the same nil for all three: nothing tells them apart.
    for secret in (keys.generate_secret(), revoked_secret, expired_secret):
        key_digest = keys.digest(secret, PEPPER)
        reply = keys._LOOKUP_SCRIPT(r, [keys.digest_key(key_digest)], [*keys.record_name_parts(), key_digest])
        assert reply is None
    live_digest = keys.digest(live_secret, PEPPER)
    assert keys._LOOKUP_SCRIPT(r, [keys.digest_key(live_digest)], [*keys.record_name_parts(), live_digest])


def test_record_fields(r: redis.Redis) -> None:
    record, _ = keys.create_key(
        r, pepper=PEPPER, name="n", scopes=["jobs:read"], rate_limit="5/minute", quota="100/day",
        expires_in_days=3, created_by="cli",
    )  # fmt: skip
    view = keys.public_view(keys.get_key(r, record["id"]))
    assert set(view) >= {
        "id", "name", "scopes", "rate_limit", "quota", "created_at", "expires_at",
        "last_used_at", "revoked_at", "created_by", "status",
    }  # fmt: skip
    assert view["status"] == "active" and view["created_by"] == "cli" and view["rate_limit"] == "5/minute"


def test_rotation_without_grace_kills_the_old_secret(r: redis.Redis) -> None:
    record, old = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    rotated, new = keys.rotate_key(r, record["id"], pepper=PEPPER)
    assert new != old and rotated["id"] == record["id"]
    assert keys.lookup(r, old, PEPPER) is None
    assert keys.lookup(r, new, PEPPER)["id"] == record["id"]


def test_rotation_grace_keeps_the_old_secret_for_a_while(r: redis.Redis) -> None:
    record, old = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    _, new = keys.rotate_key(r, record["id"], pepper=PEPPER, grace_seconds=1)
    assert keys.lookup(r, old, PEPPER) is not None and keys.lookup(r, new, PEPPER) is not None
    deadline = time.monotonic() + 5
    while keys.lookup(r, old, PEPPER) is not None:
        assert time.monotonic() < deadline, "the old secret outlived its grace"
        time.sleep(0.1)
    assert keys.lookup(r, new, PEPPER) is not None


def test_revoked_key_cannot_be_rotated(r: redis.Redis) -> None:
    record, _ = keys.create_key(r, pepper=PEPPER, name="n", scopes=[])
    keys.revoke_key(r, record["id"])
    with pytest.raises(keys.KeyStateError):
        keys.rotate_key(r, record["id"], pepper=PEPPER)
    assert keys.rotate_key(r, "key_missing", pepper=PEPPER) is None


def test_sweep_removes_old_lookups_and_keeps_records(r: redis.Redis) -> None:
    live, _ = keys.create_key(r, pepper=PEPPER, name="live", scopes=[])
    gone, _ = keys.create_key(r, pepper=PEPPER, name="gone", scopes=[], expires_in_days=-40)
    recent, _ = keys.create_key(r, pepper=PEPPER, name="recent", scopes=[], expires_in_days=-1)
    assert keys.sweep_expired(r) == 1
    assert not r.exists(keys.digest_key(gone["digest"]))
    assert r.exists(keys.digest_key(live["digest"])) and r.exists(keys.digest_key(recent["digest"]))
    assert keys.get_key(r, gone["id"])["name"] == "gone"  # kept for audit
    assert keys.sweep_expired(r) == 0
    keys.revoke_key(r, live["id"])
    assert keys.sweep_expired(r, older_than_days=0) == 2


def _identity(key_id: str = "key_1") -> Identity:
    return Identity(type="api_key", id=key_id, name="n", scopes=frozenset())


def test_cache_entries_live_for_the_ttl_only() -> None:
    cache = KeyCache(ttl=0.2)
    cache.put("d", _identity(), None)
    assert cache.get("d") is not None
    time.sleep(0.25)
    assert cache.get("d") is None


def test_cache_honours_key_expiry_and_discard() -> None:
    cache = KeyCache(ttl=60)
    cache.put("expired", _identity("a"), time.time() - 1)
    cache.put("live", _identity("b"), None)
    assert cache.get("expired") is None
    cache.discard("b")
    assert cache.get("live") is None


def test_cache_is_bounded_and_touch_is_throttled() -> None:
    cache = KeyCache(ttl=60, max_entries=10)
    for i in range(25):
        cache.put(f"d{i}", _identity(f"k{i}"), None)
    assert len(cache._entries) <= 10
    assert cache.should_touch("k1") and not cache.should_touch("k1")
