"""Production launcher: ``python -m app`` serves ``app.main:create_app`` with Granian, configured by SPEC §9 (§12.4).

``python -m app --reload`` is the development server used by ``task dev``. This process only supervises:
it imports the settings, not the application, so it stays small; each worker builds the app itself.
"""

from __future__ import annotations

import sys
from typing import Any

from granian import Granian
from granian.constants import Interfaces

from app.core.keys import load_signing_keys
from app.core.settings import PROJECT_ROOT, SettingsError, exit_with, load_settings


def main() -> None:
    settings = load_settings()
    try:
        load_signing_keys(settings.jwt)  # fail here, once, rather than in every Granian worker
    except SettingsError as exc:
        exit_with(exc)
    reload = "--reload" in sys.argv[1:]
    Granian(
        "app.main:create_app",
        factory=True,
        interface=Interfaces.ASGI,
        address=settings.server.host,
        port=settings.server.port,
        workers=1 if reload else settings.server.workers,
        # Time a worker gets to finish in-flight requests on shutdown/reload (GRANIAN__TIMEOUT).
        workers_kill_timeout=settings.server.timeout,
        respawn_failed_workers=not reload,
        **(_reload_options() if reload else {}),
    ).serve()


def _reload_options() -> dict[str, Any]:
    # watchfiles is a development dependency (the `dev` group): production images do not have it.
    from watchfiles import PythonFilter  # noqa: PLC0415

    class SourceFilter(PythonFilter):
        """Only source changes restart the server: the log file and the embedded SQLite file live under src/ too."""

        def __init__(self) -> None:
            super().__init__(extra_extensions=(".env",))

    return {"reload": True, "reload_paths": [PROJECT_ROOT / "src"], "reload_filter": SourceFilter}


if __name__ == "__main__":
    main()
