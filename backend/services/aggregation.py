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
import statistics
import time
import uuid
from collections.abc import Iterator

from backend.services import crediting, finishing, privacy
from backend.services.context import ServiceContext
from backend.services.finishing import ENDED, EXAMPLES_TRAINED
from backend.services.gate import REFERENCE_VERSIONS, Aggregate, gate, reference_loss
from backend.services.models import (
    evaluate_state,
    load_tensors,
    model_manifest,
    save_tensors,
    sign_model,
    update_leaves,
)
from backend.services.vetting import Vetting, judge, select_by_share
from backend.services.vetting import record as vetting_record
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
from federated.screening import clip_delta
from federated.strategies import DPFedAvg, build_strategy, staleness_factor
from federated.tensors import ClientUpdate

log = logging.getLogger(__name__)

WORKER_MAX_SLEEP_S = 60.0
"""The worker re-checks every project at least this often, even without a wake-up."""


_SHARE_SCAN = 64
"""Async: pending updates read per claim to fill a buffer within the share limits."""

OVERDUE_WAIT_S = 2 * WORKER_MAX_SLEEP_S
"""Complete work older than this with no aggregation running means aggregation is late."""

OWNER_HOST = socket.gethostname()
_owner: tuple[int, str] = (0, "")


def process_owner() -> str:
    """This process's name on its aggregation claims and its liveness lock
    (``Store.connect_peers``): host, pid and a random part, so that a restart reusing a pid
    is another owner. Made in the process that uses it: a forked worker (gunicorn) is
    never its parent's owner, which would make its parent's claims look like its own."""
    global _owner
    pid = os.getpid()
    if _owner[0] != pid:
        _owner = (pid, f"{OWNER_HOST}:{pid}:{uuid.uuid4().hex[:12]}")
    return _owner[1]


def _may_be_ready(ctx: ServiceContext, project: ProjectRecord, now: float) -> bool:
    """A cheap look, without the writer: could the project's round be complete?

    The worker runs after every accepted update; most of the time the answer is no, and
    then it need not queue for the writer lock that leases and uploads wait on.
    ``claim_ready`` decides for real, inside the write transaction."""
    with ctx.store.read() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status in ENDED or tx.aggregation_running(project.id):
            return False
        settings = ctx.runtime(fresh).settings
        if settings.mode == "sync":
            counts = tx.round_counts(project.id, fresh.current_version, now)
            return counts.answered >= settings.min_updates
        return tx.pending_updates(project.id) >= settings.buffer_size


def _oldest_fresh_updates(
    tx: WriteTx, project_id: int, version: int, settings: ProjectSettings, now: float
) -> list[UpdateRecord]:
    """The oldest ``buffer_size`` pending updates within ``max_staleness`` and the share
    limits; stale ones met on the way are dropped (their credit granted: lateness is the
    coordinator's, not theirs).

    Reads a few buffers at a time, never the whole backlog: uploads can outrun aggregation
    (a bench at 200 uploads/s piled up thousands of pending updates), and reading and
    parsing all of them inside the write transaction made every claim hold the writer
    for longer the further behind it was. Stale updates after the scan stay pending
    until a later claim meets them (they never become fresh again)."""
    scan = max(4 * settings.buffer_size, _SHARE_SCAN)
    while True:
        batch = tx.pending_update_records(project_id, None, scan)
        stale = [u.id for u in batch if version - u.base_version > settings.max_staleness]
        if not stale:
            return select_by_share(batch, settings, settings.buffer_size)[0]
        tx.drop_updates(stale)
        crediting.settle(tx, stale, grant=True, now=now)


