"""The gateway's RQ worker: owners take turns, and a canceled job never starts.

Fair share: each owner's jobs wait in a queue of its own (``queue.owner_queue_name``) and the
worker dequeues round-robin (RQ's ``DequeueStrategy.ROUND_ROBIN``), so one owner's backlog
delays another owner's job by at most one job per owner with work waiting.

RQ's worker listens on the queues it was started with. Owners appear at any time, so this
worker reads the gateway queues that hold work (waiting or retrying) again from RQ's registry of queues
before every dequeue, and while idle waits at most ``REFRESH_SECONDS`` per blocking pop
(RQ's public ``max_idle_time``) before looking again. Retries with a backoff are put back
on their queues by ``RQScheduler.enqueue_scheduled_jobs`` over the same fresh list (RQ's
scheduler process would keep the list it started with).

Cancel guard: ``execute_job`` claims the start (``guard.claim_start``) before forking the
work horse; a job canceled in the instant between dequeue and start is dropped unrun.
"""

from __future__ import annotations

import time
from typing import Any

from rq import Queue, Worker
from rq.job import Job
from rq.scheduler import RQScheduler

from gateway.jobs import guard
from gateway.jobs.queue import QUEUE_NAME, queues_with_work

REFRESH_SECONDS = 1
SCHEDULER_EVERY_SECONDS = 1.0


class GatewayWorker(Worker):
    """An RQ worker over every gateway queue, present and future, served round-robin."""

    _last_schedule = 0.0

    def refresh_queues(self) -> None:
        """Listen on the gateway queues with work; keep the round-robin turn of the ones known."""
        fresh = queues_with_work(self.connection) or [
            Queue(QUEUE_NAME, connection=self.connection, serializer=self.serializer)
        ]
        names = {q.name for q in fresh}
        # RQ rotates this list after each job (round-robin); there is no public setter, so the
        # turn order is carried over by hand: known queues in their order, new ones at the end.
        kept = [q for q in self._ordered_queues if q.name in names]
        known = {q.name for q in kept}
        self.queues = fresh
        self._ordered_queues = kept + [q for q in fresh if q.name not in known]

    def enqueue_due_retries(self) -> None:
        now = time.monotonic()
        if now - self._last_schedule < SCHEDULER_EVERY_SECONDS:
            return
        self._last_schedule = now
        scheduler = RQScheduler(self.queues, connection=self.connection, serializer=self.serializer)
        scheduler.acquire_locks()
        if scheduler.acquired_locks:  # another worker holds them: it moves the due jobs
            try:
                scheduler.enqueue_scheduled_jobs()
            finally:
                scheduler.release_locks()

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        idle_since = time.monotonic()
        while True:
            self.refresh_queues()
            self.enqueue_due_retries()
            if timeout is None:  # burst: one non-blocking look over every queue
                return super().dequeue_job_and_maintain_ttl(None, None)
            wait = REFRESH_SECONDS
            if max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                wait = max(1, min(wait, int(left)))
            found = super().dequeue_job_and_maintain_ttl(wait, wait)
            if found is not None or self._stop_requested:
                return found

    def execute_job(self, job: Job, queue: Queue) -> Any:
        if not guard.claim_start(self.connection, job.id, ttl=guard.MARK_TTL_SECONDS):
            # Canceled after we took it off the queue: the cancel already marked it canceled.
            self.connection.lrem(queue.intermediate_queue_key, 0, job.id)
            self.log.info("Worker %s: job %s was canceled before it started", self.name, job.id)
            return None
        try:
            return super().execute_job(job, queue)
        finally:
            guard.release_start(self.connection, job.id)
