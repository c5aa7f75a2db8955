"""The aggregation worker: the one background thread per process that aggregates.

It expires leases, deletes spent join challenges (``CHALLENGE_SWEEP_S``), takes back
claims whose owner went away (``CLAIM_CHECK_S``), and
aggregates each project whose round is complete, each on its own
(``backend.services.aggregation``); after each version it publishes (and at its first
pass) it prunes old update payloads (``backend.services.retention``). A failure
quarantines the updates that cannot be aggregated, or, with nothing to blame, pauses that
project only, for longer each time.
"""

from __future__ import annotations

import functools
import logging
import os
import threading

from backend.services import crediting, finishing, retention
from backend.services.aggregation import (
    OWNER_HOST,
    WORKER_MAX_SLEEP_S,
    _owned_by,
    claim_ready,
    overdue_projects,
    process_owner,
    run_aggregation,
)
from backend.services.context import ServiceContext
from backend.services.leasing import expire_leases
from backend.settings import AGGREGATION_CLAIM_TTL_S, ProjectSettings
from backend.storage import is_storage_full
from backend.store import AggregationClaim, ProjectRecord, UpdateRecord
from federated.codec import decode_update

log = logging.getLogger(__name__)

FAILURE_BACKOFF_S = 5.0
"""After an aggregation fails with nothing to blame, its project waits this long before the
next try; the pause doubles with each failure in a row, up to ``FAILURE_BACKOFF_MAX_S``."""
FAILURE_BACKOFF_MAX_S = 600.0

CLAIM_CHECK_S = 5.0
"""How often a running worker looks for claims whose owner went away: a read, and on
PostgreSQL one look at ``pg_locks``; a survivor takes a dead process's round over within
about this long of its next pass."""

CHALLENGE_SWEEP_S = 60.0
"""How often the worker deletes the join challenges used or expired (they are single use
and live ``CHALLENGE_TTL_S``), so the table holds only the live ones."""


def _claim_is_stale(owner: str, claimed_at: float, now: float, alive: set[str] | None) -> bool:
    """Whether a running claim's owner went away. ``alive``: the owners the store knows to
    be running, on any host (PostgreSQL's liveness locks); None where it cannot tell, and
    then a process on this host is looked up by its pid. Either way a claim older than
    ``AGGREGATION_CLAIM_TTL_S`` is taken over (a live but stuck owner)."""
    if owner == process_owner():
        return False
    if now - claimed_at > AGGREGATION_CLAIM_TTL_S:
        return True
    if alive is not None:
        return owner not in alive
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != OWNER_HOST or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():
        return True  # this pid, another incarnation (owner differs): a restart reused the pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    except OSError:
        return True
    return False


def _payload_fault(ctx: ServiceContext, project: ProjectRecord, update: UpdateRecord) -> str | None:
    """Why ``update`` cannot be aggregated, or None if its payload decodes and validates."""
    rt = ctx.runtime(project)
    try:
        decode_update(
            ctx.blobs.read(update.payload_digest),
            rt.spec,
            max_norm=rt.settings.max_update_norm,
            expected_codec=rt.settings.codec,
        )
    except Exception as exc:
        return f"payload cannot be aggregated: {type(exc).__name__}: {exc}"
    return None