def claim_ready(ctx: ServiceContext, project: ProjectRecord) -> AggregationClaim | None:
    """Claim the project's next aggregation if its round is complete (one transaction)."""
    now = ctx.clock()
    if not _may_be_ready(ctx, project, now):
        return None
    if privacy.close_if_spent(ctx, project, ctx.notifier.notify):
        return None
    with ctx.store.write() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status in ENDED or tx.aggregation_running(project.id):
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
            answered = tx.pending_update_records(project.id, version, None)
            updates, over_share = select_by_share(answered, settings, len(answered))
            if over_share:  # a network over its share: their work counts, not their say
                tx.drop_updates([u.id for u in over_share])
                crediting.settle(tx, [u.id for u in over_share], grant=True, now=now)
        else:
            if tx.pending_updates(project.id) < settings.buffer_size:
                return None
            updates = _oldest_fresh_updates(tx, project.id, version, settings, now)
            if len(updates) < settings.buffer_size:
                return None
        try:
            claim = tx.claim_aggregation(
                project.id, version, process_owner(), now, [u.id for u in updates]
            )
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
    base_strategy_state = None
    if base.strategy_state_digest:
        base_strategy_state = load_tensors(ctx.blobs.read(base.strategy_state_digest))
    vetting = judge(ctx, project, rt, claim.updates)
    if not vetting.kept:
        _keep_all_out(ctx, project, claim, vetting)
        return None
    clip_norm = vetting.clip_norm
    dp_clip = privacy.update_clip_norm(settings, base)
    noisy_aggregates = 0  # user-level privacy: each one computed is counted

    def updates(chosen: list[UpdateRecord]) -> Iterator[ClientUpdate]:
        for u in chosen:
            delta = decode_update(
                ctx.blobs.read(u.payload_digest),
                rt.spec,
                max_norm=settings.max_update_norm,
                expected_codec=settings.codec,
            )
            if clip_norm is not None:
                delta = clip_delta(delta, u.norm, clip_norm)
            staleness = claim.base_version - u.base_version
            factor = 1.0
            if settings.mode == "async":
                factor = staleness_factor(staleness, exponent=settings.staleness_exponent)
            within = u.metrics.get("dp_within_clip")
            yield ClientUpdate(
                delta,
                u.num_examples,
                u.max_examples,
                factor,
                u.client_id,
                within_clip=None if within is None else within >= 0.5,
            )

    test = rt.test_data()

    def aggregate_of(chosen: list[UpdateRecord]) -> Aggregate:
        nonlocal noisy_aggregates
        strategy = build_strategy(project.strategy["name"], project.strategy.get("params") or {})
        if dp_clip is not None:
            strategy = privacy.wrap(strategy, settings, dp_clip)
            noisy_aggregates += 1
        if base_strategy_state is not None:
            strategy.load_state_tensors(dict(base_strategy_state))
        state = strategy.aggregate(base_state, updates(chosen))
        metrics = {} if test is None else evaluate_state(rt.recipe, rt.hparams, state, test)
        return Aggregate(state, strategy, metrics)

    gated = gate(
        aggregate_of,
        vetting.kept,
        reference_loss(_recent_losses(ctx, project, claim.base_version)),
        settings.max_loss_regression,
        search=dp_clip is None,
    )
    vetting = vetting.without(gated.kept, gated.verdicts)
    if gated.aggregate is None:
        _keep_all_out(ctx, project, claim, vetting, noisy_aggregates)
        return None
    new_state, strategy = gated.aggregate.state, gated.aggregate.strategy
    metrics = dict(gated.aggregate.metrics)
    # The median: one contributor's report cannot move it far.
    losses = [u.metrics["loss_after"] for u in vetting.kept if "loss_after" in u.metrics]
    if losses:
        metrics["client_loss_after"] = statistics.median(losses)
    # Examples trained into the model so far (the page shows an LM's tokens from it).
    metrics[EXAMPLES_TRAINED] = float(base.metrics.get(EXAMPLES_TRAINED, 0.0)) + sum(
        min(u.num_examples, u.max_examples or u.num_examples) for u in vetting.kept
    )
    if isinstance(strategy, DPFedAvg):  # the bound the next version's updates are clipped to
        metrics[privacy.CLIP_NORM_METRIC] = strategy.clip_norm
    metrics = _finite_metrics(metrics)
    digest = ctx.blobs.put(encode_model(new_state))
    state_tensors = strategy.state_tensors()
    state_digest = None
    if state_tensors:
        state_digest = ctx.blobs.put(save_tensors(state_tensors))
    now = ctx.clock()
    next_version = claim.base_version + 1
    manifest = model_manifest(  # names the parent and the updates aggregated (provenance)
        project.name,
        next_version,
        digest,
        now,
        parent=base,
        updates=vetting.kept,
        strategy_state_digest=state_digest,
    )
    record = VersionRecord(
        project_id=project.id,
        version=next_version,
        digest=digest,
        created_at=now,
        signature=sign_model(ctx.keys.load(project.name), manifest),
        metrics=metrics,
        updates=len(vetting.kept),
        contributors=len({u.client_id for u in vetting.kept}),
        strategy_state_digest=state_digest,
        parent_digest=manifest.parent_digest,
        parent_manifest_digest=manifest.parent_manifest_digest,
        updates_root=manifest.updates_root,
        leaves=update_leaves(vetting.kept),
    )
    with ctx.store.write() as tx:
        if tx.aggregation_owner(claim.id) != claim.owner:
            log.warning("aggregation %s of %s was taken over; discarding", claim.id, project.name)
            return None
        vetting_record(tx, claim.id, vetting, now)
        privacy.record_aggregates(tx, project.id, settings, noisy_aggregates, now)
        tx.finish_aggregation(claim, record, [])
    _count_kept_out(ctx, project, vetting)
    privacy.close_if_spent(ctx, project, ctx.notifier.notify)
    finishing.finish_if_done(ctx, project, ctx.notifier.notify)
    ctx.metrics.aggregation_seconds.labels(project=project.name).observe(
        time.perf_counter() - started
    )
    ctx.metrics.model_version.labels(project=project.name).set(next_version)
    ctx.notifier.notify(project.name)
    log.info("project %s: published version %d (%s)", project.name, next_version, metrics)
    return next_version


