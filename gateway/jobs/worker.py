"""The gateway's RQ worker: owners take turns, and a canceled job never starts.

Fair share: each owner's jobs wait in a queue of its own (``queue.owner_queue_name``) and the
worker dequeues round-robin, so one owner's backlog
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

import redis
from rq import Queue, Worker
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.worker import WorkerStatus

from gateway.jobs import guard
from gateway.jobs.queue import QUEUE_NAME, queues_with_work

REFRESH_SECONDS = 1
SCHEDULER_EVERY_SECONDS = 1.0


class GatewayWorker(Worker):
    """An RQ worker over every gateway queue, present and future, served round-robin.

    It dequeues through RQ's public ``Queue.dequeue_any`` over a turn order of its own
    (RQ keeps its order in a private list that only its constructor fills), and learns
    of a warm shutdown through the public ``handle_warm_shutdown_request`` hook.
    """

    _last_schedule = 0.0
    _turn: tuple[str, ...] = ()  # queue names, the next to serve first
    _stopping = False

    def handle_warm_shutdown_request(self) -> None:
        self._stopping = True
        super().handle_warm_shutdown_request()

    def refresh_queues(self) -> list[Queue]:
        """The gateway queues with work, in turn order: known ones keep their turn, new ones queue last."""
        fresh = queues_with_work(self.connection) or [
            Queue(QUEUE_NAME, connection=self.connection, serializer=self.serializer)
        ]
        self.queues = fresh
        by_name = {q.name: q for q in fresh}
        order = [name for name in self._turn if name in by_name]
        order += [q.name for q in fresh if q.name not in set(order)]
        self._turn = tuple(order)
        return [by_name[name] for name in order]

    def _served(self, queue: Queue) -> None:
        # Round-robin: the queue just served goes to the back of the turn.
        names = [name for name in self._turn if name != queue.name]
        self._turn = (*names, queue.name)

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
        """The next job of the queue whose turn it is (burst: one non-blocking look)."""
        self.set_state(WorkerStatus.IDLE)
        idle_since = time.monotonic()
        while not self._stopping:
            wait = None if timeout is None else REFRESH_SECONDS
            if wait is not None and max_idle_time is not None:
                left = max_idle_time - (time.monotonic() - idle_since)
                if left <= 0:
                    return None
                wait = max(1, min(wait, int(left)))
            found = self._dequeue_once(wait)
            if found is not None or timeout is None:
                return found
        return None

    def _dequeue_once(self, wait: int | None) -> tuple[Job, Queue] | None:
        self.heartbeat()
        if self.should_run_maintenance_tasks:
            self.run_maintenance_tasks()
        ordered = self.refresh_queues()
        self.enqueue_due_retries()
        try:
            found = self.queue_class.dequeue_any(
                ordered,
                wait,
                connection=self.connection,
                job_class=self.job_class,
                serializer=self.serializer,
                death_penalty_class=self.death_penalty_class,
            )
        except DequeueTimeout:
            return None
        except (redis.ConnectionError, redis.TimeoutError) as exc:  # as RQ's own loop: wait, go on
            self.log.error("Worker %s: Redis unreachable (%s); retrying", self.name, exc)
            time.sleep(REFRESH_SECONDS)
            return None
        if found is not None:
            job, queue = found
            self._served(queue)
            job.redis_server_version = self.get_redis_server_version()
            self.log.info("Worker %s: %s: %s", self.name, queue.name, job.id)
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
