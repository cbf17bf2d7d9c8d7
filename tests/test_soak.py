"""The parts of ``task soak`` (tests/soak) that run in seconds: wrk's result line, the verdict, the RSS of a process
tree, and soak.lua's classification of statuses against a stub server."""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.bench import harness
from tests.bench.stack import BenchError
from tests.soak.process_tree import Interval, TreeUsage, machine_ticks, tree_usage
from tests.soak.results import Minute, SoakResultError, Summary, parse_wrk
from tests.soak.run import Plan, _purge, _wrk

WRK_OUTPUT = """Running 1m test @ http://127.0.0.1:8000
  16 threads and 16 connections
RESULT requests=30000 rps=500.1 p50_ms=22.11 p99_ms=249.76 max_ms=549.75 socket_errors=2 timeouts=1 unexpected=3 \
status_5xx=1 kinds=create:300,me:900 bad=me:401:2,users:500:1
"""


def minute(number: int, *, p99_ms: float = 100.0, rss_mb: float = 300.0, unexpected: int = 0) -> Minute:
    return Minute(number, 1000, 500.0, 20.0, p99_ms, 400.0, 0, 0, unexpected, 0, rss_mb)


SERVER = Interval(peak_rss_mb=317.25, cpu_seconds=15.0, server_cpu_pct=40.0, machine_cpu_pct=95.0)


def test_parse_wrk_reads_the_result_line_and_counts_every_error() -> None:
    parsed = parse_wrk(WRK_OUTPUT, minute=3, server=SERVER, load1="2.50")
    assert (parsed.requests, parsed.rps, parsed.p50_ms, parsed.p99_ms) == (30000, 500.1, 22.11, 249.76)
    assert (parsed.socket_errors, parsed.timeouts, parsed.unexpected, parsed.status_5xx) == (2, 1, 3, 1)
    assert parsed.errors == 5  # socket errors (timeouts included) + unexpected statuses (5xx included)
    fields = dict(part.split("=", 1) for part in parsed.line().split())
    assert {k: fields[k] for k in ("minute", "rps", "p50_ms", "p99_ms", "errors", "rss_mb", "load1")} == {
        "minute": "3", "rps": "500.1", "p50_ms": "22.11", "p99_ms": "249.76", "errors": "5", "rss_mb": "317.2",
        "load1": "2.50",
    }  # fmt: skip
    assert (fields["cpu_ms_per_req"], fields["server_cpu_pct"], fields["machine_cpu_pct"]) == ("0.500", "40", "95")
    assert fields["bad"] == "me:401:2,users:500:1"


@pytest.mark.parametrize(
    "output",
    ["unable to connect to 127.0.0.1:1 Connection refused", "RESULT requests=1 rps=1.0", "RESULT " + "x=1 " * 9],
)
def test_parse_wrk_refuses_output_without_a_complete_result(output: str) -> None:
    with pytest.raises(SoakResultError):
        parse_wrk(output, minute=1, server=SERVER)


def test_summary_passes_a_steady_run_and_ignores_the_warm_up_minute() -> None:
    run = [minute(1, p99_ms=900.0, rss_mb=150.0), minute(2), minute(3, p99_ms=199.0, rss_mb=329.0), minute(4)]
    summary = Summary.of(run)
    assert (summary.errors, summary.rss_growth_pct, summary.p99_ratio) == (0, 0.0, 1.99)
    assert summary.passed
    assert summary.line().startswith("SUMMARY minutes=4 errors=0 rss_growth_pct=0.0 ")
    assert summary.line().endswith(" verdict=PASS")


@pytest.mark.parametrize(
    ("last", "failure"),
    [
        (minute(3, unexpected=1), "1 errors (want 0)"),
        (minute(3, rss_mb=330.0), "RSS grew 10.0 % (want < 10 %)"),
        (minute(3, p99_ms=201.0), "p99 max/min 2.01 (want <= 2)"),
        (minute(3, p99_ms=49.0), "p99 max/min 2.04 (want <= 2)"),
    ],
)
def test_summary_fails_on_each_acceptance_rule(last: Minute, failure: str) -> None:
    summary = Summary.of([minute(1), minute(2), last])
    assert summary.failures == [failure]
    assert summary.line().endswith(" verdict=FAIL")


def test_errors_of_the_warm_up_minute_count_too() -> None:
    assert Summary.of([minute(1, unexpected=2), minute(2)]).errors == 2


