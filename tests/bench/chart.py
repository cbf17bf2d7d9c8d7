"""The bench's chart as a standalone SVG (no plotting dependency): req/s per workload, the ceiling as a line."""

from __future__ import annotations

import math
from xml.sax.saxutils import escape

from tests.bench.results import CEILING, FLOOR, Result

WORKLOAD_TITLES = {
    "W0": "health",
    "W1": "users page",
    "W2": "user by name",
    "W3": "cached post",
    "W4": "cached page",
    "W5": "login",
    "W6": "post create",
    "W7": "/user/me",
    "W8": "404",
}
_WIDTH, _HEIGHT = 760, 420
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 20, 50, 70
_BAR_COLOUR, _CEILING_COLOUR = "#3b6ea5", "#c0392b"


def render_svg(workloads: dict[str, Result], ceiling: Result | None, *, subtitle: str = "") -> str:
    """One bar per workload (median req/s, with its share of W0 above it) and the ceiling as a dashed line."""
    top_value = max([r.rps for r in workloads.values()] + [ceiling.rps if ceiling else 0.0, 1.0])
    scale_max, step = _axis(top_value * 1.1)
    plot_w, plot_h = _WIDTH - _LEFT - _RIGHT, _HEIGHT - _TOP - _BOTTOM

    def y(value: float) -> float:
        return _TOP + plot_h - value / scale_max * plot_h

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
        f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
        f'<text x="{_LEFT}" y="22" font-size="15" font-weight="bold">task bench: requests per second</text>',
        f'<text x="{_LEFT}" y="38" fill="#555">{escape(subtitle)}</text>',
    ]
    for tick in range(int(scale_max // step) + 1):
        value = tick * step
        parts.append(
            f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#e3e3e3"/>'
            f'<text x="{_LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end">{value:,.0f}</text>'
        )
    floor = workloads.get(FLOOR)
    slot = plot_w / max(len(workloads), 1)
    for index, (name, result) in enumerate(workloads.items()):
        x = _LEFT + index * slot + slot * 0.15
        share = f" ({result.rps / floor.rps:.2f})" if floor and floor.rps > 0 and name != FLOOR else ""
        parts.append(
            f'<rect class="bar" data-workload="{escape(name)}" x="{x:.1f}" y="{y(result.rps):.1f}" '
            f'width="{slot * 0.7:.1f}" height="{y(0) - y(result.rps):.1f}" fill="{_BAR_COLOUR}"/>'
            f'<text x="{x + slot * 0.35:.1f}" y="{y(result.rps) - 5:.1f}" text-anchor="middle" font-size="11">'
            f"{result.rps:,.0f}{share}</text>"
            f'<text x="{x + slot * 0.35:.1f}" y="{y(0) + 16:.1f}" text-anchor="middle">{escape(name)}</text>'
            f'<text x="{x + slot * 0.35:.1f}" y="{y(0) + 30:.1f}" text-anchor="middle" font-size="10" fill="#555">'
            f"{escape(WORKLOAD_TITLES.get(name, ''))}</text>"
        )
    if ceiling is not None:
        parts.append(
            f'<line class="ceiling" x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(ceiling.rps):.1f}" '
            f'y2="{y(ceiling.rps):.1f}" stroke="{_CEILING_COLOUR}" stroke-width="2" stroke-dasharray="6 4"/>'
            f'<text x="{_WIDTH - _RIGHT}" y="{y(ceiling.rps) - 6:.1f}" text-anchor="end" fill="{_CEILING_COLOUR}">'
            f"{CEILING} (bare Litestar) {ceiling.rps:,.0f} req/s</text>"
        )
    parts.append(
        f'<line x1="{_LEFT}" x2="{_WIDTH - _RIGHT}" y1="{y(0):.1f}" y2="{y(0):.1f}" stroke="#333"/>'
        f'<text x="{_LEFT}" y="{_HEIGHT - 12}" fill="#555" font-size="11">'
        "Bars: median req/s per workload, (share of W0) above. Absolute numbers are machine-specific.</text>"
        "</svg>"
    )
    return "\n".join(parts) + "\n"


def _axis(maximum: float) -> tuple[float, float]:
    """A round top for the y axis and a tick step giving four to ten ticks."""
    magnitude = 10 ** math.floor(math.log10(maximum))
    step = next(m * magnitude for m in (0.1, 0.2, 0.25, 0.5, 1, 2, 2.5, 5, 10) if maximum / (m * magnitude) <= 10)
    return math.ceil(maximum / step) * step, step
