"""What coordinator processes on one PostgreSQL database tell each other.

**Wake-ups.** A process that wakes its own long polls for a project (a new version, lease
capacity free again: ``Notifier.notify``) also sends ``NOTIFY barnraise_projects``; every
other serving process LISTENs on its own connection and wakes its long polls for that
project, so a volunteer parked on process B hears of a version process A published at
once, not when its poll times out. Sending is a thread's job, coalesced: a burst of
releases of one project is one notification, and a request never waits for it.

**Liveness.** A serving process holds a session-level advisory lock keyed by its owner
name (``backend.services.aggregation.process_owner``) on that same connection for as long as it
runs. PostgreSQL ends the session when the process dies (``kill -9``, or its host lost,
once TCP keepalive gives up), and the lock goes with it; so whether the owner of an
aggregation claim is alive is one look at ``pg_locks``, from any host, and a survivor
takes over a dead process's claim within seconds instead of waiting out the claim's TTL.
A false "dead" (the connection dropped while the process lives) costs only work: the
late owner's result is discarded because it no longer owns the claim.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from typing import Any

import psycopg
from psycopg.rows import DictRow

log = logging.getLogger(__name__)

CHANNEL = "barnraise_projects"
LIVENESS_LOCK_CLASS = 0x62726C76
"""The first key of every liveness lock (``pg_advisory_lock(int, int)``: "brlv"); the
second is ``owner_key(owner)``. No other lock of the coordinator uses this class."""
LISTEN_POLL_S = 1.0
"""How often the listening thread looks up from waiting, to see whether it must stop."""
RECONNECT_S = (0.5, 1.0, 2.0, 5.0)
"""Pauses before reconnecting a lost listening connection, the last one repeated."""

_SEPARATOR = "\n"
_SEND = "SELECT pg_notify(%s, %s || p) FROM unnest(%s::text[]) AS p"
_LIVE_KEYS = """SELECT objid FROM pg_locks
    WHERE locktype = 'advisory' AND granted AND classid = %s AND objsubid = 2
      AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"""

Connect = Callable[[], psycopg.Connection[Any]]
Borrow = Callable[[], AbstractContextManager[psycopg.Connection[Any]]]


def owner_key(owner: str) -> int:
    """The liveness lock's second key: 31 bits of the owner's hash (``pg_locks`` shows it as
    an unsigned oid, so it is kept non-negative). Two owners sharing one is harmless: the
    dead one's claim then waits for its TTL."""
    return int.from_bytes(hashlib.blake2b(owner.encode(), digest_size=4).digest()) & 0x7FFFFFFF


def live_owners(conn: psycopg.Connection[DictRow], owners: Iterable[str]) -> set[str]:
    """Those of ``owners`` whose process holds its liveness lock on this database now."""
    wanted = {owner_key(owner): owner for owner in owners}
    if not wanted:
        return set()
    rows = conn.execute(_LIVE_KEYS, [LIVENESS_LOCK_CLASS]).fetchall()
    held = {int(row["objid"]) for row in rows}
    return {owner for key, owner in wanted.items() if key in held}


class PeerLink:
    """This process's link to the others: sends wake-ups, and, for a serving process
    (``wake`` given), holds its liveness lock and hears the others' wake-ups."""

    def __init__(
        self,
        connect: Connect,
        borrow: Borrow,
        owner: str,
        wake: Callable[[str], None] | None,
    ) -> None:
        self._connect = connect
        self._borrow = borrow
        self.owner = owner
        self._wake = wake
        self._origin = uuid.uuid4().hex + _SEPARATOR  # this link's own are not heard
        self._pending: dict[str, None] = {}  # insertion-ordered set of projects to announce
        self._cond = threading.Condition()
        self._stopping = False
        self._stopped = threading.Event()  # the listener's pauses end on it
        self._listener: psycopg.Connection[Any] | None = None
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        """Connect (and take the liveness lock) before returning: a claim this process makes
        next must never look abandoned. Raises what connecting raises."""
        if self._wake is not None:
            self._listener = self._listen()
            self._spawn(self._listen_loop, "barnraise-peer-listen")
        self._spawn(self._send_loop, "barnraise-peer-send")

    def _spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        thread.start()
        self._threads.append(thread)

    def send(self, project: str) -> None:
        """Tell the other processes to wake their long polls for ``project`` (soon, not now)."""
        with self._cond:
            if self._stopping:
                return
            self._pending[project] = None
            self._cond.notify()

    def close(self) -> None:
        """Send what is pending, then stop: a command's last notification still goes out."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._stopped.set()
        for thread in self._threads:
            thread.join(10.0)
        if self._listener is not None:
            self._listener.close()

    # ------------------------------------------------------------------ sending

    def _send_loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stopping)
                projects = list(self._pending)
                self._pending.clear()
                stopping = self._stopping
            if projects:
                self._send_now(projects)
            if stopping:
                return

    def _send_now(self, projects: list[str]) -> None:
        try:
            with self._borrow() as conn:
                conn.execute(_SEND, [CHANNEL, self._origin, projects])
        except Exception as exc:  # the others' long polls time out instead: late, not lost
            log.warning("could not wake the other coordinator processes: %s", exc)

    # ------------------------------------------------------------------ listening

    def _listen(self) -> psycopg.Connection[Any]:
        conn = self._connect()
        try:
            conn.execute(
                "SELECT pg_advisory_lock(%s, %s)", [LIVENESS_LOCK_CLASS, owner_key(self.owner)]
            )
            conn.execute(f"LISTEN {CHANNEL}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _listen_loop(self) -> None:
        failures = 0
        while not self._stopping:
            conn = self._listener
            try:
                if conn is None or conn.closed:
                    conn = self._listener = self._listen()
                    failures = 0
                    log.info("listening to the other coordinator processes again")
                for note in conn.notifies(timeout=LISTEN_POLL_S):
                    self._heard(note.payload)
                    if self._stopping:
                        return
            except psycopg.Error as exc:
                if self._stopping:
                    return
                pause = RECONNECT_S[min(failures, len(RECONNECT_S) - 1)]
                failures += 1
                log.warning(
                    "lost the connection to the other coordinator processes (%s); "
                    "reconnecting in %.1f s",
                    str(exc).strip(),
                    pause,
                )
                if conn is not None:
                    conn.close()
                self._stopped.wait(pause)

    def _heard(self, payload: str) -> None:
        origin, sep, project = payload.rpartition(_SEPARATOR)
        if not sep or origin + _SEPARATOR == self._origin or self._wake is None:
            return  # our own, or not one of ours
        try:
            self._wake(project)
        except Exception:
            log.exception("waking the long polls of %r failed", project)
