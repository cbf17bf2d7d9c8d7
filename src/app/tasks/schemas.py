"""Bodies of K1 and K2 (SPEC §4.7): the created task's id, and a task's state as SAQ records it."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from saq.job import Job, Status

from app.core.queue import job_time

# Always set by SAQ's enqueue; the epoch only keeps the field's type honest.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_UNSUCCESSFUL = {Status.FAILED, Status.ABORTED}
_TRACEBACK = "Traceback (most recent call last):"


class TaskCreated(msgspec.Struct):
    id: str


class TaskRead(msgspec.Struct):
    """ARQ's job-result names where SAQ has an equivalent (SPEC §4.7); times in UTC."""

    id: str
    function: str
    kwargs: dict[str, Any]
    status: Status
    success: bool | None
    result: Any
    error: str | None
    attempts: int
    queue_name: str
    enqueue_time: datetime
    start_time: datetime | None
    finish_time: datetime | None

    @classmethod
    def of(cls, job: Job) -> TaskRead:
        complete = job.status == Status.COMPLETE
        return cls(
            id=job.key,
            function=job.function,
            kwargs=job.kwargs or {},
            status=job.status,
            success=True if complete else (False if job.status in _UNSUCCESSFUL else None),
            result=job.result if complete else None,
            error=error_text(job.error),
            attempts=job.attempts,
            queue_name=job.get_queue().name,
            enqueue_time=job_time(job.queued) or _EPOCH,
            start_time=job_time(job.started),
            finish_time=job_time(job.completed),
        )


def error_text(error: str | None) -> str | None:
    """The exception line of a failed job's error, never its traceback (SPEC §1.3); SAQ stores the whole
    ``traceback.format_exc()``, which the worker's log and the dashboard still show. Abort reasons pass unchanged."""
    if error is None or _TRACEBACK not in error:
        return error
    last = error.rstrip().split(_TRACEBACK)[-1].splitlines()
    # After the header come the frames, indented; the exception (`Type: message`) starts at the first column.
    while last and (not last[0] or last[0][0].isspace()):
        last.pop(0)
    return "\n".join(last) or None
