"""Leasing: who gets a task and of what size, heartbeats, releases, and the long poll.

Sync mode: round v is open while version v is current. It hands out at most
``leases_per_round`` live-or-answered tasks (over-provisioned, one per contributor); when
the round closes (``backend.services.aggregation``) its outstanding leases are cancelled
(their uploads get 409 wrong_base).

Hoarding is bounded (issue 12: throwaway identities took every lease of a round and kept
them alive with heartbeats, and the round never closed). A lease lives at most
``lease_life_s`` (an hour, or 12 x ``lease_s`` if longer) from its issue: heartbeats extend
it up to then, and one after it gets 410 lease_expired; the task goes back to the pool.
In a sync round whose leases are all out, a lease out for ``round_deadline_s`` without an
update is overdue: it stops holding the round's capacity and its shard is offered again to
another contributor (the holder keeps its lease; each upload is a task of its own), at most
``leases_per_round`` leases beyond the round's own at once, and none once the round has
its ``min_updates``. A contributor still holds one lease at a time and gets one task per
round, so as many hoarders as a round has leases delay it by its deadline at most (twice
as many hold every lease until their leases' life ends, and then have to win them again).

Async mode (FedBuff): any contributor may hold one lease at a time on the current
version, up to ``max_concurrent_leases`` live leases per project.

Both modes size each task to the contributor (``backend.pacing``): the full task, half or
a quarter of its steps, whichever its measured pace brings back while the update is still
useful (and within the lease's life), or none (the lease answers as if no work were
available); each manifest says until when its update is useful (``useful_until``). A
project on a learning-rate schedule across versions (``lr_schedule`` not constant,
``schedule_steps`` > 0) gives each task its place on it: ``schedule_offset`` = base version
x the full task's steps (the version's start, not shrunk by pacing). A task refused for
good at upload is ``rejected``: never leased again, never a live lease (see
``backend.errors.FINAL_UPLOAD_CODES``).
A contributor the organiser banned gets 403 ``banned`` (``backend.services.admin``).

A lease waits (long poll) on the project's ``Notifier`` generation: a new version, a
released or expired lease, or a status change wakes it.
"""

from __future__ import annotations

import functools
import time
from typing import Any

import msgspec

from backend import pacing
from backend.errors import api_error
from backend.ids import new_id
from backend.services import privacy
from backend.services.context import ServiceContext
from backend.services.finishing import FINISHED, finished_error
from backend.services.tasks import check_live, check_not_banned, full_task_steps, owned_task
from backend.settings import (
    LONG_POLL_MAX_S,
    LONG_POLL_RECHECK_S,
    RETRY_AFTER_PAUSED_S,
    ProjectSettings,
)
from backend.store import (
    ClientRecord,
    ProjectRecord,
    RoundCounts,
    TaskRecord,
    VersionRecord,
    WriteTx,
)
from federated import protocol
from federated.training import schedule_offset


