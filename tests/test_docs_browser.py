"""/docs and /redoc render in a real headless browser from the app's own files, under their CSP (SPEC §8).

The machine is offline, so a page that still loaded anything from a CDN would stay blank here.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import StartServer

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium waits for Google services on an offline machine.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
    # Console messages, CSP violations included, go to stderr.
    "--enable-logging=stderr",
    "--v=0",
)
BROWSER_TIMEOUT = 90
# ReDoc's sidebar shows Redocly's logo from its CDN; blocking it is the point, and ReDoc hides the image.
KNOWN_BLOCKED = ("https://cdn.redoc.ly/redoc/logo-mini.svg",)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"{CHROMIUM} is not installed (apt-get install chromium)")


def render(url: str, profile: Path) -> tuple[str, list[str]]:
    """The DOM after the page's scripts ran, and the Content-Security-Policy violations Chromium reported."""
    result = subprocess.run(  # noqa: S603 - a fixed binary and our own server's URL
        [str(CHROMIUM), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=BROWSER_TIMEOUT,
        check=True,
    )
    violations = [
        line
        for line in result.stderr.splitlines()
        if "Content Security Policy" in line and not any(known in line for known in KNOWN_BLOCKED)
    ]
    return result.stdout, violations


def test_swagger_and_redoc_render_offline_under_their_csp(start_server: StartServer, tmp_path: Path) -> None:
    server = start_server(workers=1)

    swagger, swagger_violations = render(f"{server.base_url}/docs", tmp_path / "swagger-profile")
    redoc, redoc_violations = render(f"{server.base_url}/redoc", tmp_path / "redoc-profile")

    # Swagger UI draws one `opblock` per operation, with its path.
    assert swagger.count('class="opblock ') >= 5
    assert "/api/v1/user/me" in swagger
    # ReDoc gives every operation a section `operation/<operationId>`.
    assert redoc.count('data-section-id="operation/') >= 5
    assert "/api/v1/user/me" in redoc
    assert swagger_violations == []
    assert redoc_violations == []
