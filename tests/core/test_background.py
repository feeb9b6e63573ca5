"""The one background-loop helper: runs in the process that uses it, restarts in a forked
child (dropping the parent's batched state first), and finishes at exit."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

from core.background import BackgroundLoop


def test_ticks_in_the_background_and_starts_once() -> None:
    ticked = threading.Event()
    loop = BackgroundLoop("test-loop", 0.01, ticked.set)
    before = threading.active_count()
    loop.ensure_started()
    loop.ensure_started()
    assert ticked.wait(5)
    assert loop.owned()
    assert threading.active_count() == before + 1


def test_a_failing_tick_does_not_end_the_loop() -> None:
    calls: list[int] = []

    def tick() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("first round fails")

    loop = BackgroundLoop("test-failing", 0.01, tick)
    loop.ensure_started()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(calls) >= 3


def test_a_forked_child_drops_the_parents_state_and_runs_its_own_loop() -> None:
    forked: list[str] = []
    ticks = threading.Event()
    loop = BackgroundLoop("test-fork", 0.01, ticks.set, on_fork=lambda: forked.append("dropped"))
    loop.ensure_started()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: not owned until it starts its own loop
        ok = not loop.owned()
        ticks.clear()
        loop.ensure_started()
        ok = ok and loop.owned() and forked == ["dropped"] and ticks.wait(5)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    assert os.read(read, 1) == b"1"
    os.waitpid(pid, 0)
    assert forked == []  # the parent keeps its state


def test_final_runs_once_at_exit_in_the_starting_process_only() -> None:
    script = textwrap.dedent(
        """
        import os, sys
        from core.background import BackgroundLoop
        loop = BackgroundLoop("exit", 60, lambda: None, final=lambda: print("final", os.getpid() == parent))
        parent = os.getpid()
        loop.ensure_started()
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a forked child's exit must not run the parent's final
        os.waitpid(pid, 0)
        """
    )
    command = [sys.executable, "-c", script]
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split("\n").count("final True") == 1
    assert "final False" not in out.stdout
