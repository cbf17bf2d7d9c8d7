"""K1 and K2 over the ``default`` queue (SPEC §4.7): enqueue the sample job, read any job by its key."""

from __future__ import annotations

from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from litestar_saq import TaskQueues
from saq.job import Job
from saq.queue import Queue

from app.core.errors import ServerError
from app.core.queue import JOB_OPTIONS, QUEUE_NAME, queue_available
from app.tasks.jobs import sample_background_task

TASK_NOT_FOUND = "Task not found"
TASK_NOT_CREATED = "Failed to create task"


class TaskService:
    def __init__(self, queue: Queue) -> None:
        self.queue = queue

    async def create_sample_task(self, message: str) -> Job:
        async with queue_available():
            job = await self.queue.enqueue(sample_background_task.__name__, message=message, **JOB_OPTIONS)
        if job is None:  # SAQ refused the key: a job with it is already queued
            raise ServerError(TASK_NOT_CREATED)
        return job

    async def get_task(self, task_id: str) -> Job:
        """SPEC §4.7 [Δ]: an unknown id (or one whose result expired, JOB_TTL after it finished) is a 404."""
        async with queue_available():
            job = await self.queue.job(task_id)
        if job is None:
            raise NotFoundException(TASK_NOT_FOUND)
        return job


def provide_tasks(task_queues: NamedDependency[TaskQueues]) -> TaskService:
    """The ``tasks`` dependency, on litestar-saq's ``task_queues``."""
    return TaskService(task_queues.get(QUEUE_NAME))
