"""litestar-base-app: a production-grade Litestar backend template.

``create_app`` is here so that the Litestar CLI finds the app on its own when run from ``src/`` (its
autodiscovery imports the ``app`` package and looks for ``create_app``). It imports ``app.main`` only when
called: importing ``app`` — as ``python -m app`` and every module do — stays cheap and free of side effects.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from litestar import Litestar

    from app.core.settings import Settings


def create_app(settings: Settings | None = None, *, announce: bool = True) -> Litestar:
    """``app.main.create_app``: the application factory."""
    from app.main import create_app as build  # noqa: PLC0415 - deferred, see the module docstring

    return build(settings, announce=announce)
