"""Jobs: a closed registry of named jobs run by RQ workers over the gateway's Redis."""

from __future__ import annotations

from flask import Flask


def init_app(app: Flask) -> None:
    """Bind the RQ connection, the /jobs views and the ``jobs`` CLI group to ``app``."""
    from gateway.jobs import queue
    from gateway.jobs.cli import jobs_cli
    from gateway.jobs.routes import bp

    queue.bind(app)
    app.register_blueprint(bp)
    app.cli.add_command(jobs_cli)
