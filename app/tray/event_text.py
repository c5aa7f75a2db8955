"""Words for engine events in the main window: activity-log lines and "how long ago"."""

from __future__ import annotations

import time

from app.contributor.events import (
    CreditUpdated,
    Error,
    Event,
    PolicyChanged,
    Progress,
    ProjectScheduleChanged,
    StateChanged,
    TaskFinished,
)
from app.contributor.shares import MODE_WORDS, Mode
from app.tray.status import STATE_WORDS, plain_reasons

__all__ = ["ago", "describe_event"]


def ago(at: float | None) -> str:
    """When ``at`` (epoch seconds) was, in words: "just now", "5 min ago", a date."""
    if at is None:
        return "—"
    seconds = max(0, int(time.time() - at))
    if seconds < 60:
        return "just now"
    if seconds < 3600:
        return f"{seconds // 60} min ago"
    if seconds < 86400:
        return f"{seconds // 3600} h ago"
    return time.strftime("%d %b %Y", time.localtime(at))


def describe_event(event: Event) -> str | None:
    """One line for the activity log; None for events too frequent to log (progress)."""
    if isinstance(event, StateChanged):
        reasons = plain_reasons(event.reasons)
        why = f": {', '.join(reasons)}" if reasons else ""
        where = f" — {event.project}" if event.project else ""
        return f"{STATE_WORDS.get(event.state, event.state.value.capitalize())}{where}{why}"
    if isinstance(event, TaskFinished):
        verdict = "accepted" if event.accepted else "rejected"
        return (
            f"Update for {event.project} {verdict}: {event.num_examples} examples, "
            f"{event.compute_seconds:.0f} s of compute, +{event.credit:g} credit"
        )
    if isinstance(event, CreditUpdated):
        rank = f", rank {event.rank}" if event.rank else ""
        return f"Credit on {event.project}: {event.credit:g} {event.credit_unit}{rank}".rstrip()
    if isinstance(event, PolicyChanged):
        why = f": {', '.join(event.reasons)}" if event.reasons else ""
        return f"Policy: {event.action}{why}"
    if isinstance(event, Error):
        return f"Problem{f' in {event.project}' if event.project else ''}: {event.message}"
    if isinstance(event, ProjectScheduleChanged):
        known = event.mode in {m.value for m in Mode}
        words = MODE_WORDS[Mode(event.mode)] if known else event.mode
        return f"{event.project}: share {event.share}, {words}"
    if isinstance(event, Progress):
        return None
    return None
