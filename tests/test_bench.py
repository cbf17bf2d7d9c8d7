"""The parts of ``task bench`` (tests/bench) that run without wrk: the ceiling app, result lines, ratios, chart."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree

import pytest
from litestar.testing import TestClient

from tests.bench import harness
from tests.bench.ceiling_app import create_app
from tests.bench.chart import render_svg
from tests.bench.results import Result, medians, parse_line, ratios
from tests.bench.run import redraw, report
from tests.bench.stack import BenchError

SVG = "{http://www.w3.org/2000/svg}"
W3_LINE = (
    "W3 rps=12417.3 p50_ms=4.10 p99_ms=12.70 non2xx=0 unexpected=0 errors=0 timeouts=0 requests=186260 "
    "peak_rss_mb=180.5 server_cpu_ms_per_req=0.140 load1=1.20->1.95 at=12:00:00"
)


def result(name: str, rps: float, **fields: str) -> Result:
    return Result(name, rps, 1.0, 2.0, {"errors": "0", "unexpected": "0", **fields}, f"{name} rps={rps}")


def test_ceiling_app_answers_its_route_with_json() -> None:
    app = create_app()
    assert app.middleware == []
    with TestClient(app) as client:
        response = client.get("/api/v1/health")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"name": "ceiling", "version": "0.1.0", "description": None}


def test_parse_line_reads_a_harness_line() -> None:
    parsed = parse_line(W3_LINE + "\n")
    assert parsed is not None
    assert (parsed.name, parsed.rps, parsed.p50_ms, parsed.p99_ms) == ("W3", 12417.3, 4.10, 12.70)
    assert parsed.fields["peak_rss_mb"] == "180.5"
    assert parsed.fields["load1"] == "1.20->1.95"
    assert parsed.failures == 0
    assert parsed.line == W3_LINE


@pytest.mark.parametrize(
    "line",
    ["W5 FAILED target=t1 run=1: unable to connect", "# seeded by seed_via_api.py", "", "W1 rps=x p50_ms=1 p99_ms=2"],
)
def test_parse_line_ignores_other_lines(line: str) -> None:
    assert parse_line(line) is None


def test_failures_count_errors_and_unexpected_statuses() -> None:
    assert result("W6", 400.0, errors="2", unexpected="3").failures == 5


def test_medians_take_the_middle_run_per_workload() -> None:
    runs = [result("W0", 100.0), result("W1", 10.0), result("W0", 300.0), result("W0", 200.0)]
    picked = medians(runs)
    assert list(picked) == ["W0", "W1"]
    assert picked["W0"].rps == 200.0


def test_ratios_put_w0_over_the_ceiling_first_with_issue_targets() -> None:
    workloads = {"W0": result("W0", 10_000.0), "W3": result("W3", 5_000.0), "W8": result("W8", 12_000.0)}
    found = ratios(workloads, result("CEILING", 25_000.0))
    assert [(r.name, round(r.value, 3)) for r in found] == [("W0/CEILING", 0.4), ("W3/W0", 0.5), ("W8/W0", 1.2)]
    assert [r.line() for r in found] == [
        "RATIO W0/CEILING=0.400 target>=0.50 BELOW",
        "RATIO W3/W0=0.500 target>=0.60 BELOW",
        "RATIO W8/W0=1.200",
    ]


def test_svg_has_one_bar_per_workload_and_the_ceiling_line() -> None:
    workloads = {name: result(name, 1000.0 * (i + 1)) for i, name in enumerate(["W0", "W1", "W2", "W5", "W8"])}
    svg = render_svg(workloads, result("CEILING", 9_000.0), subtitle="a < b")
    root = ElementTree.fromstring(svg)  # noqa: S314 - the SVG this test just generated
    bars = [rect for rect in root.iter(f"{SVG}rect") if rect.get("class") == "bar"]
    assert [bar.get("data-workload") for bar in bars] == list(workloads)
    heights = [float(bar.get("height", "0")) for bar in bars]
    assert heights == sorted(heights)
    assert heights[0] > 0
    assert len([line for line in root.iter(f"{SVG}line") if line.get("class") == "ceiling"]) == 1


def test_report_writes_chart_and_result_lines_and_flags_errors(tmp_path: Path) -> None:
    chart = tmp_path / "out" / "bench.svg"
    runs = [result("W0", 10_000.0), result("W6", 500.0, errors="1")]
    assert report(runs, [result("CEILING", 20_000.0)], chart, expected=2) == 1
    ElementTree.parse(chart)  # noqa: S314 - the SVG this test just generated
    lines = chart.with_suffix(".txt").read_text().splitlines()
    assert lines[:3] == ["W0 rps=10000.0", "W6 rps=500.0", "CEILING rps=20000.0"]
    assert "RATIO W0/CEILING=0.500 target>=0.50 ok" in lines


def test_missing_harness_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_DIR", str(tmp_path))
    with pytest.raises(BenchError, match="set BENCH_DIR") as caught:
        harness.bench_dir()
    assert "\n" not in str(caught.value)


def test_redraw_rebuilds_the_chart_from_saved_lines(tmp_path: Path) -> None:
    saved = tmp_path / "bench.txt"
    saved.write_text(f"{W3_LINE}\nW0 rps=20000.0 p50_ms=3.0 p99_ms=9.0\nCEILING rps=30000.0 p50_ms=1.0 p99_ms=5.0\n")
    assert redraw(saved, None, workers=2) == 0
    root = ElementTree.parse(tmp_path / "bench.svg").getroot()  # noqa: S314 - the SVG this test just generated
    assert [r.get("data-workload") for r in root.iter(f"{SVG}rect") if r.get("class") == "bar"] == ["W3", "W0"]
