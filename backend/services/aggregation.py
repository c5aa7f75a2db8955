"""Aggregation: when updates become a new model version, and the worker doing it.

Sync mode: round v closes when ``clients_per_round`` updates arrived, or ``min_updates``
once ``round_deadline_s`` has passed since version v was published. Closing cancels the
round's outstanding leases (their uploads get 409 wrong_base).

Async mode (FedBuff): every ``buffer_size`` accepted updates are aggregated, each weighted
by ``staleness_factor(current - base)``; updates more than ``max_staleness`` versions
behind are dropped (and refused at upload).

Aggregation runs in one background thread per process. It is claimed in the database
(at most one running aggregation per project, enforced by a unique index), so it never
runs twice even with several processes. A claim whose owner died is taken over by any
running worker once its time has passed (at once when the owner was a process on this
host that is gone), and the aggregation runs again from the same inputs.

No input can stop aggregation: each project is aggregated on its own, so one failure never
delays another; an update whose payload no longer decodes is quarantined with its reason
and the rest go back to the pool; a failure with nothing to blame is retried later, with a
growing pause, for that project only; client metrics can never break a version record.
``overdue_projects`` names the projects whose aggregation is late, for ``/healthz`` and
``/metrics``. Publishing the version, marking its
updates and finishing the claim is one transaction. Who gets a task is
``backend.services.leasing``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator

from backend.services.context import ServiceContext
from backend.services.leasing import expire_leases
from backend.services.models import (
    evaluate_state,
    load_tensors,
    model_manifest,
    save_tensors,
    sign_model,
)
from backend.settings import AGGREGATION_CLAIM_TTL_S, ProjectSettings
from backend.store import (
    AggregationClaim,
    ClaimConflict,
    ProjectRecord,
    UpdateRecord,
    VersionRecord,
    WriteTx,
)
from federated.codec import decode_model, decode_update, encode_model
from federated.strategies import build_strategy, staleness_factor
from federated.tensors import ClientUpdate

log = logging.getLogger(__name__)

WORKER_MAX_SLEEP_S = 60.0
"""The worker re-checks every project at least this often, even without a wake-up."""

FAILURE_BACKOFF_S = 5.0
"""After an aggregation fails with nothing to blame, its project waits this long before the
next try; the pause doubles with each failure in a row, up to ``FAILURE_BACKOFF_MAX_S``."""
FAILURE_BACKOFF_MAX_S = 600.0

CLAIM_CHECK_S = 30.0
"""How often a running worker looks for claims whose owner went away."""

OVERDUE_WAIT_S = 2 * WORKER_MAX_SLEEP_S
"""Complete work older than this with no aggregation running means aggregation is late."""

_OWNER_HOST = socket.gethostname()
_OWNER = f"{_OWNER_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _may_be_ready(ctx: ServiceContext, project: ProjectRecord, now: float) -> bool:
    """A cheap look, without the writer: could the project's round be complete?

    The worker runs after every accepted update; most of the time the answer is no, and
    then it need not queue for the writer lock that leases and uploads wait on.
    ``claim_ready`` decides for real, inside the write transaction."""
    with ctx.store.read() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status == "closed" or tx.aggregation_running(project.id):
            return False
        settings = ctx.runtime(fresh).settings
        if settings.mode == "sync":
            counts = tx.round_counts(project.id, fresh.current_version, now)
            return counts.answered >= settings.min_updates
        return tx.pending_updates(project.id) >= settings.buffer_size


def _oldest_fresh_updates(
    tx: WriteTx, project_id: int, version: int, settings: ProjectSettings
) -> list[UpdateRecord]:
    """The oldest ``buffer_size`` pending updates within ``max_staleness``; stale ones met
    on the way are dropped.

    Reads one buffer at a time, never the whole backlog: uploads can outrun aggregation
    (a bench at 200 uploads/s piled up thousands of pending updates), and reading and
    parsing all of them inside the write transaction made every claim hold the writer
    for longer the further behind it was. Stale updates after the buffer stay pending
    until a later claim meets them (they never become fresh again)."""
    while True:
        batch = tx.pending_update_records(project_id, None, settings.buffer_size)
        stale = [u.id for u in batch if version - u.base_version > settings.max_staleness]
        if not stale:
            return batch
        tx.drop_updates(stale)


def claim_ready(ctx: ServiceContext, project: ProjectRecord) -> AggregationClaim | None:
    """Claim the project's next aggregation if its round is complete (one transaction)."""
    now = ctx.clock()
    if not _may_be_ready(ctx, project, now):
        return None
    with ctx.store.write() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status == "closed" or tx.aggregation_running(project.id):
            return None
        settings = ProjectSettings.from_dict(fresh.settings)
        version = fresh.current_version
        if settings.mode == "sync":
            counts = tx.round_counts(project.id, version, now)
            base = tx.version(project.id, version)
            assert base is not None
            past_deadline = now >= base.created_at + settings.round_deadline_s
            ready = counts.answered >= settings.clients_per_round or (
                past_deadline and counts.answered >= settings.min_updates
            )
            if not ready:
                return None
            updates = tx.pending_update_records(project.id, version, None)
        else:
            if tx.pending_updates(project.id) < settings.buffer_size:
                return None
            updates = _oldest_fresh_updates(tx, project.id, version, settings)
            if len(updates) < settings.buffer_size:
                return None
        try:
            claim = tx.claim_aggregation(project.id, version, _OWNER, now, [u.id for u in updates])
        except ClaimConflict:
            return None
        if settings.mode == "sync":
            tx.cancel_round_leases(project.id, version)
    ctx.notifier.notify(project.name)
    return claim


