"""A real nginx running the committed ``deploy/nginx/default.conf``, for the tests that put it in front of the app.

The config is not copied: ``render`` rewrites only the upstream's ``server web:8000`` line (one line per app port,
with the committed parameters) and the ``listen`` lines (one local port). A minimal ``nginx.conf`` around it keeps
the pid file, logs and temp files in a directory of the test; nginx runs in the foreground as the current user.
The access log records which upstream served each request (``$upstream_addr``).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.servers import PROJECT_ROOT, free_port

CONFIG = PROJECT_ROOT / "deploy" / "nginx" / "default.conf"
STARTUP_TIMEOUT = 10.0
# Debian installs nginx to /usr/sbin, which is not on every user's PATH.
_CANDIDATES = ("/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/local/nginx/sbin/nginx")

# Fields of the access log, separated by tabs: the client, the request line, the status, the upstream(s) tried.
ACCESS_LOG_FORMAT = "$remote_addr\\t$request\\t$status\\t$upstream_addr\\t$upstream_status"
_MAIN_CONF = """\
{user}daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log info;

events {{
    worker_connections 1024;
}}

http {{
    log_format upstreams "{log_format}";
    access_log {root}/access.log upstreams;
    client_body_temp_path {root}/client_body;
    proxy_temp_path {root}/proxy;
    fastcgi_temp_path {root}/fastcgi;
    uwsgi_temp_path {root}/uwsgi;
    scgi_temp_path {root}/scgi;

    include {root}/default.conf;
}}
"""
_UPSTREAM_SERVER = re.compile(r"^(?P<indent>[ \t]*)server[ \t]+web:8000(?P<params>[^;\n]*);[ \t]*$", re.MULTILINE)
_LISTEN_IPV4 = re.compile(r"^(?P<indent>[ \t]*)listen[ \t]+80;[ \t]*$", re.MULTILINE)
_LISTEN_IPV6 = re.compile(r"^[ \t]*listen[ \t]+\[::\]:80;[ \t]*\n", re.MULTILINE)


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    return found or next((path for path in _CANDIDATES if os.access(path, os.X_OK)), None)


def require_nginx() -> str:
    """The nginx binary, or skip: nginx is installed by ``.ci/run`` (``apt-get install nginx``)."""
    binary = nginx_binary()
    if binary is None:
        pytest.skip("nginx is not installed (apt-get install nginx; .ci/run does it on CI)")
    return binary


def render(config: str, upstream_ports: list[int], listen_port: int) -> str:
    """The committed config for local ports: one upstream server per app port, listening on 127.0.0.1 only."""

    def servers(match: re.Match[str]) -> str:
        indent, params = match["indent"], match["params"]
        return "\n".join(f"{indent}server 127.0.0.1:{port}{params};" for port in upstream_ports)

    rendered, upstreams = _UPSTREAM_SERVER.subn(servers, config)
    rendered, listens = _LISTEN_IPV4.subn(rf"\g<indent>listen 127.0.0.1:{listen_port};", rendered)
    rendered, ipv6 = _LISTEN_IPV6.subn("", rendered)
    # Exactly one of each, or default.conf changed shape and this helper must follow it.
    if (upstreams, listens, ipv6) != (1, 1, 1):
        raise AssertionError(f"{CONFIG} no longer has one `server web:8000`, `listen 80` and `listen [::]:80` line")
    return rendered


@dataclass(frozen=True, slots=True)
class Nginx:
    base_url: str
    root: Path
    binary: str

    def access_log(self) -> list[list[str]]:
        """Each request so far: [client, request line, status, upstream addresses, upstream statuses]."""
        path = self.root / "access.log"
        text = path.read_text(errors="replace") if path.exists() else ""
        return [line.split("\t") for line in text.splitlines() if line]

    def error_log(self) -> str:
        return (self.root / "error.log").read_text(errors="replace")

    def reload(self, upstream_ports: list[int]) -> None:
        """Point the upstream at other app ports (``nginx -s reload``), and wait until only new workers serve: an
        old one would still accept connections for a moment and knows the old servers and their failures."""
        port = int(self.base_url.rsplit(":", 1)[1])
        (self.root / "default.conf").write_text(render(CONFIG.read_text(), upstream_ports, port))
        _test_config(self.binary, self.root)
        master = int((self.root / "nginx.pid").read_text())
        old = _children(master)
        _run(self.binary, self.root, "-s", "reload")
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while (workers := _children(master)) & old or not workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nginx did not reload:\n{self.error_log()}")
            time.sleep(0.05)


def _children(pid: int) -> set[int]:
    """The live child processes of ``pid`` (nginx's workers of its master; a worker still shutting down counts)."""
    children = set()
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with suppress(OSError):
                state, parent = (proc / "stat").read_text().rsplit(")", 1)[1].split()[:2]
                if int(parent) == pid and state != "Z":
                    children.add(int(proc.name))
    return children


@contextmanager
def running_nginx(upstream_ports: list[int], root: Path) -> Iterator[Nginx]:
    """nginx with the committed config in front of ``upstream_ports``, on a free port, until the block ends."""
    binary = require_nginx()
    port = free_port()
    root.mkdir(parents=True, exist_ok=True)
    (root / "default.conf").write_text(render(CONFIG.read_text(), upstream_ports, port))
    (root / "nginx.conf").write_text(_MAIN_CONF.format(user=_user_directive(), root=root, log_format=ACCESS_LOG_FORMAT))
    _test_config(binary, root)
    with (root / "stdout.log").open("wb") as output:
        process = subprocess.Popen(  # noqa: S603 - the nginx binary with a config of this test
            [binary, *_options(root)], stdout=output, stderr=subprocess.STDOUT
        )
    nginx = Nginx(base_url=f"http://127.0.0.1:{port}", root=root, binary=binary)
    try:
        _wait_until_serving(nginx, process)
        yield nginx
    finally:
        # SIGQUIT: graceful stop (SIGTERM would be a fast one); nginx then removes its pid file.
        process.send_signal(signal.SIGQUIT)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _user_directive() -> str:
    # Started by root, nginx would run its workers as `nobody`, who cannot read the test's directory.
    if os.geteuid() != 0:
        return ""
    return f"user {pwd.getpwuid(os.geteuid()).pw_name} {grp.getgrgid(os.getegid()).gr_name};\n"


def _options(root: Path) -> list[str]:
    # -e (nginx >= 1.19.5): the start-up error log too, before nginx.conf is read, goes to the test's directory.
    return ["-p", f"{root}/", "-c", str(root / "nginx.conf"), "-e", str(root / "error.log")]


def _run(binary: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the nginx binary with a config of this test
        [binary, *_options(root), *args], capture_output=True, text=True, timeout=30, check=False
    )


def _test_config(binary: str, root: Path) -> None:
    result = _run(binary, root, "-t")
    if result.returncode != 0:
        raise AssertionError(f"nginx -t failed:\n{result.stdout}{result.stderr}\n{(root / 'default.conf').read_text()}")


def _wait_until_serving(nginx: Nginx, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}:\n{nginx.error_log()}")
        try:
            # /metrics is answered by nginx itself: serving, whatever state the upstreams are in.
            if httpx.get(f"{nginx.base_url}/metrics", timeout=2).status_code == 404:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"nginx did not answer within {STARTUP_TIMEOUT} s:\n{nginx.error_log()}")
