"""The hourly purge of the token blacklist (SPEC §10 cron): expired rows can never match a usable token."""

from __future__ import annotations

import structlog

from app.auth.services import BlacklistService
from app.core.queue import JobContext

logger = structlog.get_logger("app.auth")


async def purge_expired_tokens(ctx: JobContext) -> int:
    async with ctx["db"]() as session:
        purged = await BlacklistService(session=session).purge_expired()
    logger.info("Purged expired tokens from the blacklist", count=purged)
    return purged
