"""Schemathesis hooks for the fuzz run (loaded through SCHEMATHESIS_HOOKS).

Schemathesis feeds ids it saw in answers back into path parameters, so it could
revoke or rotate the very key it authenticates with and spend the rest of the
run on 401s. Requests naming that key are pointed at an id that does not exist.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis

PROTECTED_ENV = "FUZZ_PROTECTED_KEY_ID"
UNKNOWN_KEY_ID = "key_0000000000000000"


@schemathesis.hook
def before_call(context: Any, case: Any, kwargs: dict[str, Any]) -> None:
    protected = os.environ.get(PROTECTED_ENV)
    params = case.path_parameters or {}
    if protected and params.get("key_id") == protected:
        params["key_id"] = UNKNOWN_KEY_ID
