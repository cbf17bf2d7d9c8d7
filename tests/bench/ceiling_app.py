"""The ceiling of ``task bench``: a bare Litestar app, one msgspec JSON route, no middleware, served like the API.

``python -m tests.bench.ceiling_app --port 8100`` serves it with the Granian options of ``app.__main__.serve`` (ASGI,
factory, ``GRANIAN__WORKERS`` workers, Granian's default loop, which is uvloop when it is installed): whatever the
API is slower than this is the cost of the template itself. Keep those options in step with ``app.__main__``.

The route is ``GET /api/v1/health`` with a body shaped like the API's, so the harness's ``w0.lua`` drives both.
"""

from __future__ import annotations

import argparse
import os

import msgspec
from granian import Granian
from granian.constants import Interfaces
from litestar import Litestar, get

FACTORY = "tests.bench.ceiling_app:create_app"


class Health(msgspec.Struct):
    name: str
    version: str
    description: str | None


@get("/api/v1/health")
async def health() -> Health:
    return Health(name="ceiling", version="0.1.0", description=None)


def create_app() -> Litestar:
    return Litestar(route_handlers=[health], openapi_config=None)


def main() -> None:
    parser = argparse.ArgumentParser(description="Serve the bare-Litestar ceiling app with Granian.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("GRANIAN__WORKERS", "2")))
    parser.add_argument("--timeout", type=int, default=5, help="seconds a worker gets to stop (GRANIAN__TIMEOUT)")
    args = parser.parse_args()
    Granian(
        FACTORY,
        factory=True,
        interface=Interfaces.ASGI,
        address=args.host,
        port=args.port,
        workers=args.workers,
        workers_kill_timeout=args.timeout,
        respawn_failed_workers=True,
    ).serve()


if __name__ == "__main__":
    main()
