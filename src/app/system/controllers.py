from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency

from app.core.settings import Settings
from app.system.schemas import HealthCheck


class SystemController(Controller):
    tags = ["system"]

    @get("/health", cache_control=CacheControlHeader(no_store=True), exclude_from_auth=True)
    async def health(self, settings: NamedDependency[Settings]) -> HealthCheck:
        """Liveness: answers without touching the database or Redis."""
        return HealthCheck(name=settings.app.name, version=settings.app.version, description=settings.app.description)