class AggregationWorker:
    """The one background thread that expires leases and aggregates complete rounds.

    It sleeps on ``ctx.worker_wakeup``, which services set after an accepted update or a
    status change."""

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self._wake = ctx.worker_wakeup
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0
        self._claims_checked_at = float("-inf")
        self._challenges_swept_at = float("-inf")
        self._failing: dict[int, float] = {}  # project id -> no new try before this time
        self._failures_in_a_row: dict[int, int] = {}
        self._retention_due = True  # payload retention at the first pass, then per version

    def start(self) -> None:
        self.release_stale_claims()
        for project in self.ctx.projects():
            self.ctx.metrics.model_version.labels(project=project.name).set(project.current_version)
        self._thread = threading.Thread(target=self._run, name="barnraise-aggregation", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def wake(self) -> None:
        self._wake.set()

    def release_stale_claims(self) -> int:
        """Take back claims whose owner went away (by time, in any process; at once for a
        process on this host that is gone). A read first: most passes find nothing."""
        now = self.ctx.clock()
        self._claims_checked_at = now
        with self.ctx.store.read() as rtx:
            running = rtx.running_claims()
        if not running:
            return 0
        looked_up = {owner for _pid, owner, _at in running}
        alive = self.ctx.store.live_owners(sorted(looked_up))

        def is_stale(owner: str, claimed_at: float) -> bool:
            # A claim made since the look (its owner not looked up) is someone's new one.
            return owner in looked_up and _claim_is_stale(owner, claimed_at, now, alive)

        if not any(is_stale(owner, at) for _pid, owner, at in running):
            return 0
        with self.ctx.store.write() as tx:
            return tx.release_stale_claims(is_stale)

    def overdue_projects(self) -> list[str]:
        return overdue_projects(self.ctx, set(self._failing))

    def delete_spent_challenges(self) -> int:
        """Delete the join challenges used or expired by now; how many."""
        now = self._challenges_swept_at = self.ctx.clock()
        with self.ctx.store.write(durable=False) as tx:
            return tx.delete_spent_challenges(now)

    def run_once(self) -> bool:
        """One pass: expire leases, take back abandoned claims, then aggregate each project
        whose round is complete, each on its own. True if any version was published."""
        ctx = self.ctx
        expire_leases(ctx)
        if ctx.clock() - self._claims_checked_at >= CLAIM_CHECK_S:
            self.release_stale_claims()
        if ctx.clock() - self._challenges_swept_at >= CHALLENGE_SWEEP_S:
            try:
                self.delete_spent_challenges()
            except Exception as exc:  # housekeeping: never in the way of aggregation
                log.warning("could not delete the spent join challenges: %s", exc)
        if self._retention_due:  # the first pass: finish an interrupted one, catch up
            self._retention_due = False
            for project in ctx.projects():
                self._prune(project)
        published = False
        for project in ctx.projects():
            if project.status in finishing.ENDED:
                continue
            if ctx.runtime(project).settings.finish_at and finishing.finish_if_done(
                ctx, project, ctx.notifier.notify
            ):
                continue  # its end date passed
            if ctx.clock() < self._failing.get(project.id, 0.0):
                continue
            claim = claim_ready(ctx, project)
            if claim is None:
                continue
            try:
                version = run_aggregation(ctx, project, claim)
            except Exception as exc:
                self._failed(project, claim, exc)
            else:
                self._failing.pop(project.id, None)
                self._failures_in_a_row.pop(project.id, None)
                if version is not None:
                    published = True
                    self._prune(project)
        return published

    def _prune(self, project: ProjectRecord) -> None:
        """Retention (``backend.services.retention``): housekeeping, never in the way of
        aggregation; what a failed pass marked is finished by the next."""
        try:
            done = retention.prune(self.ctx, project)
        except Exception as exc:
            log.warning("could not prune the update payloads of project %s: %s", project.name, exc)
            return
        if done.marked or done.deleted:
            log.info(
                "project %s: pruned %d update payload(s), %d blob(s) deleted",
                project.name,
                done.marked,
                done.deleted,
            )

    def _failed(self, project: ProjectRecord, claim: AggregationClaim, exc: Exception) -> None:
        """Quarantine the updates that cannot be aggregated and put the rest back; with
        nothing to blame, put them all back and pause this project (only) a while."""
        ctx = self.ctx
        if is_storage_full(exc):
            ctx.storage.failed()  # /healthz says so until there is room again
        faults = {u.id: f for u in claim.updates if (f := _payload_fault(ctx, project, u))}
        with ctx.store.write() as tx:
            if faults:
                tx.quarantine_updates(claim.id, faults)
                crediting.settle(tx, list(faults), grant=False, now=ctx.clock())
            tx.release_stale_claims(functools.partial(_owned_by, claim.owner))
        if faults:
            ctx.metrics.aggregation_failures.labels(
                project=project.name, outcome="quarantined"
            ).inc()
            log.error(
                "aggregation of project %s failed (%s); quarantined %d update(s): %s",
                project.name,
                exc,
                len(faults),
                "; ".join(f"{k}: {v}" for k, v in faults.items()),
            )
            return
        self.failures += 1
        n = self._failures_in_a_row[project.id] = self._failures_in_a_row.get(project.id, 0) + 1
        pause = min(FAILURE_BACKOFF_MAX_S, FAILURE_BACKOFF_S * 2 ** (n - 1))
        self._failing[project.id] = ctx.clock() + pause
        ctx.metrics.aggregation_failures.labels(project=project.name, outcome="retry").inc()
        log.exception(
            "aggregation of project %s failed with nothing in its input to blame; its updates "
            "go back to the pool and it is tried again in %.0f s",
            project.name,
            pause,
            exc_info=exc,
        )

    def _next_wake_s(self) -> float:
        """Seconds until something time-based may need doing (a lease deadline, a round deadline)."""
        ctx = self.ctx
        now = ctx.clock()
        candidates = [WORKER_MAX_SLEEP_S]
        # Only pauses still running: a past one whose project is not ready again would
        # otherwise wake the worker every 10 ms.
        candidates += [t - now + 0.01 for t in self._failing.values() if t > now]
        with ctx.store.read() as tx:
            deadline = tx.next_deadline(now)
            if deadline is not None:
                candidates.append(deadline - now + 0.01)
            for project in tx.projects():
                settings = ProjectSettings.from_dict(project.settings)
                end = settings.finish_at_s
                if end is not None and end > now and project.status not in finishing.ENDED:
                    candidates.append(end - now + 0.01)
                if project.status in finishing.ENDED or settings.mode != "sync":
                    continue
                counts = tx.round_counts(project.id, project.current_version, now)
                base = tx.version(project.id, project.current_version)
                if base is not None and counts.answered >= settings.min_updates:
                    candidates.append(base.created_at + settings.round_deadline_s - now + 0.01)
        return max(0.01, min(candidates))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                if self.run_once():
                    continue
                timeout = self._next_wake_s()
            except Exception:
                if self._stop.is_set():
                    return
                self.failures += 1
                log.exception(
                    "the aggregation worker hit an error; retrying in %.0f s", FAILURE_BACKOFF_S
                )
                timeout = FAILURE_BACKOFF_S
            self._wake.wait(timeout)
