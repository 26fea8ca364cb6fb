"""Small vital-sign trend charts drawn on the server as inline SVG.

No charting library and no script: the pages' Content-Security-Policy allows neither inline
script nor inline style, and a village clinic has no CDN. The SVG uses presentation
attributes and CSS classes from app.css only, carries a <title> for screen readers, and the
chart section beside it lists the readings as a table too.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field

from markupsafe import Markup, escape

WIDTH, HEIGHT = 320, 150
LEFT, RIGHT, TOP, BOTTOM = 34, 8, 10, 22


@dataclass
class Series:
    css_class: str  # "line-a", "line-b"
    points: list[tuple[dt.datetime, float]] = field(default_factory=list)


@dataclass
class Band:
    """The normal range, shaded behind the lines."""

    low: float
    high: float


def _nice_range(values: Sequence[float], band: Band | None) -> tuple[float, float]:
    low = min([*values, *([band.low] if band else [])])
    high = max([*values, *([band.high] if band else [])])
    if high - low < 1e-9:
        low, high = low - 1, high + 1
    pad = (high - low) * 0.08
    return low - pad, high + pad


def _fmt(value: float) -> str:
    return f"{value:.0f}" if abs(value) >= 20 else f"{value:.1f}"


def trend_svg(title: str, series: Sequence[Series], *, band: Band | None = None) -> Markup:
    """An SVG line chart of ``series`` over time; empty markup when there is nothing to draw."""
    points = [p for s in series for p in s.points]
    if not points:
        return Markup("")
    times = [p[0].timestamp() for p in points]
    start, end = min(times), max(times)
    span = end - start or 1.0
    low, high = _nice_range([p[1] for p in points], band)

    def x(moment: dt.datetime) -> float:
        inner = WIDTH - LEFT - RIGHT
        return LEFT + (inner / 2 if end == start else (moment.timestamp() - start) / span * inner)

    def y(value: float) -> float:
        return TOP + (high - value) / (high - low) * (HEIGHT - TOP - BOTTOM)

    parts = [
        f'<svg class="trend" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    if band is not None:
        top, bottom = y(band.high), y(band.low)
        parts.append(
            f'<rect class="band" x="{LEFT}" y="{top:.1f}" width="{WIDTH - LEFT - RIGHT}" '
            f'height="{bottom - top:.1f}"/>'
        )
    for tick in (low + (high - low) * f for f in (0.1, 0.5, 0.9)):
        parts.append(
            f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" '
            f'y2="{y(tick):.1f}"/>'
            f'<text class="axis" x="{LEFT - 4}" y="{y(tick) + 4:.1f}" text-anchor="end">'
            f"{_fmt(tick)}</text>"
        )
    first = dt.datetime.fromtimestamp(start, dt.UTC).astimezone(points[0][0].tzinfo)
    last = dt.datetime.fromtimestamp(end, dt.UTC).astimezone(points[0][0].tzinfo)
    parts.append(
        f'<text class="axis" x="{LEFT}" y="{HEIGHT - 6}">{first:%Y-%m}</text>'
        f'<text class="axis" x="{WIDTH - RIGHT}" y="{HEIGHT - 6}" text-anchor="end">'
        f"{last:%Y-%m}</text>"
    )
    for line in series:
        ordered = sorted(line.points)
        if not ordered:
            continue
        path = " ".join(
            f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in enumerate(ordered)
        )
        parts.append(f'<path class="{line.css_class}" d="{path}" fill="none"/>')
        for moment, value in ordered:
            parts.append(
                f'<circle class="{line.css_class}" cx="{x(moment):.1f}" '
                f'cy="{y(value):.1f}" r="2.5">'
                f"<title>{moment:%Y-%m-%d} {_fmt(value)}</title></circle>"
            )
    parts.append("</svg>")
    return Markup("".join(parts))
