from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import CacheControlHeader
from litestar.di import NamedDependency
from litestar.response import Redirect

from app.core.settings import Settings
from app.system.schemas import HealthCheck


class SystemController(Controller):
    tags = ["system"]

    @get("/health", cache_control=CacheControlHeader(no_store=True), exclude_from_auth=True)
    async def health(self, settings: NamedDependency[Settings]) -> HealthCheck:
        """Liveness: answers without touching the database or Redis."""
        return HealthCheck(name=settings.app.name, version=settings.app.version, description=settings.app.description)


@get("/", exclude_from_auth=True, include_in_schema=False)
async def redirect_to_docs() -> Redirect:
    """``local`` only: opening the server's address in a browser lands on the API docs (307)."""
    return Redirect("/docs", status_code=307)