def run_aggregation(
    ctx: ServiceContext, project: ProjectRecord, claim: AggregationClaim
) -> int | None:
    """Aggregate a claimed round, evaluate, publish the next version; returns it (None if lost)."""
    started = time.perf_counter()
    rt = ctx.runtime(project)
    settings = rt.settings
    with ctx.store.read() as tx:
        base = tx.version(project.id, claim.base_version)
    assert base is not None
    base_state = decode_model(ctx.blobs.read(base.digest), rt.spec)
    strategy = build_strategy(project.strategy["name"], project.strategy.get("params") or {})
    if base.strategy_state_digest:
        strategy.load_state_tensors(load_tensors(ctx.blobs.read(base.strategy_state_digest)))

    def updates() -> Iterator[ClientUpdate]:
        for u in claim.updates:
            delta = decode_update(
                ctx.blobs.read(u.payload_digest),
                rt.spec,
                max_norm=settings.max_update_norm,
                expected_codec=settings.codec,
            )
            staleness = claim.base_version - u.base_version
            factor = 1.0
            if settings.mode == "async":
                factor = staleness_factor(staleness, exponent=settings.staleness_exponent)
            yield ClientUpdate(delta, u.num_examples, u.max_examples, factor, u.client_id)

    new_state = strategy.aggregate(base_state, updates())
    metrics: dict[str, float] = {}
    test = rt.test_data()
    if test is not None:
        metrics = evaluate_state(rt.recipe, rt.hparams, new_state, test)
    losses = [u.metrics["loss_after"] for u in claim.updates if "loss_after" in u.metrics]
    if losses:
        metrics["client_loss_after"] = math.fsum(v / len(losses) for v in losses)
    metrics = _finite_metrics(metrics)
    digest = ctx.blobs.put(encode_model(new_state))
    state_tensors = strategy.state_tensors()
    state_digest = None
    if state_tensors:
        state_digest = ctx.blobs.put(save_tensors(state_tensors))
    now = ctx.clock()
    next_version = claim.base_version + 1
    manifest = model_manifest(project.name, next_version, digest, now)
    record = VersionRecord(
        project_id=project.id,
        version=next_version,
        digest=digest,
        created_at=now,
        signature=sign_model(ctx.keys.load(project.name), manifest),
        metrics=metrics,
        updates=len(claim.updates),
        contributors=len({u.client_id for u in claim.updates}),
        strategy_state_digest=state_digest,
    )
    with ctx.store.write() as tx:
        if tx.aggregation_owner(claim.id) != claim.owner:
            log.warning("aggregation %s of %s was taken over; discarding", claim.id, project.name)
            return None
        tx.finish_aggregation(claim, record, [])
    ctx.metrics.aggregation_seconds.labels(project=project.name).observe(
        time.perf_counter() - started
    )
    ctx.metrics.model_version.labels(project=project.name).set(next_version)
    ctx.notifier.notify(project.name)
    log.info("project %s: published version %d (%s)", project.name, next_version, metrics)
    return next_version


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What a version record may hold: a diverged evaluation or absurd client reports
    (1e308 averages to infinity) are left out rather than break the record."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
    }


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


