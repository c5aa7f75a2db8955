"""Number and time formatting for the pages; plain text out (the renderer escapes it)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from backend.pages.views import CREDIT_UNIT

_MINUTE = 60
_HOUR = 60 * _MINUTE
_DAY = 24 * _HOUR


def format_credit(gflop: float) -> str:
    """``1234567.8`` -> ``"1,234,568"``; below 1000 one decimal; always thousands separators."""
    if not math.isfinite(gflop):
        return "–"
    if gflop == 0:
        return "0"
    if abs(gflop) >= 1000:
        return f"{gflop:,.0f}"
    return f"{gflop:,.1f}"


def format_credit_with_unit(gflop: float) -> str:
    return f"{format_credit(gflop)} {CREDIT_UNIT}"


_JOULES_PER_WH = 3600.0

ENERGY_NOTE = "reported by the contributor's computer"
"""What the energy figures are: a client's claim, shown as reported, never credited."""


def format_energy(joules: float) -> str:
    """``7200`` -> ``"2.0 Wh"``; ``3.6e7`` -> ``"10.0 kWh"``; 0 (nothing reported) -> ``"–"``."""
    if not math.isfinite(joules) or joules <= 0:
        return "–"
    wh = joules / _JOULES_PER_WH
    if wh >= 1000:
        return f"{wh / 1000:,.1f} kWh"
    return f"{wh:,.1f} Wh" if wh >= 0.1 else f"{wh:.2f} Wh"


def energy_measured_share(joules: float, measured_joules: float) -> str:
    """How much of the reported energy was measured: ``"measured"``, ``"estimated"``, or
    ``"62% measured"``; empty when nothing was reported."""
    if not math.isfinite(joules) or joules <= 0 or not math.isfinite(measured_joules):
        return ""
    share = min(1.0, max(0.0, measured_joules / joules))
    if share >= 0.995:
        return "measured"
    if share <= 0.005:
        return "estimated"
    return f"{share * 100:.0f}% measured"


def format_count(n: int) -> str:
    return f"{n:,}"


def format_percent(fraction: float | None) -> str:
    if fraction is None or not math.isfinite(fraction):
        return "–"
    return f"{fraction * 100:.1f}%"


def format_loss(loss: float | None) -> str:
    if loss is None or not math.isfinite(loss):
        return "–"
    return f"{loss:.3f}" if abs(loss) < 100 else f"{loss:,.0f}"


def format_relative(when: float | None, now: float) -> str:
    """``"just now"``, ``"5 min ago"``, ``"3 h ago"``, ``"2 days ago"``, or ``"never"``."""
    if when is None:
        return "never"
    ago = now - when
    if ago < _MINUTE:  # also clock skew into the future
        return "just now"
    if ago < _HOUR:
        return f"{int(ago // _MINUTE)} min ago"
    if ago < _DAY:
        return f"{int(ago // _HOUR)} h ago"
    days = int(ago // _DAY)
    if days < 60:
        return "1 day ago" if days == 1 else f"{days} days ago"
    return "on " + datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d")


def iso_utc(when: float) -> str:
    """``2025-11-27T05:43:00Z``, for ``<time datetime=...>``."""
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def human_utc(when: float) -> str:
    return datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M UTC")
