"""`make admin` / `make key`: ``flask --app wsgi ARGS`` with `make run`'s settings.

Uses the same development environment as devtools.run (FLASK_ENV=development,
the SECRET_KEY in var/secret_key, which API-key digests depend on, and the Redis
of var/), so a key created here works against the running gateway.
"""

from __future__ import annotations

import os
import sys
from urllib.parse import urlsplit

from devtools.run import ROOT, dev_environ, port_is_free


def main(argv: list[str]) -> int:
    """Replace this process with the flask CLI in the development environment."""
    own_redis = not os.environ.get("REDIS_URL")
    env = dev_environ()
    port = urlsplit(env["REDIS_URL"]).port
    if own_redis and port and port_is_free(port):
        print(
            f"Redis for `make run` is not running (nothing on port {port}): start `make run` "
            "in another terminal first.",
            file=sys.stderr,
        )
        return 1
    os.chdir(ROOT)
    command = [sys.executable, "-m", "flask", "--app", "wsgi", *argv]
    os.execve(sys.executable, command, env)  # noqa: S606 - fixed program, arguments from the user
    return 0  # not reached: execve replaces the process


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
