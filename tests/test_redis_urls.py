"""REDIS_URL's forms (the ``limits`` library's syntax), JOBS_REDIS_URL's rules, and the
one-line refusal of a malformed URL. No server needed."""

from __future__ import annotations

import pytest

from config import ConfigError, load_config
from config.redis_url import RedisTarget, parse_redis_target
from gateway import fastpath

ACCEPTED = [
    ("redis://cache:6379/2", RedisTarget("standalone", "redis://cache:6379/2", (("cache", 6379),), db=2)),
    (
        "rediss://:pw@cache:6380/1",
        RedisTarget(
            "standalone",
            "rediss://:pw@cache:6380/1",
            (("cache", 6380),),
            db=1,
            username="",
            password="pw",
            tls=True,
        ),
    ),
    ("valkey://cache", RedisTarget("standalone", "redis://cache", (("cache", 6379),))),
    (
        "valkeys://cache:7000/3",
        RedisTarget("standalone", "rediss://cache:7000/3", (("cache", 7000),), db=3, tls=True),
    ),
    ("unix:///run/redis.sock", RedisTarget("standalone", "unix:///run/redis.sock")),
    (
        "redis+sentinel://s1:26379,s2:26380/mymaster",
        RedisTarget(
            "sentinel",
            "redis+sentinel://s1:26379,s2:26380/mymaster",
            (("s1", 26379), ("s2", 26380)),
            "mymaster",
        ),
    ),
    (
        "redis+sentinel://:secret@s1:26379/mymaster/4",
        RedisTarget(
            "sentinel",
            "redis+sentinel://:secret@s1:26379/mymaster/4",
            (("s1", 26379),),
            "mymaster",
            4,
            password="secret",
        ),
    ),
    (
        "rediss+sentinel://s1:1,s2:2,s3:3/m",
        RedisTarget(
            "sentinel", "rediss+sentinel://s1:1,s2:2,s3:3/m", (("s1", 1), ("s2", 2), ("s3", 3)), "m", tls=True
        ),
    ),
    ("valkey+sentinel://s1:1/m/0", RedisTarget("sentinel", "valkey+sentinel://s1:1/m/0", (("s1", 1),), "m")),
    (
        "valkeys+sentinel://s1:1/m",
        RedisTarget("sentinel", "valkeys+sentinel://s1:1/m", (("s1", 1),), "m", tls=True),
    ),
    (
        "redis+cluster://n1:7000,n2:7001",
        RedisTarget("cluster", "redis+cluster://n1:7000,n2:7001", (("n1", 7000), ("n2", 7001))),
    ),
    (
        "rediss+cluster://u:p@n1:7000",
        RedisTarget(
            "cluster", "rediss+cluster://u:p@n1:7000", (("n1", 7000),), username="u", password="p", tls=True
        ),
    ),
    ("valkey+cluster://n1:7000", RedisTarget("cluster", "valkey+cluster://n1:7000", (("n1", 7000),))),
    (
        "valkeys+cluster://n1:7000",
        RedisTarget("cluster", "valkeys+cluster://n1:7000", (("n1", 7000),), tls=True),
    ),
]


@pytest.mark.parametrize(("url", "target"), ACCEPTED)
def test_every_accepted_form_parses(url: str, target: RedisTarget) -> None:
    assert parse_redis_target("REDIS_URL", url) == target
    assert load_config(_env(url))["REDIS_URL"] == url


MALFORMED = [
    "http://cache:6379",
    "cache:6379",
    "redis+foo://a:1",
    "redis://cache:port/0",
    "redis:///0",
    "redis://cache/zero",
    "redis+sentinel://s1:26379",  # no master
    "redis+sentinel://s1/mymaster",  # no port
    "redis+sentinel://s1:1,/mymaster",  # an empty host
    "redis+sentinel://s1:1/m/db",
    "redis+sentinel://s1:1/m/0/extra",
    "redis+cluster://n1:7000/0",  # a cluster has one database
    "redis+cluster://n1",
]


@pytest.mark.parametrize("url", MALFORMED)
def test_a_malformed_url_stops_start_up_with_one_line(url: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_env(url))
    message = str(refused.value)
    assert "\n" not in message and message.startswith("REDIS_URL")


def test_jobs_redis_url_defaults_to_redis_url() -> None:
    assert load_config(_env("redis://cache:6379/0"))["JOBS_REDIS_URL"] == "redis://cache:6379/0"
    sentinel = "redis+sentinel://s1:1/m"
    assert load_config(_env(sentinel))["JOBS_REDIS_URL"] == sentinel
    assert load_config(_env(sentinel, JOBS_REDIS_URL="redis://q:1/0"))["JOBS_REDIS_URL"] == "redis://q:1/0"


def test_jobs_redis_url_is_required_with_a_cluster_and_never_a_cluster() -> None:
    with pytest.raises(ConfigError, match=r"^JOBS_REDIS_URL is required when REDIS_URL is a cluster"):
        load_config({"FLASK_ENV": "testing", "REDIS_URL": "redis+cluster://n1:7000"})
    config = load_config(_env("redis+cluster://n1:7000", JOBS_REDIS_URL="redis+sentinel://s1:1/m"))
    assert config["JOBS_REDIS_URL"] == "redis+sentinel://s1:1/m"
    with pytest.raises(ConfigError, match=r"^JOBS_REDIS_URL cannot be a cluster"):
        load_config(_env("redis://cache:1/0", JOBS_REDIS_URL="redis+cluster://n1:7000"))
    with pytest.raises(ConfigError, match=r"^JOBS_REDIS_URL"):
        load_config(_env("redis://cache:1/0", JOBS_REDIS_URL="ftp://q"))


def test_wait_settings() -> None:
    config = load_config(_env("redis://cache:1/0"))
    assert (config["REDIS_WAIT_REPLICAS"], config["REDIS_WAIT_TIMEOUT_MS"]) == (0, 500)
    with pytest.raises(ConfigError, match="REDIS_WAIT"):
        load_config(_env("redis://cache:1/0", REDIS_WAIT_REPLICAS="-1"))
    cluster = _env("redis+cluster://n:1", JOBS_REDIS_URL="redis://q:1/0", REDIS_WAIT_REPLICAS="1")
    on_cluster = load_config(cluster)
    assert on_cluster["REDIS_WAIT_REPLICAS"] == 1  # WAIT goes to each written slot's primary


def test_the_redis_fast_path_runs_on_a_standalone_redis_only() -> None:
    assert fastpath.redis_enabled({"REDIS_URL": "redis://cache:1/0"})
    assert not fastpath.redis_enabled({"REDIS_URL": "redis+sentinel://s1:1/m"})
    assert not fastpath.redis_enabled({"REDIS_URL": "redis+cluster://n:1"})
    assert not fastpath.redis_enabled({"REDIS_URL": "redis://cache:1/0", "GATEWAY_FASTPATH": False})


def _env(url: str, **more: str) -> dict[str, str]:
    env = {"FLASK_ENV": "testing", "REDIS_URL": url, **more}
    if url.startswith(("redis+cluster", "rediss+cluster", "valkey+cluster", "valkeys+cluster")):
        env.setdefault("JOBS_REDIS_URL", "redis://jobs:6379/0")
    return env
