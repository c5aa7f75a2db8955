"""Credit over time, for the contributor and team pages: the running total by UTC day."""

from __future__ import annotations

from collections.abc import Sequence

from backend.pages.chart import render_line_chart
from backend.pages.formatting import format_credit
from backend.pages.views import CREDIT_UNIT

SECONDS_PER_DAY = 86_400


def cumulative_by_day(
    credit_days: Sequence[tuple[int, float]], first_seen: float, now: float
) -> list[tuple[float, float]]:
    """(days since ``first_seen``'s UTC day, total credit by the end of that day), one point
    a day up to ``now``'s day: flat on days without credit. Credit dated before the first
    day (a clock set back) counts on the first day."""
    first = int(first_seen // SECONDS_PER_DAY)
    last = max(first, int(now // SECONDS_PER_DAY), *(d for d, _ in credit_days))
    earned = dict.fromkeys(range(first, last + 1), 0.0)
    for day, credit in credit_days:
        earned[max(day, first)] += credit
    total = 0.0
    points: list[tuple[float, float]] = []
    for day in range(first, last + 1):
        total += earned[day]
        points.append((float(day - first), total))
    return points


def _tick(gflop: float) -> str:
    # Small totals (a first day's work on a small recipe) would all read "0.0".
    return format_credit(gflop) if gflop == 0 or abs(gflop) >= 10 else f"{gflop:.3g}"


def render_credit_chart(
    credit_days: Sequence[tuple[int, float]], first_seen: float, now: float, *, who: str
) -> str:
    """A ``<figure>`` with the line chart of credit over time (``who``: "their", "the team's")."""
    points = cumulative_by_day(credit_days, first_seen, now)
    chart = render_line_chart(
        points,
        title=f"Total credit of {who} by day ({CREDIT_UNIT})",
        x_label="Days since joining",
        y_label=f"Credit ({CREDIT_UNIT})",
        y_format=_tick,
        point_format=lambda y: f"{_tick(y)} {CREDIT_UNIT}",
        x_name="day",
        series_class="series-a",
        empty_text="No credit yet",
    )
    return (
        '<figure class="card" id="chart-credit"><figcaption>Credit over time</figcaption>'
        f"{chart}</figure>"
    )
