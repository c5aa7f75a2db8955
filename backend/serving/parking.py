"""Parked long polls: a waiting volunteer costs a socket and a timer, not a thread.

The WSGI extension (offered in ``environ`` by this server only; under any other server
the app waits in its thread as before)::

    environ[PARK](source, key, seen, deadline, owner)

asks the server to hold the connection until ``source``'s generation for ``key`` moves
on from ``seen`` (a new version, a freed lease) or until ``deadline`` (``time.monotonic``).
The app then returns its "nothing yet" answer as usual; the server keeps that answer for
the deadline and otherwise runs the same request again, with ``environ[RESUMED]`` true and
``environ[POLL_DEADLINE]`` the original deadline. ``owner`` holds at most one parked poll:
a second one answers the first at once.

A wake-up does not run every parked request again: it runs ``CASCADE`` of them, first
parked first, and one more each time one of those comes back with work. The first that
finds nothing and parks again ends the cascade, so 10,000 waiting volunteers and one
freed lease cost about ``CASCADE`` lease attempts, not 10,000."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from backend.serving.connection import Connection

PARK = "barnraise.park"
RESUMED = "barnraise.resumed"
POLL_DEADLINE = "barnraise.poll_deadline"
PARKED = "barnraise.parked"
"""Set by ``PARK`` on the environ: the server holds the connection instead of answering."""

CASCADE = 8


class WakeSource(Protocol):
    """What parked polls wait on (``backend.services.notifier.Notifier``)."""

    def generation(self, key: str) -> int: ...

    def add_listener(self, listener: Callable[[str | None], None]) -> None: ...

    def remove_listener(self, listener: Callable[[str | None], None]) -> None: ...


@dataclass(frozen=True)
class Ticket:
    source: WakeSource
    key: str
    seen: int
    deadline: float
    owner: str | None


Slot = tuple[int, str]


class Parking:
    """The parked connections of one server, by (source, key); loop thread only."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._sources: dict[int, WakeSource] = {}
        self._listeners: list[tuple[WakeSource, Callable[[str | None], None]]] = []
        self._waiting: dict[Slot, dict[Connection, asyncio.TimerHandle]] = {}
        self._slot_of: dict[Connection, Slot] = {}
        self._owners: dict[tuple[int, str, str], Connection] = {}
        self._owner_of: dict[Connection, tuple[int, str, str]] = {}
        self._cascading: set[Slot] = set()
        self._woken: dict[Connection, Slot] = {}
        self._superseded: set[Connection] = set()
        """Woken polls, running again, whose owner has polled anew since: answered with
        their "nothing yet" if they park again, so the newer poll is the one that waits."""

    def __len__(self) -> int:
        return len(self._slot_of)

    def park(self, conn: Connection, ticket: Ticket) -> None:
        slot = (id(ticket.source), ticket.key)
        self._watch(ticket.source)
        woken_from = self._woken.pop(conn, None)
        if woken_from is not None:
            self._cascading.discard(woken_from)  # it found nothing: the rest would not either
        if conn in self._superseded:
            self._superseded.discard(conn)
            conn.answer_parked()
            return
        if ticket.owner is not None:
            owned = (slot[0], ticket.key, ticket.owner)
            prior = self._owners.get(owned)
            if prior is not None and prior is not conn:
                if prior in self._slot_of:
                    self.expire(prior)
                else:  # woken and running again: it must not answer this newer poll
                    self._release_owner(prior)
                    self._superseded.add(prior)
            self._owners[owned] = conn
            self._owner_of[conn] = owned
        if ticket.source.generation(ticket.key) != ticket.seen:
            self._woken[conn] = slot  # woke between the app's look and this park
            conn.resume()
            return
        delay = max(0.0, ticket.deadline - time.monotonic())
        timer = self._loop.call_later(delay, self.expire, conn)
        self._waiting.setdefault(slot, {})[conn] = timer
        self._slot_of[conn] = slot

    def finished(self, conn: Connection) -> None:
        """``conn``'s resumed request got a real answer: wake the next one if cascading."""
        slot = self._woken.pop(conn, None)
        self._release_owner(conn)
        self._superseded.discard(conn)
        if slot is not None and slot in self._cascading:
            self._wake_one(slot)

    def forget(self, conn: Connection) -> None:
        """``conn`` closed: drop it from every table."""
        self._unpark(conn)
        self._release_owner(conn)
        self._superseded.discard(conn)
        slot = self._woken.pop(conn, None)
        if slot is not None and slot in self._cascading:
            self._wake_one(slot)

    def expire(self, conn: Connection) -> None:
        """Answer ``conn`` with what the app said when it parked (its deadline passed, its
        owner polled again, or the server is stopping)."""
        self._unpark(conn)
        self._release_owner(conn)
        self._woken.pop(conn, None)
        conn.answer_parked()

    def close(self) -> None:
        """The server stops: answer every parked poll, stop listening to the sources."""
        for conn in list(self._slot_of):
            self.expire(conn)
        for source, listener in self._listeners:
            source.remove_listener(listener)
        self._listeners.clear()

    def _watch(self, source: WakeSource) -> None:
        sid = id(source)
        if sid in self._sources:
            return
        self._sources[sid] = source
        loop = self._loop

        def listener(key: str | None) -> None:  # any thread
            with contextlib.suppress(RuntimeError):  # the server stopped: its loop is closed
                loop.call_soon_threadsafe(self._wake, sid, key)

        source.add_listener(listener)
        self._listeners.append((source, listener))

    def _wake(self, sid: int, key: str | None) -> None:
        if key is None:  # the source closed: answer everyone waiting on it
            for slot in [s for s in self._waiting if s[0] == sid]:
                for conn in list(self._waiting.get(slot, {})):
                    self.expire(conn)
            return
        slot = (sid, key)
        if not self._waiting.get(slot):
            return
        self._cascading.add(slot)
        for _ in range(CASCADE):
            self._wake_one(slot)

    def _wake_one(self, slot: Slot) -> None:
        waiting = self._waiting.get(slot)
        if not waiting:
            self._cascading.discard(slot)
            return
        conn = next(iter(waiting))
        self._unpark(conn)
        self._woken[conn] = slot
        conn.resume()

    def _unpark(self, conn: Connection) -> None:
        slot = self._slot_of.pop(conn, None)
        if slot is None:
            return
        waiting = self._waiting[slot]
        waiting.pop(conn).cancel()
        if not waiting:
            del self._waiting[slot]

    def _release_owner(self, conn: Connection) -> None:
        owned = self._owner_of.pop(conn, None)
        if owned is not None and self._owners.get(owned) is conn:
            del self._owners[owned]