def _recent_losses(ctx: ServiceContext, project: ProjectRecord, base: int) -> list[float | None]:
    """Held-out losses of the versions up to ``base``, the last few, oldest first."""
    first = max(0, base - REFERENCE_VERSIONS + 1)
    with ctx.store.read() as tx:
        versions = [tx.version(project.id, n) for n in range(first, base + 1)]
    losses: list[float | None] = []
    for v in versions:
        loss = v.metrics.get("loss") if v is not None else None
        losses.append(float(loss) if isinstance(loss, int | float) else None)
    return losses


def _keep_all_out(
    ctx: ServiceContext,
    project: ProjectRecord,
    claim: AggregationClaim,
    vetting: Vetting,
    noisy_aggregates: int = 0,
) -> None:
    """Every update of the claim was kept out: record why, publish nothing, end the claim
    (and count the noisy aggregates computed on the way against the privacy budget)."""
    with ctx.store.write() as tx:
        if tx.aggregation_owner(claim.id) != claim.owner:
            return
        now = ctx.clock()
        vetting_record(tx, claim.id, vetting, now)
        privacy.record_aggregates(
            tx, project.id, ctx.runtime(project).settings, noisy_aggregates, now
        )
        tx.release_stale_claims(functools.partial(_owned_by, claim.owner))
        if ctx.runtime(project).settings.mode == "sync":  # they may train this round again
            for u in claim.updates:
                if vetting.verdicts.get(u.id, ("",))[0] == "version_gate":
                    tx.set_task_status(u.task_id, "cancelled")
    _count_kept_out(ctx, project, vetting)
    log.warning("project %s: every update of aggregation %s was kept out", project.name, claim.id)


def _count_kept_out(ctx: ServiceContext, project: ProjectRecord, vetting: Vetting) -> None:
    for code, _detail in vetting.verdicts.values():
        ctx.metrics.updates_kept_out.labels(project=project.name, reason=code).inc()


def _finite_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """What a version record may hold: a diverged evaluation or absurd client reports
    (1e308 averages to infinity) are left out rather than break the record."""
    return {
        k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)
    }


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


def _owned_by(expected: str, owner: str, _claimed_at: float) -> bool:
    return owner == expected
