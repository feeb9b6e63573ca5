"""Schemathesis against a live gunicorn: no 5xx, and every answer matches /openapi.json.

The run uses the schemathesis CLI (its stable interface) with a key holding
every scope, a fixed seed and a small budget per operation, so it is
reproducible and takes seconds. Checks: no server error; status codes,
content types, headers and bodies as documented. The SSE stream stays in: its
events are checked against the documented event shape.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import redis

from auth import keys
from auth.scopes import ALL_SCOPES
from devtools.gunicorn import ROOT, GunicornServer

pytestmark = pytest.mark.gunicorn

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
    ]
)
MAX_EXAMPLES = 20
SEED = 20260101
# Limits far above what the run sends: the run is about shapes, not throttling (429s would
# leave the routes behind them untested; 429 itself is documented and tested elsewhere).
SERVER_ENV = {
    "RATELIMIT_DEFAULT": "100000/minute",
    "RATELIMIT_ANONYMOUS": "100000/minute",
    "RATELIMIT_LOGIN": "100000/minute",
}
REPORT_DIR = ROOT / "test-output" / "schemathesis"


def test_generated_requests_get_documented_answers(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], r: redis.Redis
) -> None:
    secret = make_key(scopes=ALL_SCOPES, name="schemathesis", rate_limit="100000/minute")
    key_id = keys.list_keys(r)[0]["id"]
    server = gunicorn(workers=2, env=SERVER_ENV)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        "--header",
        f"Authorization: Bearer {secret}",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--phases",
        "examples,coverage,fuzzing",
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
        str(REPORT_DIR),
    ]
    env = {
        **os.environ,
        "SCHEMATHESIS_HOOKS": "tests.support.schemathesis_hooks",
        "FUZZ_PROTECTED_KEY_ID": key_id,
        "PYTHONPATH": str(ROOT),
    }
    run = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=240)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
    assert "Tested: 0" not in run.stdout
    # The key it authenticated with survived the run, so the run was not spent on 401s.
    record = keys.get_key(r, key_id)
    assert record is not None and keys.key_status(record) == "active"