class LeasingService:
    """Lease (with long poll), heartbeat and release of tasks."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def lease(
        self, project: ProjectRecord, client: ClientRecord, wait: float
    ) -> protocol.SignedTask | None:
        """A signed task, waiting up to ``wait`` seconds for one; None if there is none."""
        ctx = self._ctx
        check_not_banned(project, client)
        wait = min(max(0.0, wait), LONG_POLL_MAX_S)
        give_up = time.monotonic() + wait
        while True:
            seen = ctx.notifier.generation(project.name)
            signed = try_lease(ctx, project.name, client.id)
            if signed is not None:
                ctx.metrics.leases.labels(project=project.name, outcome="granted").inc()
                return signed
            remaining = give_up - time.monotonic()
            if remaining <= 0 or ctx.notifier.closed:
                ctx.metrics.leases.labels(project=project.name, outcome="no_work").inc()
                return None
            ctx.notifier.wait(project.name, seen, min(remaining, LONG_POLL_RECHECK_S))

    def heartbeat(
        self, project: ProjectRecord, client: ClientRecord, task_id: str
    ) -> protocol.Heartbeat:
        ctx = self._ctx
        check_not_banned(project, client)
        owned_task(ctx, project, client, task_id)
        settings = ctx.runtime(project).settings
        now = ctx.clock()
        with ctx.store.write(durable=False) as tx:
            task = tx.task(task_id)
            assert task is not None
            life_end = int(task.issued_at + settings.lease_life_s)  # its last deadline
            if task.status == "leased" and now > life_end:
                raise api_error(
                    "lease_expired",
                    f"the lease on task {task_id!r} reached its longest life "
                    f"({settings.lease_life_s:.0f} s from its issue; heartbeats do not extend "
                    "it past that); lease a new task",
                )
            check_live(task, now)
            deadline = min(int(now + settings.lease_s), life_end)
            manifest = msgspec.structs.replace(stored_manifest(task), deadline=deadline)
            tx.set_task_lease(
                task_id,
                deadline,
                protocol.to_wire(manifest),
                sign_task_manifest(ctx, project.name, manifest),
            )
            tx.touch_client(client.id, now)
        return protocol.Heartbeat(deadline=deadline)

    def release(self, project: ProjectRecord, client: ClientRecord, task_id: str) -> None:
        ctx = self._ctx
        owned_task(ctx, project, client, task_id)
        now = ctx.clock()

        def release_in_tx(tx: WriteTx) -> bool:
            task = tx.task(task_id)
            assert task is not None
            if task.status in ("released", "rejected"):
                return False  # already over: giving it back again changes nothing
            check_live(task, now)
            tx.set_task_status(task_id, "released")
            return True

        # Batched: releases come as often as leases and, like them, are a few statements.
        if ctx.store.write_batched(release_in_tx):
            ctx.notifier.notify(project.name)


def sign_task_manifest(ctx: ServiceContext, project: str, manifest: protocol.TaskManifest) -> str:
    """The project key's signature over exactly what is sent: ``encode_canonical(manifest)``."""
    return ctx.keys.load(project).sign_bytes(protocol.encode_canonical(manifest))


def stored_manifest(task: TaskRecord) -> protocol.TaskManifest:
    """The manifest a task was signed as, from its stored wire form (``to_wire`` of it)."""
    return protocol.convert(task.manifest, protocol.TaskManifest, what="a stored task manifest")


class _Withheld(Exception):
    """No size of task would come back in time; raised inside the lease transaction so
    that its savepoint is rolled back (the shard counter included): withholding changes
    nothing."""


def try_lease(ctx: ServiceContext, project_name: str, client_id: str) -> protocol.SignedTask | None:
    """A signed task for the client now, or None (none available, or none it could return
    in time). Raises project_paused / project_closed.

    Runs as a batched write (``Store.write_batched``): under load, leases arriving
    together share one transaction instead of queueing for the writer one by one."""
    now = ctx.clock()
    try:
        signed, expired = ctx.store.write_batched(
            functools.partial(_lease_in_tx, ctx, project_name, client_id, now)
        )
    except _Withheld:
        ctx.metrics.leases.labels(project=project_name, outcome="withheld").inc()
        return None
    if expired:
        notify_projects(ctx, expired)
    return signed


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
        full = full_task_steps(project.hparams, examples)
        return _on_schedule(project.hparams, project.hparams, base.version, full), useful
    # Sized to come back within the lease's life too: no heartbeat keeps it longer.
    fit_by = min(useful, now + settings.lease_life_s)
    client = tx.client(client_id)
    pace = pacing.pace_of(client) if client is not None else None
    if examples is None and pace is not None:
        examples = pace.examples  # local data: the size it reported last
    full = full_task_steps(project.hparams, examples)
    if full is None:
        return project.hparams, useful  # nothing known to size by: the full task
    steps = pacing.fit_steps(full_steps=full, pace=pace, now=now, useful_until=fit_by)
    if steps is None:
        raise _Withheld
    if steps < full:
        shrunk = {**project.hparams, "max_steps": steps}
        return _on_schedule(shrunk, project.hparams, base.version, full), useful
    return _on_schedule(project.hparams, project.hparams, base.version, full), useful


