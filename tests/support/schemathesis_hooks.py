"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

Schemathesis feeds ids it saw in answers back into path parameters, so it could
revoke or rotate the very key it authenticates with and spend the rest of the
run on 401s. Requests naming that key are pointed at an id that does not exist.

``error_shape`` is the contract's check (section 4) that schemathesis cannot
know: every error answered as JSON carries error, status_code, message, path.
"""

from __future__ import annotations

import json
import os
from typing import Any

import schemathesis

PROTECTED_ENV = "FUZZ_PROTECTED_KEY_ID"
UNKNOWN_KEY_ID = "key_0000000000000000"
ERROR_FIELDS = frozenset({"error", "status_code", "message", "path"})


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    protected = os.environ.get(PROTECTED_ENV)
    params = case.path_parameters or {}
    if protected and params.get("key_id") == protected:
        params["key_id"] = UNKNOWN_KEY_ID


@schemathesis.check
def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """An error answered as JSON is the contract's shape, with its own status in it."""
    content_type = ",".join(response.headers.get("content-type", []))
    if response.status_code < 400 or "json" not in content_type:
        return None
    body = json.loads(response.content)
    missing = ERROR_FIELDS - set(body) if isinstance(body, dict) else ERROR_FIELDS
    if missing:
        raise AssertionError(f"error answer without {sorted(missing)}: {response.content[:300]!r}")
    if body["status_code"] != response.status_code:
        raise AssertionError(f"status_code {body['status_code']} in a {response.status_code} answer")
    return True
