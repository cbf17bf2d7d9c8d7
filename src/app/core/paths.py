"""The path form rate limits are stored and looked up under (SPEC §5.1)."""

from __future__ import annotations


def sanitize_path(path: str) -> str:
    """Strip every leading and trailing ``/``, then turn each remaining ``/`` into ``_``; nothing else changes.

    ``"/api/v1/tasks/task/"`` → ``"api_v1_tasks_task"``; ``"//a//b//"`` → ``"a__b"`` (no collapsing); idempotent.
    """
    return path.strip("/").replace("/", "_")
