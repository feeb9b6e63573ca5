"""Every Lua script is called with KEYS of one Redis Cluster slot, and names no key itself
(except the documented one-server look-up, which a cluster never runs)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask

from auth.loaders import pepper
from tests.support import script_calls


def test_the_checker_catches_keys_of_two_slots() -> None:
    planted = [("return 1", ["gw:a:{k:1}:x", "gw:a:{k:2}:y"])]
    assert script_calls.slot_violations(planted) == planted
    assert script_calls.slot_violations([("return 1", ["gw:a:{k:1}:x", "gw:b:{k:1}:y"])]) == []
    assert script_calls.builds_keys("redis.call('GET', ARGV[1] .. id)")
    assert not script_calls.builds_keys("redis.call('ZADD', KEYS[1], '(' .. ARGV[2], 'x')")


def test_every_script_runs_on_keys_of_one_slot(
    make_app: Callable[..., Flask], r: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(GATEWAY_FASTPATH="false", RATELIMIT_LEASE_MAX="1")
    with script_calls.recording(monkeypatch) as calls:
        with app.app_context():
            script_calls.exercise(app, app.test_client(), r, pepper(app))
        script_calls.exercise_jobs(r)
    ran = {source for source, _ in calls}
    missing = script_calls.known_sources() - script_calls.cluster_only() - ran
    assert not missing, f"{len(missing)} scripts never ran: {[m[:80] for m in missing]}"
    checked = [
        c
        for c in calls
        if c[0] not in script_calls.standalone_only() and not script_calls.split_on_a_cluster(c)
    ]
    assert script_calls.slot_violations(checked) == []


def test_no_script_names_a_key_itself_but_the_documented_ones() -> None:
    allowed = script_calls.standalone_only() | script_calls.jobs_only()
    offenders = [s[:80] for s in script_calls.known_sources() - allowed if script_calls.builds_keys(s)]
    assert offenders == []
    assert all(script_calls.builds_keys(s) for s in script_calls.jobs_only())


def test_cluster_faults_are_unavailable_and_usage_errors_are_not() -> None:
    from redis import exceptions as rex

    from core.redis import is_unavailable

    for fault in (
        rex.ClusterDownError("CLUSTERDOWN The cluster is down"),
        rex.TryAgainError("TRYAGAIN"),
        rex.ClusterError("TTL exhausted."),
        rex.SlotNotCoveredError('Slot "7" not covered by the cluster.'),
        rex.MovedError("1771 127.0.0.1:7000"),
        rex.AskError("1771 127.0.0.1:7000"),
        rex.RedisClusterException("Redis Cluster cannot be connected. Please provide at least one node"),
    ):
        assert is_unavailable(fault), fault
    for bug in (
        rex.ClusterCrossSlotError("CROSSSLOT Keys in request don't hash to the same slot"),
        rex.RedisClusterException("EVALSHA - all keys must map to the same key slot"),
    ):
        assert not is_unavailable(bug), bug
