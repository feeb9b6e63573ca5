"""``flask --app wsgi jobs worker [--burst]``: an RQ worker with the app's configuration."""

from __future__ import annotations

import signal

import click
from flask import current_app
from flask.cli import AppGroup

from gateway.jobs.queue import get_queue, rq_connection, serializer

jobs_cli = AppGroup("jobs", help="Background jobs (RQ) over the gateway's Redis.")


@jobs_cli.command("worker")
@click.option("--burst", is_flag=True, help="Run the jobs waiting now, then exit.")
def worker(burst: bool) -> None:
    """Run jobs from the gateway queue until SIGTERM/SIGINT (a warm shutdown finishes the current job)."""
    # Imported here: the group is registered on every app, but only this command needs rq.
    from gateway.jobs import tasks
    from gateway.jobs.worker import GatewayWorker
    from gateway.metrics import recorder

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    tasks.set_worker_app(app)  # forked work horses inherit it: jobs run with this configuration
    recorder.set_process_kind("job_worker")  # its forked work horses then count as horses
    connection = rq_connection(app.config)
    # It listens on every owner's queue (found anew before each dequeue), served in turn.
    rq_worker = GatewayWorker([get_queue(connection)], connection=connection, serializer=serializer())
    # RQ takes SIGINT/SIGTERM for its warm shutdown; give them back when it returns
    # (matters when the command runs inside another program, e.g. a test runner).
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        # The worker itself moves due retries back onto their queues (RQ's scheduler process
        # would watch only the queues that existed when it started).
        rq_worker.work(burst=burst, logging_level=app.config["LOG_LEVEL"])
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
        recorder.set_process_kind("web")  # a host program (a test runner) goes on as before