def test_a_soak_needs_a_second_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SoakResultError, match="at least 2 minutes"):
        Summary.of([minute(1)])
    monkeypatch.setenv("SOAK_MINUTES", "1")
    with pytest.raises(BenchError, match="SOAK_MINUTES must be at least 2"):
        Plan.from_env(minute_seconds=60, workers=2)


def test_tree_usage_sums_the_root_and_its_descendants_only(tmp_path: Path) -> None:
    # comm of 11 has the spaces and parentheses a process may give itself.
    tree = [(10, "python", 1, 100, 300), (11, "x) (y", 10, 20, 40), (12, "w", 11, 3, 60), (13, "z", 1, 999, 999)]
    for pid, comm, ppid, pages, ticks in tree:
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({comm}) S {ppid} 1 1 0 -1 0 0 0 0 0 {ticks} {ticks}\n")
        (tmp_path / str(pid) / "statm").write_text(f"5000 {pages} 10 1 0 50 0\n")
    page_kb, hertz = os.sysconf("SC_PAGE_SIZE") // 1024, os.sysconf("SC_CLK_TCK")
    assert tree_usage(10, tmp_path) == TreeUsage(123 * page_kb, 800 / hertz)
    assert tree_usage(11, tmp_path) == TreeUsage(23 * page_kb, 200 / hertz)
    assert tree_usage(99, tmp_path) == TreeUsage(0, 0.0)


def test_machine_ticks_count_iowait_as_idle(tmp_path: Path) -> None:
    (tmp_path / "stat").write_text("cpu  100 5 50 800 40 3 2 0 0 0\ncpu0 50 2 25 400 20 1 1 0 0 0\n")
    assert machine_ticks(tmp_path) == (160, 1000)


class StubApi(BaseHTTPRequestHandler):
    """The routes soak.lua calls, with their statuses; ``/users`` answers 500, the failure the soak must count."""

    seen: list[str]
    disable_nagle_algorithm = True  # headers and body are two writes: else each response waits for a delayed ACK

    def do_GET(self) -> None:
        if self.path.startswith("/api/v1/users"):
            self._answer(500, {})
        elif self.path.startswith("/api/v1/benchw0001/posts"):
            self._answer(200, {"data": [{"id": 7}]})
        else:
            self._answer(200, {"data": []})

    def do_POST(self) -> None:
        self._answer(201 if self.path.endswith("/post") else 200, {"id": len(self.seen)})

    def do_PATCH(self) -> None:
        self._answer(200, {})

    def do_DELETE(self) -> None:
        self._answer(200 if "/db_post/" in self.path else 404, {})

    def _answer(self, status: int, body: object) -> None:
        self.seen.append(f"{self.command} {self.path}")
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def stub_api() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (StubApi,), {"seen": seen, "protocol_version": "HTTP/1.1"})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.handle_error = lambda *_args: None  # type: ignore[method-assign]  # wrk resets its connections at the end
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_soak_lua_counts_each_status_its_kind_does_not_expect(tmp_path: Path, stub_api: tuple[str, list[str]]) -> None:
    try:
        lua_dir = harness.bench_dir() / "lua"
    except BenchError:
        pytest.skip("the shared bench harness (BENCH_DIR) is not on this machine")
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    url, seen = stub_api
    data = tmp_path / "data.tsv"
    data.write_text("# kind\tusername\nuser\tbench0001\tpw\ttok\t1,2\nwriter\tbenchw0001\tpw\twtok\t\n")
    env = {**os.environ, "BENCH_DATA": str(data), "BENCH_LUA_DIR": str(lua_dir), "SOAK_ADMIN_TOKEN": "admin"}
    parsed = parse_wrk(_wrk(Plan(2, 2, 1, 2), url, env), minute=1, server=SERVER)
    kinds = dict(part.rsplit(":", 1) for part in parsed.kinds.split(","))
    assert {"create", "delete", "login", "me", "post", "posts", "update", "user", "users"} <= kinds.keys()
    # Only the 500s of /users are unexpected: 201 of a create and 200 of a read are each their kind's status.
    assert parsed.bad == f"users:500:{kinds['users']}"
    assert parsed.unexpected == parsed.status_5xx == int(kinds["users"])
    assert any(line.startswith("DELETE /api/v1/benchw0001/db_post/") for line in seen)  # writes delete their posts

    assert _purge(url, "admin", ["benchw0001"], parsed) == parsed
    assert seen[-1] == "DELETE /api/v1/benchw0001/db_post/7"
