"""The example jobs (SPEC §10). A job is ``async def name(ctx, **kwargs)``, listed in ``main.build_queue``; its
arguments and result must be JSON values. ``ctx["db"]()`` opens the job's own unit of work, for the same services
the web app uses."""

from __future__ import annotations

import asyncio

from app.core.queue import JobContext
from app.users.services import UserService

SAMPLE_TASK_SECONDS = 5


async def sample_background_task(ctx: JobContext, *, message: str) -> str:
    """What K1 enqueues: stands in for slow work."""
    await asyncio.sleep(SAMPLE_TASK_SECONDS)
    return f"Task {message} is complete!"


async def count_users(ctx: JobContext) -> int:
    """A job that reads the database: the number of users that are not deleted."""
    async with ctx["db"]() as session:
        return await UserService(session=session).count(is_deleted=False)
