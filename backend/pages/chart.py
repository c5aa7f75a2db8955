"""Hand-made SVG line charts, rendered on the server (no JavaScript, valid standalone XML).

``render_line_chart(points, ...)`` draws one series of ``(x, y or None)`` points; a ``None``
breaks the line. No points shows a framed placeholder; one point shows a single marker.
Colours come from the page stylesheet through classes (``chart-line``, ``chart-grid``...),
so the chart follows the light/dark scheme; there are no inline ``style`` attributes, which
keeps the page's Content-Security-Policy strict.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

WIDTH = 480
HEIGHT = 270
_MARGIN_LEFT = 56
_MARGIN_RIGHT = 18
_MARGIN_TOP = 16
_MARGIN_BOTTOM = 46
_MAX_MARKERS = 60
"""Beyond this many points the markers would merge into the line; draw only the last one."""


def _x(value: object) -> str:
    return escape(str(value), quote=True)


def _num(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def nice_ticks(lo: float, hi: float, max_ticks: int = 5) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 x 10^k apart) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return []
    if hi < lo:
        lo, hi = hi, lo
    if hi == lo:
        return [lo]
    raw_step = (hi - lo) / max(1, max_ticks - 1)
    magnitude = 10 ** math.floor(math.log10(raw_step))
    step = magnitude * 10
    for factor in (1, 2, 2.5, 5, 10):
        if raw_step <= factor * magnitude:
            step = factor * magnitude
            break
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    return ticks


def _integer_ticks(lo: float, hi: float, max_ticks: int = 6) -> list[int]:
    ticks = nice_ticks(lo, hi, max_ticks)
    step = max(1, round(ticks[1] - ticks[0])) if len(ticks) > 1 else 1
    start = math.ceil(lo)
    start += (-start) % step
    return [v for v in range(start, math.floor(hi) + 1, step)]


def render_line_chart(
    points: Sequence[tuple[float, float | None]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    y_format: Callable[[float], str],
    point_format: Callable[[float], str] | None = None,
    x_range: tuple[float, float] | None = None,
    y_range: tuple[float, float] | None = None,
    series_class: str = "series-a",
    empty_text: str = "No data yet",
    x_name: str = "version",
) -> str:
    """An ``<svg>`` element (string). ``y_format`` labels the ticks, ``point_format`` (default
    ``y_format``) the hover text of each point; ``y_range`` fixes the y axis (e.g. ``(0, 1)``), ``x_range`` the x axis (so
    charts side by side line up); points outside a fixed range are clamped to its edge.
    ``x_name`` names an x value in each point's hover text ("version 3: 91%").
    """
    point_text = point_format or y_format
    plot_left = _MARGIN_LEFT
    plot_right = WIDTH - _MARGIN_RIGHT
    plot_top = _MARGIN_TOP
    plot_bottom = HEIGHT - _MARGIN_BOTTOM
    plot_w = plot_right - plot_left
    plot_h = plot_bottom - plot_top

    finite = [(x, y) for x, y in points if y is not None and math.isfinite(y)]
    parts: list[str] = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart {_x(series_class)}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{_x(title)}">',
        f"<title>{_x(title)}</title>",
    ]

    if not finite:
        parts.append(
            f'<rect class="chart-frame" x="{plot_left}" y="{plot_top}" '
            f'width="{plot_w}" height="{plot_h}" fill="none"/>'
        )
        parts.append(
            f'<text class="chart-empty" x="{plot_left + plot_w / 2:.1f}" '
            f'y="{plot_top + plot_h / 2:.1f}" text-anchor="middle" '
            f'dominant-baseline="middle">{_x(empty_text)}</text>'
        )
        parts.append("</svg>")
        return "".join(parts)

    xs = [x for x, _ in finite]
    ys = [y for _, y in finite]
    x_lo, x_hi = x_range if x_range is not None else (min(xs), max(xs))
    tick_lo, tick_hi = max(0.0, x_lo), x_hi  # label only versions that exist
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    if y_range is not None:
        y_lo, y_hi = y_range
        y_ticks = nice_ticks(y_lo, y_hi)
    else:
        data_lo, data_hi = min(0.0, min(ys)), max(ys)
        if data_hi == data_lo:
            data_hi = data_lo + 1.0
        y_ticks = nice_ticks(data_lo, data_hi)
        step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 1.0
        while y_ticks[-1] < data_hi - 1e-12:
            y_ticks.append(round(y_ticks[-1] + step, 10))
        while y_ticks[0] > data_lo + 1e-12:
            y_ticks.insert(0, round(y_ticks[0] - step, 10))
        y_lo, y_hi = y_ticks[0], y_ticks[-1]

    def sx(x: float) -> float:
        x = min(max(x, x_lo), x_hi)
        return plot_left + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y: float) -> float:
        y = min(max(y, y_lo), y_hi)
        return plot_bottom - (y - y_lo) / (y_hi - y_lo) * plot_h

    # Grid and y axis labels.
    parts.append('<g class="chart-grid">')
    for tick in y_ticks:
        y = sy(tick)
        parts.append(f'<line x1="{plot_left}" y1="{y:.1f}" x2="{plot_right}" y2="{y:.1f}"/>')
    parts.append("</g>")
    parts.append('<g class="chart-label chart-y-ticks" text-anchor="end">')
    for tick in y_ticks:
        parts.append(
            f'<text x="{plot_left - 8}" y="{sy(tick):.1f}" dominant-baseline="middle">'
            f"{_x(y_format(tick))}</text>"
        )
    parts.append("</g>")

    # X axis with integer ticks.
    parts.append(
        f'<line class="chart-axis" x1="{plot_left}" y1="{plot_bottom}" '
        f'x2="{plot_right}" y2="{plot_bottom}"/>'
    )
    parts.append('<g class="chart-label chart-x-ticks" text-anchor="middle">')
    for tick in _integer_ticks(tick_lo, tick_hi):
        x = sx(tick)
        parts.append(
            f'<line class="chart-axis" x1="{x:.1f}" y1="{plot_bottom}" '
            f'x2="{x:.1f}" y2="{plot_bottom + 5}"/>'
            f'<text x="{x:.1f}" y="{plot_bottom + 19}">{tick}</text>'
        )
    parts.append("</g>")
    parts.append(
        f'<text class="chart-label chart-axis-title" x="{plot_left + plot_w / 2:.1f}" '
        f'y="{HEIGHT - 6}" text-anchor="middle">{_x(x_label)}</text>'
    )
    parts.append(
        f'<text class="chart-label chart-axis-title chart-y-title" x="14" y="{plot_top + plot_h / 2:.1f}" '
        f'text-anchor="middle" transform="rotate(-90 14 {plot_top + plot_h / 2:.1f})">'
        f"{_x(y_label)}</text>"
    )

    # The series: one polyline per run of finite points, so missing values leave gaps.
    runs: list[list[tuple[float, float]]] = [[]]
    for px, py in points:
        if py is None or not math.isfinite(py):
            if runs[-1]:
                runs.append([])
            continue
        runs[-1].append((px, py))
    for run in runs:
        if len(run) > 1:
            coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in run)
            parts.append(f'<polyline class="chart-line" fill="none" points="{coords}"/>')

    marked = finite if len(finite) <= _MAX_MARKERS else finite[-1:]
    parts.append('<g class="chart-points">')
    for x, y in marked:
        parts.append(
            f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3.5">'
            f"<title>{_x(x_name)} {_x(_num(x))}: {_x(point_text(y))}</title></circle>"
        )
    parts.append("</g>")
    parts.append("</svg>")
    return "".join(parts)
