"""Tier and rate-limit business rules: unique names, one limit per path and tier, cascades (SPEC §4.5, §4.6)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from advanced_alchemy.exceptions import ErrorMessages
from advanced_alchemy.filters import LimitOffset, OrderBy
from advanced_alchemy.service import SQLAlchemyAsyncRepositoryService
from litestar.connection import ASGIConnection
from litestar.di import NamedDependency
from litestar.exceptions import NotFoundException
from sqlalchemy import ColumnElement, select
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.db import AlchemyConfig, Repository, lock_row, save_unique, utc_now
from app.core.errors import UnprocessableError
from app.core.fields import is_db_id, storable
from app.core.paths import sanitize_path
from app.core.rate_limit import RulesLoader, TierRules
from app.core.schemas import Pagination
from app.tiers.models import RateLimit, Tier
from app.tiers.schemas import RateLimitCreate, RateLimitUpdate, TierCreate, TierUpdate

TIER_NOT_FOUND = "Tier not found"
TIER_NAME_TAKEN = "Tier Name not available"
RATE_LIMIT_NOT_FOUND = "Rate Limit not found"
RATE_LIMIT_NAME_TAKEN = "Rate Limit Name not available"
RATE_LIMIT_PATH_TAKEN = "Rate Limit Path already defined for this tier"

_BY_ID = OrderBy(field_name="id", sort_order="asc")


async def _lock_or_404(session: AsyncSession, row: Tier | RateLimit, detail: str, *still: ColumnElement[bool]) -> None:
    """``lock_row``, else 404 ``detail``: the row is gone or no longer matches ``still`` (renamed, deleted)."""
    if not await lock_row(session, row, *still):
        raise NotFoundException(detail)


class TierService(SQLAlchemyAsyncRepositoryService[Tier]):
    class Repo(Repository[Tier]):
        model_type = Tier
        error_messages: ErrorMessages | None = {"not_found": TIER_NOT_FOUND}

    repository_type = Repo

    async def get_by_name(self, name: str) -> Tier | None:
        """The tier called ``name``, if any (the CLI's ``tiers create`` uses it too)."""
        return await self.get_one_or_none(name=name) if storable(name) else None

    async def get_named(self, name: str) -> Tier:
        tier = await self.get_by_name(name)
        if tier is None:
            raise NotFoundException(TIER_NOT_FOUND)
        return tier

    async def list_page(self, pagination: Pagination) -> tuple[list[Tier], int]:
        tiers, total = await self.get_many_and_count(
            LimitOffset(limit=pagination.limit, offset=pagination.offset),
            _BY_ID,
            # SPEC §1.5: a page past the end still reports the total, which a window-function count (read off the
            # returned rows) would give as 0.
            count_with_window_function=False,
        )
        return list(tiers), total

    async def create_tier(self, data: TierCreate) -> Tier:
        if await self.exists(name=data.name):
            raise UnprocessableError(TIER_NAME_TAKEN)
        tier = Tier(name=data.name)
        await self._save_or_reject(lambda: self.repository.session.add(tier))
        return tier

    async def update_tier(self, tier: Tier, data: TierUpdate) -> None:
        """SPEC §4.5 T4 [Δ]: renaming onto another tier's name is a 422; keeping its own name is no conflict."""
        # Found by its name: renamed by a concurrent request, it is no longer the tier the path names.
        await _lock_or_404(self.repository.session, tier, TIER_NOT_FOUND, Tier.name == tier.name)
        changes = data.to_dict()
        if changes.get("name", tier.name) != tier.name and await self.exists(name=changes["name"]):
            raise UnprocessableError(TIER_NAME_TAKEN)

        def apply() -> None:
            for field, value in changes.items():
                setattr(tier, field, value)
            tier.updated_at = utc_now()

        await self._save_or_reject(apply)

    async def delete_tier(self, tier: Tier) -> None:
        """SPEC §4.5 T5 [Δ]: the foreign keys delete the tier's rate limits and set its users' ``tier_id`` to null."""
        await _lock_or_404(self.repository.session, tier, TIER_NOT_FOUND, Tier.name == tier.name)
        await self.delete(tier.id)

    async def _save_or_reject(self, apply: Callable[[], None]) -> None:
        """SPEC §1.3: a concurrent request that took the name first answers the pre-check's 422."""
        if not await save_unique(self.repository.session, apply):
            raise UnprocessableError(TIER_NAME_TAKEN)


class RateLimitService(SQLAlchemyAsyncRepositoryService[RateLimit]):
    class Repo(Repository[RateLimit]):
        model_type = RateLimit
        error_messages: ErrorMessages | None = {"not_found": RATE_LIMIT_NOT_FOUND}

    repository_type = Repo

    async def tier_named(self, tier_name: str) -> Tier:
        return await TierService(session=self.repository.session).get_named(tier_name)

    async def list_of(self, tier_name: str, pagination: Pagination) -> tuple[list[RateLimit], int]:
        tier = await self.tier_named(tier_name)
        limits, total = await self.get_many_and_count(
            LimitOffset(limit=pagination.limit, offset=pagination.offset),
            _BY_ID,
            tier_id=tier.id,
            count_with_window_function=False,
        )
        return list(limits), total

    async def get_in_tier(self, tier_name: str, rate_limit_id: int) -> RateLimit:
        """SPEC §4.6: the tier's 404 first; a rate limit of another tier is as absent as a missing one."""
        tier = await self.tier_named(tier_name)
        found = await self.get_one_or_none(id=rate_limit_id, tier_id=tier.id) if is_db_id(rate_limit_id) else None
        if found is None:
            raise NotFoundException(RATE_LIMIT_NOT_FOUND)
        return found

    async def create_in(self, tier_name: str, data: RateLimitCreate) -> RateLimit:
        tier = await self.tier_named(tier_name)
        path = sanitize_path(data.path)
        # SPEC §4.6 [Δ]: the original left `name` NULL when omitted (a 500).
        name = f"{path}:{data.limit}:{data.period}" if isinstance(data.name, msgspec.UnsetType) else data.name
        await self._reject_conflicts(tier.id, name=name, path=path)
        rate_limit = RateLimit(tier_id=tier.id, name=name, path=path, limit=data.limit, period=data.period)
        await self._save_or_reject(
            lambda: self.repository.session.add(rate_limit), tier.id, name=name, path=path, own_id=None
        )
        return rate_limit

    async def update_limit(self, rate_limit: RateLimit, data: RateLimitUpdate) -> None:
        """Only changed values are checked: a rate limit's own current name and path are no conflict."""
        await _lock_or_404(self.repository.session, rate_limit, RATE_LIMIT_NOT_FOUND)
        changes = data.to_dict()
        if "path" in changes:
            changes["path"] = sanitize_path(changes["path"])
        name = changes.get("name") if changes.get("name", rate_limit.name) != rate_limit.name else None
        path = changes.get("path") if changes.get("path", rate_limit.path) != rate_limit.path else None
        tier_id, own_id = rate_limit.tier_id, rate_limit.id
        await self._reject_conflicts(tier_id, name=name, path=path)

        def apply() -> None:
            for field, value in changes.items():
                setattr(rate_limit, field, value)
            rate_limit.updated_at = utc_now()

        await self._save_or_reject(apply, tier_id, name=name, path=path, own_id=own_id)

    async def delete_limit(self, rate_limit: RateLimit) -> None:
        await _lock_or_404(self.repository.session, rate_limit, RATE_LIMIT_NOT_FOUND)
        await self.delete(rate_limit.id)

    async def _reject_conflicts(
        self, tier_id: int, *, name: str | None, path: str | None, own_id: int | None = None
    ) -> None:
        """SPEC §4.6 R1: a name is unique across all tiers, then a path within the tier (in that order)."""
        others: list[Any] = [] if own_id is None else [RateLimit.id != own_id]
        if name is not None and await self.exists(RateLimit.name == name, *others):
            raise UnprocessableError(RATE_LIMIT_NAME_TAKEN)
        if path is not None and await self.exists(RateLimit.tier_id == tier_id, RateLimit.path == path, *others):
            raise UnprocessableError(RATE_LIMIT_PATH_TAKEN)

    async def _save_or_reject(
        self, apply: Callable[[], None], tier_id: int, *, name: str | None, path: str | None, own_id: int | None
    ) -> None:
        """SPEC §1.3: a concurrent request that won the race answers the pre-check's 422, never a 500."""
        if await save_unique(self.repository.session, apply):
            return
        await self._reject_conflicts(tier_id, name=name, path=path, own_id=own_id)
        raise UnprocessableError(RATE_LIMIT_NAME_TAKEN)


async def provide_tiers(db_session: NamedDependency[AsyncSession]) -> TierService:
    """The ``tiers`` dependency: a TierService on the request's session (and so its transaction)."""
    return TierService(session=db_session)


async def provide_rate_limits(db_session: NamedDependency[AsyncSession]) -> RateLimitService:
    """The ``rate_limits`` dependency: a RateLimitService on the request's session (and so its transaction)."""
    return RateLimitService(session=db_session)


async def tier_rules(session: AsyncSession, tier_id: int) -> TierRules | None:
    """A tier's name and rate limits in one query, for the rate limiter (``None``: no such tier)."""
    statement = (
        select(Tier.name, RateLimit.path, RateLimit.limit, RateLimit.period)
        .outerjoin(RateLimit, RateLimit.tier_id == Tier.id)
        .where(Tier.id == tier_id)
    )
    rows = (await session.execute(statement)).all()
    if not rows:
        return None
    return TierRules(rows[0].name, {row.path: (row.limit, row.period) for row in rows if row.path is not None})


def request_rules_loader(alchemy: AlchemyConfig) -> RulesLoader:
    """The rate limiter's rules lookup, in the request's own session."""

    async def load(connection: ASGIConnection[Any, Any, Any, Any], tier_id: int) -> TierRules | None:
        return await tier_rules(alchemy.provide_session(connection.app.state, connection.scope), tier_id)

    return load
