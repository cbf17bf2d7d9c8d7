"""K1 and K2 (SPEC §4.7): public; K1 is rate limited, the caller's token (if any) selecting the tier's quota."""

from __future__ import annotations

from typing import Annotated

from litestar import Controller, get, post
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency, Provide
from litestar.exceptions import ServiceUnavailableException
from litestar.openapi.spec import Example
from litestar.params import FromPath, FromQuery, QueryParameter

from app.core.rate_limit import rate_limit
from app.tasks.schemas import TaskCreated, TaskRead
from app.tasks.services import TaskService, provide_tasks

TaskMessage = Annotated[
    str, QueryParameter(description="Passed to the job as `message`.", examples=[Example(value="hello")])
]


class TaskController(Controller):
    path = "/tasks"
    tags = ["tasks"]
    dependencies = {"tasks": Provide(provide_tasks, sync_to_thread=False)}

    @post("/task", exclude_from_auth=True, guards=[rate_limit], raises=[ServiceUnavailableException])
    async def create_task(self, message: FromQuery[TaskMessage], tasks: NamedDependency[TaskService]) -> TaskCreated:
        """Queue `sample_background_task(message=…)`; a worker (`task worker`) runs it in about 5 s."""
        job = await tasks.create_sample_task(message)
        return TaskCreated(id=job.key)

    # A task's state changes within seconds: a cached answer would hide its progress (SPEC §7 keeps a handler's own).
    @get(
        "/task/{task_id:str}",
        exclude_from_auth=True,
        cache_control=CacheControlHeader(no_store=True),
        raises=[ServiceUnavailableException],
    )
    async def read_task(self, task_id: FromPath[str], tasks: NamedDependency[TaskService]) -> TaskRead:
        """The task's state; kept for an hour after it finished."""
        return TaskRead.of(await tasks.get_task(task_id))
