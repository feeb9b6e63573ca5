"""Schemathesis against a live gunicorn: no 5xx, and every answer matches /openapi.json.

The runs use the schemathesis CLI (its stable interface) with a key holding
every scope, a fixed seed and a small budget per operation, so they are
reproducible and take seconds. Two runs, one per generation mode:

* positive: documented requests; no server error; status codes, content
  types, headers and bodies as documented. The SSE stream stays in: its
  events are checked against the documented event shape.
* negative: requests that break the document (wrong types, missing fields,
  bad formats, out-of-range values); no server error, and every error in the
  contract's shape (the ``error_shape`` check in tests/support/schemathesis_hooks.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import redis

from auth import keys
from auth.scopes import ALL_SCOPES
from devtools.gunicorn import ROOT, GunicornServer

pytestmark = pytest.mark.gunicorn

POSITIVE_CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "error_shape",
    ]
)
# Negative data is answered 400/404/415/422-like errors the document cannot list for every
# generated variant; what must hold is: never a 5xx, always the error shape.
NEGATIVE_CHECKS = "not_a_server_error,error_shape"


@dataclass(frozen=True)
class Run:
    mode: str
    phases: str
    checks: str
    extra: tuple[str, ...] = ()
    max_examples: int = 20


RUNS = {
    "positive": Run("positive", "examples,coverage,fuzzing", POSITIVE_CHECKS),
    # The coverage phase, for every operation: per parameter and body field, deterministically, a
    # missing required value, a wrong type, an out-of-range number, a string that breaks its format.
    "negative": Run("negative", "coverage", NEGATIVE_CHECKS),
    # Random negative bodies. Only operations with a body: one whose every input is valid (a
    # plain string path parameter, nothing else) has no negative data, an error to schemathesis.
    "negative-bodies": Run(
        "negative",
        "fuzzing",
        NEGATIVE_CHECKS,
        # Some bodies (a rotate's optional grace) have little room to break, so many generated
        # variants are filtered out: that says nothing about the server, and must not fail the run.
        ("--include-by", "/requestBody/required == true", "--suppress-health-check", "filter_too_much"),
        max_examples=100,  # few operations, each cheap: a larger budget for the random part
    ),
}
SEED = 20260101
# Limits far above what the run sends: the run is about shapes, not throttling (429s would
# leave the routes behind them untested; 429 itself is documented and tested elsewhere).
SERVER_ENV = {
    "RATELIMIT_DEFAULT": "100000/minute",
    "RATELIMIT_ANONYMOUS": "100000/minute",
    "RATELIMIT_LOGIN": "100000/minute",
    "RATELIMIT_LOGIN_EMAIL": "100000/minute",
}
REPORT_DIR = ROOT / "test-output" / "schemathesis"


def _schemathesis(url: str, secret: str, key_id: str, name: str) -> subprocess.CompletedProcess[str]:
    run = RUNS[name]
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/openapi.json",
        "--header",
        f"Authorization: Bearer {secret}",
        "--mode",
        run.mode,
        "--checks",
        run.checks,
        "--max-examples",
        str(run.max_examples),
        "--phases",
        run.phases,
        *run.extra,
        "--seed",
        str(SEED),
        "--no-shrink",
        # One worker: CPython 3.11's ast.parse is not thread-safe ("AST constructor recursion
        # depth mismatch"), and Hypothesis parses lambdas' source while schemathesis generates.
        "--workers",
        "1",
        "--request-timeout",
        "10",
        "--report",
        "junit",
        "--report-dir",
        str(REPORT_DIR / name),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "FUZZ_PROTECTED_KEY_ID": key_id,
        "PYTHONPATH": str(ROOT),
    }
    return subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)


@pytest.mark.parametrize("name", list(RUNS))
def test_generated_requests_get_documented_answers(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], r: redis.Redis, name: str
) -> None:
    secret = make_key(scopes=ALL_SCOPES, name="schemathesis", rate_limit="100000/minute")
    key_id = keys.list_keys(r)[0]["id"]
    server = gunicorn(workers=2, env=SERVER_ENV)
    run = _schemathesis(server.url, secret, key_id, name)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Tested: 0" not in run.stdout
    # The key it authenticated with survived the run, so the run was not spent on 401s.
    record = keys.get_key(r, key_id)
    assert record is not None and keys.key_status(record) == "active"
