"""Tier and rate-limit business rules (SPEC §4.5, §4.6)."""

from __future__ import annotations

from advanced_alchemy.repository import SQLAlchemyAsyncRepository
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService

from app.tiers.models import RateLimit, Tier


class TierService(SQLAlchemyAsyncRepositoryService[Tier]):
    class Repo(SQLAlchemyAsyncRepository[Tier]):
        model_type = Tier

    repository_type = Repo

    async def get_by_name(self, name: str) -> Tier | None:
        return await self.get_one_or_none(name=name)


class RateLimitService(SQLAlchemyAsyncRepositoryService[RateLimit]):
    class Repo(SQLAlchemyAsyncRepository[RateLimit]):
        model_type = RateLimit

    repository_type = Repo
