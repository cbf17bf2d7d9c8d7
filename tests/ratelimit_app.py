"""Test only: the app plus probe routes behind the ``rate_limit`` guard, until posts and tasks use it.

In-process tests call ``add_probe_routes(create_app(settings))``; real servers run
``granian --factory tests.ratelimit_app:create_app`` (``tests.servers.live_server(factory=FACTORY)``).
"""

from __future__ import annotations

import msgspec
from litestar import Litestar, get, post
from litestar.params import FromPath, JSONBody

from app.core.rate_limit import rate_limit
from app.main import create_app as create_real_app

FACTORY = "tests.ratelimit_app:create_app"


class ProbeBody(msgspec.Struct, forbid_unknown_fields=True):
    count: int


@get("/probe/limited", exclude_from_auth=True, guards=[rate_limit])
async def public_probe() -> dict[str, bool]:
    return {"ok": True}


@get("/probe/item/{name:str}", exclude_from_auth=True, guards=[rate_limit])
async def templated_probe(name: FromPath[str]) -> dict[str, str]:
    return {"name": name}


@post("/probe/item/{name:str}", exclude_from_auth=True, guards=[rate_limit], status_code=201)
async def validated_probe(name: FromPath[str], data: JSONBody[ProbeBody]) -> dict[str, int]:
    return {"count": data.count}


@get("/probe/private", guards=[rate_limit])
async def private_probe() -> dict[str, bool]:
    return {"ok": True}


def add_probe_routes(app: Litestar) -> Litestar:
    for handler in (public_probe, templated_probe, validated_probe, private_probe):
        app.register(handler)
    return app


def create_app() -> Litestar:
    return add_probe_routes(create_real_app(announce=False))
