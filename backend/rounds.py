"""Rounds: who gets a task, when updates become a new model version, and the worker doing it.

Sync mode: round v is open while version v is current. It hands out at most
``leases_per_round`` live-or-answered tasks (over-provisioned, one per contributor) and
closes when ``clients_per_round`` updates arrived, or ``min_updates`` once
``round_deadline_s`` has passed since version v was published. Closing cancels the round's
outstanding leases (their uploads get 409 wrong_base).

Async mode (FedBuff): any contributor may hold one lease at a time on the current
version; every ``buffer_size`` accepted updates are aggregated, each weighted by
``staleness_factor(current - base)``; updates more than ``max_staleness`` versions behind
are dropped (and refused at upload).

Both modes size each task to the contributor (``backend.pacing``): the full task, half or
a quarter of its steps, whichever its measured pace brings back while the update is still
useful, or none (the lease answers as if no work were available); each manifest says until
when its update is useful (``useful_until``). A task refused for good at upload is
``rejected``: never leased again, never a live lease (see ``backend.errors.FINAL_UPLOAD_CODES``).

Aggregation runs in one background thread per process. It is claimed in the database
(at most one running aggregation per project, enforced by a unique index), so it never
runs twice even with several processes; a claim whose owner died is released on restart
and the aggregation runs again from the same inputs. Publishing the version, marking its
updates and finishing the claim is one transaction.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from backend import pacing
from backend.errors import api_error
from backend.ids import new_id
from backend.settings import (
    AGGREGATION_CLAIM_TTL_S,
    RETRY_AFTER_PAUSED_S,
    ProjectSettings,
)
from backend.store import (
    AggregationClaim,
    ClaimConflict,
    ProjectRecord,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
    WriteTx,
)
from federated.codec import decode_model, decode_update, encode_model
from federated.strategies import build_strategy, staleness_factor
from federated.tensors import ClientUpdate
from federated.training import total_steps_for

if TYPE_CHECKING:
    from backend.coordinator import Coordinator

log = logging.getLogger(__name__)

WORKER_MAX_SLEEP_S = 60.0
"""The worker re-checks every project at least this often, even without a wake-up."""

FAILURE_BACKOFF_S = 5.0
"""After an aggregation fails unexpectedly, the worker waits this long before retrying."""

_OWNER_HOST = socket.gethostname()
_OWNER = f"{_OWNER_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def sign_task_manifest(coordinator: Coordinator, project: str, manifest: dict[str, Any]) -> str:
    return coordinator.keys.load(project).sign(manifest)


class _Withheld(Exception):
    """No size of task would come back in time; raised inside the lease transaction so
    that its savepoint is rolled back (the shard counter included): withholding changes
    nothing."""


def try_lease(coordinator: Coordinator, project_name: str, client_id: str) -> dict[str, Any] | None:
    """A signed task for the client now, or None (none available, or none it could return
    in time). Raises project_paused / project_closed.

    Runs as a batched write (``Store.write_batched``): under load, leases arriving
    together share one transaction instead of queueing for the writer one by one."""
    now = coordinator.clock()
    try:
        signed, expired = coordinator.store.write_batched(
            functools.partial(_lease_in_tx, coordinator, project_name, client_id, now)
        )
    except _Withheld:
        coordinator.metrics.leases.labels(project=project_name, outcome="withheld").inc()
        return None
    if expired:
        _notify_projects(coordinator, expired)
    return signed


def full_task_steps(hparams: dict[str, Any], examples: int | None) -> int | None:
    """Training steps of a full task on ``examples`` local examples (None if unknown)."""
    if int(hparams.get("max_steps", 0) or 0) > 0:
        return int(hparams["max_steps"])
    if not examples:
        return None
    return total_steps_for(hparams, examples)


def _fit_task(
    tx: WriteTx,
    project: ProjectRecord,
    settings: ProjectSettings,
    base: VersionRecord,
    client_id: str,
    examples: int | None,
    now: float,
    round_needs_it: bool,
    round_waits_for_it: bool,
) -> tuple[dict[str, Any], float]:
    """(the task's hyperparameters, its useful_until); raises _Withheld."""
    interval = pacing.version_interval(tx.version_times(project.id, pacing.VERSION_HISTORY + 1))
    useful = max(
        now,
        pacing.useful_until(
            mode=settings.mode,
            version_created_at=base.created_at,
            interval=interval,
            now=now,
            max_staleness=settings.max_staleness,
            round_deadline_s=settings.round_deadline_s,
            lease_s=settings.lease_s,
            round_needs_it=round_needs_it,
            round_waits_for_it=round_waits_for_it,
        ),
    )
    if not settings.fit_tasks:
        return project.hparams, useful
    client = tx.client(client_id)
    pace = pacing.pace_of(client) if client is not None else None
    if examples is None and pace is not None:
        examples = pace.examples  # local data: the size it reported last
    full = full_task_steps(project.hparams, examples)
    if full is None:
        return project.hparams, useful  # nothing known to size by: the full task
    steps = pacing.fit_steps(full_steps=full, pace=pace, now=now, useful_until=useful)
    if steps is None:
        raise _Withheld
    if steps < full:
        return {**project.hparams, "max_steps": steps}, useful
    return project.hparams, useful


def _lease_in_tx(
    coordinator: Coordinator, project_name: str, client_id: str, now: float, tx: WriteTx
) -> tuple[dict[str, Any] | None, list[int]]:
    """try_lease's transaction: (the signed task or None, projects with expired leases)."""
    project = tx.project_by_name(project_name)
    assert project is not None
    if project.status == "closed":
        raise api_error("project_closed", f"project {project_name!r} is closed")
    if project.status == "paused":
        raise api_error(
            "project_paused",
            f"project {project_name!r} is paused by its organiser; try again later",
            retry_after=RETRY_AFTER_PAUSED_S,
        )
    expired = tx.expire_leases(now)
    settings = coordinator.runtime(project).settings  # parsed once; settings never change
    existing = tx.live_task_for_client(project.id, client_id, now)
    if existing is not None:
        return {"manifest": existing.manifest, "signature": existing.signature}, expired
    version = project.current_version
    round_needs_it, round_waits_for_it = True, False
    if settings.mode == "sync":
        if tx.aggregation_running(project.id) or tx.client_has_task(project.id, client_id, version):
            return None, expired
        counts = tx.round_counts(project.id, version, now)
        if counts.answered >= settings.clients_per_round:
            return None, expired
        if counts.live_leases + counts.answered >= settings.leases_per_round:
            return None, expired
        round_needs_it = counts.live_leases + counts.answered < settings.clients_per_round
        round_waits_for_it = counts.live_leases + counts.answered < settings.min_updates
    elif tx.live_leases(project.id, now) >= settings.max_concurrent_leases:
        return None, expired
    base = tx.version(project.id, version)
    assert base is not None
    num_shards = len(project.shard_sizes) if project.shard_sizes else 1
    shard = tx.next_shard(project.id, num_shards)
    max_examples = project.shard_sizes[shard] if project.shard_sizes else 1_000_000_000
    hparams, useful_until = _fit_task(
        tx,
        project,
        settings,
        base,
        client_id,
        project.shard_sizes[shard] if project.shard_sizes else None,
        now,
        round_needs_it,
        round_waits_for_it,
    )
    task_id = new_id()
    deadline = int(now + settings.lease_s)
    manifest = {
        "task_id": task_id,
        "project": project.name,
        "client_id": client_id,
        "base_version": version,
        "base_digest": base.digest,
        "recipe": project.recipe,
        "recipe_version": project.recipe_version,
        "hparams": hparams,
        "shard_index": shard,
        "max_examples": int(max_examples),
        "codec": settings.codec,
        "max_update_norm": settings.max_update_norm,
        "max_payload_bytes": settings.max_payload_bytes,
        "issued_at": int(now),
        "deadline": deadline,
        "useful_until": round(useful_until),  # nearest second: windows can be seconds long
    }
    signature = sign_task_manifest(coordinator, project.name, manifest)
    tx.insert_task(
        TaskRecord(
            id=task_id,
            project_id=project.id,
            client_id=client_id,
            base_version=version,
            shard_index=shard,
            status="leased",
            issued_at=now,
            deadline=deadline,
            max_examples=int(max_examples),
            manifest=manifest,
            signature=signature,
        )
    )
    tx.touch_client(client_id, now)
    return {"manifest": manifest, "signature": signature}, expired


def _notify_projects(coordinator: Coordinator, project_ids: list[int]) -> None:
    with coordinator.store.read() as tx:
        names = [p.name for p in tx.projects() if p.id in project_ids]
    for name in names:
        coordinator.notifier.notify(name)


def expire_leases(coordinator: Coordinator) -> int:
    """Return expired leases' capacity to the pool and wake the long polls that wait for it."""
    now = coordinator.clock()
    with coordinator.store.read() as rtx:
        deadline = rtx.next_deadline(now)
    if deadline is None or deadline >= now:
        return 0  # nothing has expired: leave the writer to the requests
    with coordinator.store.write(durable=False) as tx:
        expired = tx.expire_leases(now)
    if expired:
        _notify_projects(coordinator, expired)
    return len(expired)


def _may_be_ready(coordinator: Coordinator, project: ProjectRecord, now: float) -> bool:
    """A cheap look, without the writer: could the project's round be complete?

    The worker runs after every accepted update; most of the time the answer is no, and
    then it need not queue for the writer lock that leases and uploads wait on.
    ``claim_ready`` decides for real, inside the write transaction."""
    with coordinator.store.read() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status == "closed" or tx.aggregation_running(project.id):
            return False
        settings = coordinator.runtime(fresh).settings
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


def claim_ready(coordinator: Coordinator, project: ProjectRecord) -> AggregationClaim | None:
    """Claim the project's next aggregation if its round is complete (one transaction)."""
    now = coordinator.clock()
    if not _may_be_ready(coordinator, project, now):
        return None
    with coordinator.store.write() as tx:
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
    coordinator.notifier.notify(project.name)
    return claim


def run_aggregation(
    coordinator: Coordinator, project: ProjectRecord, claim: AggregationClaim
) -> int | None:
    """Aggregate a claimed round, evaluate, publish the next version; returns it (None if lost)."""
    started = time.perf_counter()
    rt = coordinator.runtime(project)
    settings = rt.settings
    with coordinator.store.read() as tx:
        base = tx.version(project.id, claim.base_version)
    assert base is not None
    base_state = decode_model(coordinator.blobs.read(base.digest), rt.spec)
    strategy = build_strategy(project.strategy["name"], project.strategy.get("params") or {})
    if base.strategy_state_digest:
        from backend.coordinator import load_tensors

        strategy.load_state_tensors(
            load_tensors(coordinator.blobs.read(base.strategy_state_digest))
        )

    def updates() -> Iterator[ClientUpdate]:
        for u in claim.updates:
            delta = decode_update(
                coordinator.blobs.read(u.payload_digest),
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
        from backend.coordinator import evaluate_state

        metrics = evaluate_state(rt.recipe, rt.hparams, new_state, test)
    losses = [u.metrics["loss_after"] for u in claim.updates if "loss_after" in u.metrics]
    if losses:
        metrics["client_loss_after"] = sum(losses) / len(losses)
    digest = coordinator.blobs.put(encode_model(new_state))
    state_tensors = strategy.state_tensors()
    state_digest = None
    if state_tensors:
        from backend.coordinator import _save_tensors

        state_digest = coordinator.blobs.put(_save_tensors(state_tensors))
    now = coordinator.clock()
    next_version = claim.base_version + 1
    manifest = {
        "project": project.name,
        "version": next_version,
        "digest": digest,
        "created_at": int(now),
    }
    record = VersionRecord(
        project_id=project.id,
        version=next_version,
        digest=digest,
        created_at=now,
        signature=coordinator.keys.load(project.name).sign(manifest),
        metrics=metrics,
        updates=len(claim.updates),
        contributors=len({u.client_id for u in claim.updates}),
        strategy_state_digest=state_digest,
    )
    with coordinator.store.write() as tx:
        if tx.aggregation_owner(claim.id) != claim.owner:
            log.warning("aggregation %s of %s was taken over; discarding", claim.id, project.name)
            return None
        tx.finish_aggregation(claim, record, [])
    coordinator.metrics.aggregation_seconds.labels(project=project.name).observe(
        time.perf_counter() - started
    )
    coordinator.metrics.model_version.labels(project=project.name).set(next_version)
    coordinator.notifier.notify(project.name)
    log.info("project %s: published version %d (%s)", project.name, next_version, metrics)
    return next_version


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
    """The one background thread that expires leases and aggregates complete rounds."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.coordinator = coordinator
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.failures = 0

    def start(self) -> None:
        self.release_stale_claims()
        for project in self.coordinator.projects():
            self.coordinator.metrics.model_version.labels(project=project.name).set(
                project.current_version
            )
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
        now = self.coordinator.clock()
        with self.coordinator.store.write() as tx:
            return tx.release_stale_claims(lambda owner, at: _claim_is_stale(owner, at, now))

    def run_once(self) -> bool:
        """One pass: expire leases, aggregate at most one complete round. True if it did."""
        expire_leases(self.coordinator)
        for project in self.coordinator.projects():
            if project.status == "closed":
                continue
            claim = claim_ready(self.coordinator, project)
            if claim is None:
                continue
            try:
                run_aggregation(self.coordinator, project, claim)
            except Exception:
                log.exception(
                    "aggregation of project %s failed; its updates go back to the pool",
                    project.name,
                )
                with self.coordinator.store.write() as tx:
                    tx.release_stale_claims(functools.partial(_owned_by, claim.owner))
                raise
            return True
        return False

    def _next_wake_s(self) -> float:
        """Seconds until something time-based may need doing (a lease deadline, a round deadline)."""
        coordinator = self.coordinator
        now = coordinator.clock()
        candidates = [WORKER_MAX_SLEEP_S]
        with coordinator.store.read() as tx:
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
