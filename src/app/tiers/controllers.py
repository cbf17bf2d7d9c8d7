"""T1–T5 and R1–R5 (SPEC §4.5, §4.6): public reads, superuser writes."""

from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, JSONBody

from app.core.guards import requires_superuser
from app.core.rate_limit import invalidate_rate_limit_rules
from app.core.schemas import Message, Page, Pagination, to_struct
from app.core.security import BEARER
from app.tiers.schemas import RateLimitCreate, RateLimitRead, RateLimitUpdate, TierCreate, TierRead, TierUpdate
from app.tiers.services import RateLimitService, TierService, provide_rate_limits, provide_tiers


class TierController(Controller):
    tags = ["tiers"]
    dependencies = {"tiers": Provide(provide_tiers)}

    @post("/tier", guards=[requires_superuser], security=BEARER)
    async def create_tier(self, data: JSONBody[TierCreate], tiers: NamedDependency[TierService]) -> TierRead:
        """Superuser only. Tier names are unique."""
        return to_struct(await tiers.create_tier(data), TierRead)

    @get("/tiers", exclude_from_auth=True)
    async def list_tiers(
        self, tiers: NamedDependency[TierService], pagination: NamedDependency[Pagination]
    ) -> Page[TierRead]:
        """All tiers, by id."""
        rows, total = await tiers.list_page(pagination)
        return pagination.page_of(rows, total, TierRead)

    @get("/tier/{name:str}", exclude_from_auth=True)
    async def read_tier(self, name: FromPath[str], tiers: NamedDependency[TierService]) -> TierRead:
        return to_struct(await tiers.get_named(name), TierRead)

    @patch("/tier/{name:str}", guards=[requires_superuser], security=BEARER, after_response=invalidate_rate_limit_rules)
    async def update_tier(
        self, name: FromPath[str], data: JSONBody[TierUpdate], tiers: NamedDependency[TierService]
    ) -> Message:
        """Superuser only: rename the tier."""
        await tiers.update_tier(await tiers.get_named(name), data)
        return Message("Tier updated")

    @delete(
        "/tier/{name:str}",
        status_code=200,
        guards=[requires_superuser],
        security=BEARER,
        after_response=invalidate_rate_limit_rules,
    )
    async def delete_tier(self, name: FromPath[str], tiers: NamedDependency[TierService]) -> Message:
        """Superuser only: the tier's rate limits go with it; its users keep no tier."""
        await tiers.delete_tier(await tiers.get_named(name))
        return Message("Tier deleted")


class RateLimitController(Controller):
    # `{id:str}` with an `int` parameter: Litestar's `{id:int}` answers a non-integer id with a bare 404, the
    # parameter's own conversion with SPEC §1.3's 422 (the document still says integer). An id beyond the
    # column's range is the route's 404 (SPEC §1.7, in the service).
    path = "/tier/{tier_name:str}"
    tags = ["rate_limits"]
    dependencies = {"rate_limits": Provide(provide_rate_limits)}

    @post("/rate_limit", guards=[requires_superuser], security=BEARER, after_response=invalidate_rate_limit_rules)
    async def create_rate_limit(
        self, tier_name: FromPath[str], data: JSONBody[RateLimitCreate], rate_limits: NamedDependency[RateLimitService]
    ) -> RateLimitRead:
        """Superuser only. The path is stored sanitised (`/api/v1/tasks/task/` → `api_v1_tasks_task`); the name
        defaults to `<path>:<limit>:<period>` and is unique across all tiers."""
        return to_struct(await rate_limits.create_in(tier_name, data), RateLimitRead)

    @get("/rate_limits", exclude_from_auth=True)
    async def list_rate_limits(
        self,
        tier_name: FromPath[str],
        rate_limits: NamedDependency[RateLimitService],
        pagination: NamedDependency[Pagination],
    ) -> Page[RateLimitRead]:
        """The tier's rate limits, by id."""
        rows, total = await rate_limits.list_of(tier_name, pagination)
        return pagination.page_of(rows, total, RateLimitRead)

    @get("/rate_limit/{id:str}", exclude_from_auth=True)
    async def read_rate_limit(
        self, tier_name: FromPath[str], id: FromPath[int], rate_limits: NamedDependency[RateLimitService]
    ) -> RateLimitRead:
        return to_struct(await rate_limits.get_in_tier(tier_name, id), RateLimitRead)

    @patch(
        "/rate_limit/{id:str}", guards=[requires_superuser], security=BEARER, after_response=invalidate_rate_limit_rules
    )
    async def update_rate_limit(
        self,
        tier_name: FromPath[str],
        id: FromPath[int],
        data: JSONBody[RateLimitUpdate],
        rate_limits: NamedDependency[RateLimitService],
    ) -> Message:
        """Superuser only. Changing the path or the limits keeps the name."""
        await rate_limits.update_limit(await rate_limits.get_in_tier(tier_name, id), data)
        return Message("Rate Limit updated")

    @delete(
        "/rate_limit/{id:str}",
        status_code=200,
        guards=[requires_superuser],
        security=BEARER,
        after_response=invalidate_rate_limit_rules,
    )
    async def delete_rate_limit(
        self, tier_name: FromPath[str], id: FromPath[int], rate_limits: NamedDependency[RateLimitService]
    ) -> Message:
        """Superuser only."""
        await rate_limits.delete_limit(await rate_limits.get_in_tier(tier_name, id))
        return Message("Rate Limit deleted")