def _on_schedule(
    hparams: dict[str, Any], project_hparams: dict[str, Any], version: int, full: int | None
) -> dict[str, Any]:
    """``hparams`` with the task's place on a learning-rate schedule across versions: its
    ``schedule_offset`` is where its base version stands, ``version`` x the full task's
    steps, whatever size pacing gave this one (``federated.training.schedule_offset``).
    Unchanged for a constant rate or a schedule each task runs alone."""
    offset = schedule_offset(project_hparams, version, full)
    return hparams if offset is None else {**hparams, "schedule_offset": offset}


def _reissue(
    tx: WriteTx,
    project_id: int,
    version: int,
    settings: ProjectSettings,
    counts: RoundCounts,
    now: float,
) -> tuple[int, int] | None:
    """Sync, a round whose leases are all out: (the shard to offer again, the round's tasks
    that still count), or None when nothing may be re-issued.

    A lease out for ``round_deadline_s`` without an update is overdue (the round is past
    its deadline then too): it no longer holds the round's capacity, and its shard, oldest
    first, goes to another contributor; the overdue one keeps its lease, and both updates
    count if they come before the round closes (each is a task of its own). At most
    ``leases_per_round`` live leases more than the round's own, so re-issues cannot flood
    it; none once the round has its ``min_updates`` (it closes at its deadline)."""
    if counts.answered >= settings.min_updates:
        return None
    if counts.live_leases + counts.answered >= 2 * settings.leases_per_round:
        return None
    leases = tx.live_round_leases(project_id, version, now)
    cutoff = now - settings.round_deadline_s
    overdue = [shard for shard, issued_at in leases if issued_at <= cutoff]
    fresh = [shard for shard, issued_at in leases if issued_at > cutoff]
    counted = counts.answered + len(fresh)
    if not overdue or counted >= settings.leases_per_round:
        return None
    shard = next((s for s in overdue if s not in fresh), overdue[0])
    return shard, counted


REFUSALS_BEFORE_PAUSE = 3
"""Uploads refused in a row (for what they were, not for lateness) before a contributor
waits for its next task: each costs the coordinator a decode and a screen, and a client
sending free rides as fast as it can made honest updates late (bench.adversaries)."""
REFUSAL_PAUSE_S = 5.0
REFUSAL_PAUSE_MAX_S = 3600.0


def refusal_pause_s(client: ClientRecord, now: float) -> float:
    """Seconds the client still waits for a task after refused uploads: 5 s after the third
    in a row, doubling with each more, at most an hour; an accepted upload resets it."""
    n = client.refused_in_a_row
    if n < REFUSALS_BEFORE_PAUSE or client.refused_at is None:
        return 0.0
    pause = min(REFUSAL_PAUSE_MAX_S, REFUSAL_PAUSE_S * 2 ** (n - REFUSALS_BEFORE_PAUSE))
    return max(0.0, client.refused_at + pause - now)


