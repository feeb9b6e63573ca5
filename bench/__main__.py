"""Dispatch ``python -m bench secured|streams|all [options]`` to the benchmark modules."""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ("secured", "streams")
USAGE = "usage: python -m bench {secured|streams|all} [options]"


def run(name: str, argv: list[str]) -> int:
    module = importlib.import_module(f"bench.{name}")
    return int(module.main(argv) or 0)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in (*BENCHMARKS, "all"):
        sys.stderr.write(USAGE + "\n")
        return 2
    names = BENCHMARKS if args[0] == "all" else (args[0],)
    status = 0
    for name in names:
        status = run(name, args[1:]) or status
    return status


if __name__ == "__main__":
    sys.exit(main())
