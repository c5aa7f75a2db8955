"""Desktop notifications that never spam: what matters, once, and not too often.

Shown: a project joined, the first accepted update of a project, a project closed by its
organiser (once per project: news, not a fault), errors. An error with the
same code is shown at most once per ``ERROR_REPEAT_S``; no more than ``BURST`` notifications
of any kind in ``BURST_WINDOW_S``. The volunteer's "notifications" setting turns them off.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

__all__ = ["Notifier"]

ERROR_REPEAT_S = 30 * 60
BURST = 3
BURST_WINDOW_S = 60.0

Show = Callable[[str, str, str], None]  # (title, message, kind: "info" | "warning" | "error")


class Notifier:
    def __init__(self, show: Show, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._show = show
        self._clock = clock
        self.enabled = True
        self._recent: deque[float] = deque()
        self._errors_shown: dict[str, float] = {}
        self._first_update_seen: set[str] = set()
        self._closed_seen: set[str] = set()
        self.shown: list[tuple[str, str]] = []  # (title, message), for tests and the log

    def _allow(self) -> bool:
        now = self._clock()
        while self._recent and now - self._recent[0] > BURST_WINDOW_S:
            self._recent.popleft()
        if not self.enabled or len(self._recent) >= BURST:
            return False
        self._recent.append(now)
        return True

    def _notify(self, title: str, message: str, kind: str) -> bool:
        if not self._allow():
            return False
        self.shown.append((title, message))
        self._show(title, message, kind)
        return True

    def project_joined(self, project: str) -> bool:
        return self._notify(
            "Joined " + project, "Barnraise will contribute when your schedule allows.", "info"
        )

    def update_accepted(self, project: str) -> bool:
        if project in self._first_update_seen:
            return False
        self._first_update_seen.add(project)
        return self._notify(
            "First update accepted",
            f"Your computer's first contribution to {project} was accepted. Thank you!",
            "info",
        )

    def project_finished(self, project: str) -> bool:
        return self._ended_once(
            project,
            f"{project} has finished",
            f"{project} reached its goal and its model is final: it needs no more work "
            "from you. Thank you for helping to train it!",
        )

    def project_closed(self, project: str) -> bool:
        return self._ended_once(
            project,
            f"{project} is closed",
            f"Its organiser closed {project}: it needs no more work from you. Thank you!",
        )

    def _ended_once(self, project: str, title: str, text: str) -> bool:
        """A project that needs no more work is said once, however often the engine asks."""
        if project in self._closed_seen:
            return False
        self._closed_seen.add(project)
        return self._notify(title, text, "info")

    def error(self, message: str, code: str = "") -> bool:
        key = code or message
        now = self._clock()
        last = self._errors_shown.get(key)
        if last is not None and now - last < ERROR_REPEAT_S:
            return False
        if self._notify("Barnraise needs attention", message, "error"):
            self._errors_shown[key] = now
            return True
        return False
