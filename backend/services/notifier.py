"""Per-project wake-ups for long polls."""

from __future__ import annotations

import threading
from collections.abc import Callable


class Notifier:
    """Per-project wake-ups for long polls: a generation counter under a Condition.

    A waiter reads ``generation`` before looking for work and waits only while it is
    unchanged, so a notification between the look and the wait is never lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generations: dict[str, int] = {}
        self._listeners: list[Callable[[str | None], None]] = []
        self._relay: Callable[[str], None] | None = None
        self.closed = False

    def relay_to(self, send: Callable[[str], None]) -> None:
        """Pass each ``notify`` on to the other coordinator processes too (``send``: the
        store's, ``Store.connect_peers``); what they send comes in by ``wake``."""
        self._relay = send

    def add_listener(self, listener: Callable[[str | None], None]) -> None:
        """Call ``listener(project)`` after each notification, and ``listener(None)`` on
        close, from the notifying thread: how the server wakes parked long polls
        (``backend.serving.parking``) that wait on no thread."""
        with self._cond:
            self._listeners.append(listener)

    def remove_listener(self, listener: Callable[[str | None], None]) -> None:
        with self._cond:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def generation(self, project: str) -> int:
        with self._cond:
            return self._generations.get(project, 0)

    def notify(self, project: str) -> None:
        """Wake this process's long polls for ``project``, and the other processes'."""
        self.wake(project)
        if self._relay is not None:
            self._relay(project)

    def wake(self, project: str) -> None:
        """Wake this process's long polls for ``project`` (what another process sent)."""
        with self._cond:
            self._generations[project] = self._generations.get(project, 0) + 1
            self._cond.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(project)

    def wait(self, project: str, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed or self._generations.get(project, 0) != seen, timeout
            )

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()
            listeners = list(self._listeners)
        for listener in listeners:
            listener(None)
