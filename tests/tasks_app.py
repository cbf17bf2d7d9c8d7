"""Test only: the app whose worker also knows two test jobs, one that fails and one of a chosen length.

The tests run its worker as a real process, ``litestar --app tests.tasks_app:create_app workers run``, and enqueue
these jobs straight onto the queue (K1 only enqueues ``sample_background_task``); K2 reads any job.
"""

from __future__ import annotations

import asyncio

from litestar import Litestar
from litestar_saq import SAQPlugin

from app.core.queue import JobContext
from app.main import create_app as create_real_app

FACTORY = "tests.tasks_app:create_app"


async def failing_task(ctx: JobContext, *, message: str) -> str:
    raise RuntimeError(f"Task {message} failed")


async def sleeping_task(ctx: JobContext, *, seconds: float) -> str:
    await asyncio.sleep(seconds)
    return f"Slept {seconds} s"


def create_app() -> Litestar:
    app = create_real_app(announce=False)
    for worker in app.plugins.get(SAQPlugin).get_workers().values():
        for job in (failing_task, sleeping_task):
            worker.functions[job.__name__] = job
    return app
