"""The dashboard's bar and column charts, drawn on the server as inline SVG.

As the vital-sign trends (:mod:`health.web.trends`): no script, no library, no inline style,
presentation attributes and app.css classes only, a <title> for screen readers, and a table
beside each chart with the same numbers. Each bar is a link to the list behind it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

WIDTH = 480
ROW, LABEL, GAP = 22, 190, 4
#: Characters of a bar's label that fit before the bar (the full label is its <title>).
LABEL_CHARS = 11
COLUMN_MAX = 36
COLUMN_HEIGHT, AXIS = 160, 20


@dataclass(frozen=True)
class Bar:
    label: str
    value: int
    link: str


def bars_svg(title: str, bars: Sequence[Bar]) -> Markup:
    """Horizontal bars, one row each, longest scaled to the width; empty if none."""
    if not bars:
        return Markup("")
    top = max(b.value for b in bars) or 1
    inner = WIDTH - LABEL - 48
    height = len(bars) * ROW + GAP
    parts = [
        f'<svg class="bars" viewBox="0 0 {WIDTH} {height}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
    ]
    for i, bar in enumerate(bars):
        y = GAP + i * ROW
        length = max(bar.value / top * inner, 1.0)
        label = bar.label if len(bar.label) <= LABEL_CHARS else bar.label[: LABEL_CHARS - 1] + "…"
        parts.append(
            f'<a href="{escape(bar.link)}"><title>{escape(bar.label)}: {bar.value}</title>'
            f'<text class="axis" x="{LABEL - 6}" y="{y + 14}" text-anchor="end">'
            f"{escape(label)}</text>"
            f'<rect class="bar" x="{LABEL}" y="{y}" width="{length:.1f}" height="{ROW - GAP}"/>'
            f'<text class="axis" x="{LABEL + length + 4:.1f}" y="{y + 14}">{bar.value}</text></a>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))


def columns_svg(title: str, bars: Sequence[Bar]) -> Markup:
    """Vertical columns in order (months), first and last labelled; empty if none."""
    if not bars:
        return Markup("")
    top = max(b.value for b in bars) or 1
    step = min((WIDTH - 40) / len(bars), COLUMN_MAX)
    inner = COLUMN_HEIGHT - AXIS - 14
    parts = [
        f'<svg class="bars" viewBox="0 0 {WIDTH} {COLUMN_HEIGHT}" role="img" '
        f'aria-label="{escape(title)}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{escape(title)}</title>",
        f'<text class="axis" x="4" y="14">{top}</text>',
    ]
    for i, bar in enumerate(bars):
        height = max(bar.value / top * inner, 1.0)
        x = 30 + i * step
        y = COLUMN_HEIGHT - AXIS - height
        parts.append(
            f'<a href="{escape(bar.link)}"><title>{escape(bar.label)}: {bar.value}</title>'
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{max(step - 3, 1):.1f}" '
            f'height="{height:.1f}"/></a>'
        )
    parts.append(
        f'<text class="axis" x="30" y="{COLUMN_HEIGHT - 4}">{escape(bars[0].label)}</text>'
    )
    if len(bars) > 1:
        parts.append(
            f'<text class="axis" x="{30 + len(bars) * step:.1f}" y="{COLUMN_HEIGHT - 4}" '
            f'text-anchor="end">{escape(bars[-1].label)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