def _lease_in_tx(
    ctx: ServiceContext, project_name: str, client_id: str, now: float, tx: WriteTx
) -> tuple[protocol.SignedTask | None, list[int]]:
    """try_lease's transaction: (the signed task or None, projects with expired leases)."""
    project = tx.project_by_name(project_name)
    assert project is not None
    if project.status == FINISHED:
        raise finished_error(project_name)
    if project.status == "closed":
        settings = ctx.runtime(project).settings
        if not privacy.fits_another_aggregate(tx, project.id, settings):
            raise api_error(
                "privacy_budget_spent",
                f"project {project_name!r} has spent its privacy budget (epsilon "
                f"{settings.dp_epsilon:g}, delta {settings.dp_delta:g}); training has ended",
            )
        raise api_error("project_closed", f"project {project_name!r} is closed")
    if project.status == "paused":
        raise api_error(
            "project_paused",
            f"project {project_name!r} is paused by its organiser; try again later",
            retry_after=RETRY_AFTER_PAUSED_S,
        )
    expired = tx.expire_leases(now)
    settings = ctx.runtime(project).settings  # parsed once; settings never change
    existing = tx.live_task_for_client(project.id, client_id, now)
    if existing is not None:
        signed = protocol.SignedTask(
            manifest=stored_manifest(existing), signature=existing.signature
        )
        return signed, expired
    version = project.current_version
    round_needs_it, round_waits_for_it = True, False
    reissued_shard: int | None = None  # sync: the shard of an overdue lease, offered again
    if settings.mode == "sync":
        if tx.aggregation_running(project.id) or tx.client_has_task(project.id, client_id, version):
            return None, expired
        counts = tx.round_counts(project.id, version, now)
        if counts.answered >= settings.clients_per_round:
            return None, expired
        held = counts.live_leases + counts.answered
        if held >= settings.leases_per_round:
            reissue = _reissue(tx, project.id, version, settings, counts, now)
            if reissue is None:
                return None, expired
            reissued_shard, held = reissue
        round_needs_it = held < settings.clients_per_round
        round_waits_for_it = held < settings.min_updates
    elif tx.live_leases(project.id, now) >= settings.max_concurrent_leases:
        return None, expired
    elif tx.client_pending_updates(project.id, client_id) >= settings.client_cap(
        settings.buffer_size
    ):
        # Its share of the next buffer is waiting already: more work now would only wait
        # (and go stale) behind it, or let one contributor fill a buffer.
        return None, expired
    client = tx.client(client_id)
    check_not_banned(project, client)  # banned during a long poll
    if client is not None and refusal_pause_s(client, now) > 0:
        return None, expired  # its last uploads were refused: it waits before more work
    base = tx.version(project.id, version)
    assert base is not None
    num_shards = len(project.shard_sizes) if project.shard_sizes else 1
    shard = reissued_shard if reissued_shard is not None else tx.next_shard(project.id, num_shards)
    # Built-in data: the shard's size. Local data: the project's cap, so no claim of a
    # huge local data set can buy credit or FedAvg weight beyond it.
    max_examples = (
        project.shard_sizes[shard] if project.shard_sizes else settings.max_local_examples
    )
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
    manifest = protocol.TaskManifest(
        task_id=task_id,
        project=project.name,
        client_id=client_id,
        base_version=version,
        base_digest=base.digest,
        recipe=project.recipe,
        recipe_version=project.recipe_version,
        hparams=hparams,
        shard_index=shard,
        max_examples=int(max_examples),
        codec=settings.codec,
        max_update_norm=settings.max_update_norm,
        max_payload_bytes=settings.max_payload_bytes,
        issued_at=int(now),
        deadline=deadline,
        useful_until=round(useful_until),  # nearest second: windows can be seconds long
        privacy=privacy.terms(settings),
        update_clip_norm=privacy.update_clip_norm(settings, base),
        report_energy=True,
    )
    signature = sign_task_manifest(ctx, project.name, manifest)
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
            manifest=protocol.to_wire(manifest),
            signature=signature,
        )
    )
    tx.touch_client(client_id, now)
    return protocol.SignedTask(manifest=manifest, signature=signature), expired


def notify_projects(ctx: ServiceContext, project_ids: list[int]) -> None:
    with ctx.store.read() as tx:
        names = [p.name for p in tx.projects() if p.id in project_ids]
    for name in names:
        ctx.notifier.notify(name)


def expire_leases(ctx: ServiceContext) -> int:
    """Return expired leases' capacity to the pool and wake the long polls that wait for it."""
    now = ctx.clock()
    with ctx.store.read() as rtx:
        deadline = rtx.next_deadline(now)
    if deadline is None or deadline >= now:
        return 0  # nothing has expired: leave the writer to the requests
    with ctx.store.write(durable=False) as tx:
        expired = tx.expire_leases(now)
    if expired:
        notify_projects(ctx, expired)
    return len(expired)