def overdue_projects(ctx: ServiceContext, failing: set[int] | None = None) -> list[str]:
    """Names of the projects whose aggregation is late: a claim held past its time, complete
    work waiting longer than ``OVERDUE_WAIT_S`` with none running, or (``failing``) a
    project whose last try here failed with nothing to blame."""
    now = ctx.clock()
    failing = failing or set()
    with ctx.store.read() as tx:
        claims = {pid: claimed_at for pid, _owner, claimed_at in tx.running_claims()}
        projects = [p for p in tx.projects() if p.status != "closed"]
        oldest = {p.id: tx.oldest_pending_at(p.id) for p in projects}
    late: list[str] = []
    for project in projects:
        if project.id in claims:
            overdue = now - claims[project.id] > AGGREGATION_CLAIM_TTL_S
        else:
            waiting = oldest[project.id]
            overdue = project.id in failing or (
                waiting is not None
                and now - waiting > OVERDUE_WAIT_S
                and _may_be_ready(ctx, project, now)
            )
        ctx.metrics.aggregation_overdue.labels(project=project.name).set(int(overdue))
        if overdue:
            late.append(project.name)
    return late


def _claim_is_stale(owner: str, claimed_at: float, now: float) -> bool:
    if owner == _OWNER:
        return False
    if now - claimed_at > AGGREGATION_CLAIM_TTL_S:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != _OWNER_HOST or not pid_text.isdigit():
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


def _owned_by(expected: str, owner: str, _claimed_at: float) -> bool:
    return owner == expected


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
        self._failing: dict[int, float] = {}  # project id -> no new try before this time
        self._failures_in_a_row: dict[int, int] = {}

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
        if not any(_claim_is_stale(owner, at, now) for _pid, owner, at in running):
            return 0
        with self.ctx.store.write() as tx:
            return tx.release_stale_claims(lambda owner, at: _claim_is_stale(owner, at, now))

    def overdue_projects(self) -> list[str]:
        return overdue_projects(self.ctx, set(self._failing))

    def run_once(self) -> bool:
        """One pass: expire leases, take back abandoned claims, then aggregate each project
        whose round is complete, each on its own. True if any version was published."""
        ctx = self.ctx
        expire_leases(ctx)
        if ctx.clock() - self._claims_checked_at >= CLAIM_CHECK_S:
            self.release_stale_claims()
        published = False
        for project in ctx.projects():
            if project.status == "closed" or ctx.clock() < self._failing.get(project.id, 0.0):
                continue
            claim = claim_ready(ctx, project)
            if claim is None:
                continue
            try:
                published |= run_aggregation(ctx, project, claim) is not None
            except Exception as exc:
                self._failed(project, claim, exc)
            else:
                self._failing.pop(project.id, None)
                self._failures_in_a_row.pop(project.id, None)
        return published

    def _failed(self, project: ProjectRecord, claim: AggregationClaim, exc: Exception) -> None:
        """Quarantine the updates that cannot be aggregated and put the rest back; with
        nothing to blame, put them all back and pause this project (only) a while."""
        ctx = self.ctx
        faults = {u.id: f for u in claim.updates if (f := _payload_fault(ctx, project, u))}
        with ctx.store.write() as tx:
            if faults:
                tx.quarantine_updates(claim.id, faults)
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
                if project.status == "closed" or settings.mode != "sync":
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
