"""Retention: an update's payload is deleted some versions after its fate was settled.

The rule. An update's fate is settled at a version: the one its aggregation claim was to
publish (the claim's base + 1) when it was aggregated, or kept out of that aggregate
(``rejected``: a norm outlier, a failed spot check, the version gate) or quarantined; its
own base + 1 when it never was claimed (``dropped`` as stale or over its network's share,
set aside by the organiser). Once the project's current version is
``keep_payload_versions`` (K) past that version, the payload blob goes; the update's row,
payload digest and signed upload manifest stay, and so do every version's model and
strategy state. K = 0 keeps every payload.

What is never pruned: a pending update (waiting for its round or buffer) or a claimed one
(being aggregated: its spot check re-executes the task and compares with the payload, and
the aggregation decodes it), whatever its age; and a blob that an update still keeping
its payload names (the blob store is content-addressed and shared by every project) or a
version names. Nothing after settlement reads a payload: revoking credit and rolling back
use rows and model blobs only, the duplicate-payload screen uses the payload digest of
the rows, and an inclusion proof is (update id, payload digest) leaves.

Provenance after pruning (``backend.services.provenance.ProvenanceService.audit``): the
chain, each version's updates root over its stored (id, digest) leaves, and each update's
contributor signature over its upload manifest naming that digest are all checked as
before; only re-hashing the bytes is gone, and the audit counts such payloads as pruned
instead of reporting them missing. A payload missing without being marked is still a
problem.

Crash safety: mark, then delete. A pass first marks the updates whose payloads go
(``pruning``) in one durable write, so from then on the database does not promise them;
then it deletes their blobs (fsyncing the folders) and notes them ``pruned``. A crash
between the two leaves rows ``pruning`` with their blobs still there (never the reverse,
a row promising a blob that is gone); every pass first finishes the ``pruning`` rows of
its project, and the worker's first pass after a start does so for every project. Each
step is idempotent, so two processes sharing the data folder may both run it.

The aggregation worker runs ``prune`` after each version it publishes.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.services.context import ServiceContext
from backend.settings import ProjectSettings
from backend.store import ProjectRecord

BATCH = 256
"""Updates marked (one write transaction) and blobs deleted per step: short writes."""

MAX_PER_PASS = 4096
"""Updates one pass marks at most: a backlog (the payloads a coordinator kept before
retention existed) is worked off over several versions, never in one long pause."""


@dataclass(frozen=True)
class Pruned:
    """What one pass did: updates whose payload it gave up, and blob files it deleted."""

    marked: int
    deleted: int


def settled_bound(current_version: int, keep: int) -> int | None:
    """Payloads of updates settled at this version or before may go; None: none may."""
    if keep <= 0:
        return None
    bound = current_version - keep
    return bound if bound >= 1 else None  # no update is settled at version 0


def prune(ctx: ServiceContext, project: ProjectRecord, *, limit: int = MAX_PER_PASS) -> Pruned:
    """One pass over ``project``: finish what an interrupted pass marked, then give up
    and delete the payloads the rule lets go (at most ``limit``)."""
    deleted = _finish(ctx, project)
    marked = 0
    keep = ProjectSettings.from_dict(project.settings).keep_payload_versions
    with ctx.store.read() as rtx:  # most projects most of the time: nothing may go yet
        fresh = rtx.project_by_id(project.id)
    if fresh is None or settled_bound(fresh.current_version, keep) is None:
        return Pruned(marked, deleted)
    while marked < limit:
        with ctx.store.write() as tx:  # durable: the mark precedes any deletion
            fresh = tx.project_by_id(project.id)
            bound = None if fresh is None else settled_bound(fresh.current_version, keep)
            if bound is None:
                break
            step = min(BATCH, limit - marked)
            n = tx.mark_payloads_pruning(project.id, bound, ctx.clock(), step)
        marked += n
        if n:
            deleted += _finish(ctx, project)
        if n < step:
            break
    return Pruned(marked, deleted)


def _finish(ctx: ServiceContext, project: ProjectRecord) -> int:
    """Delete the blobs of the project's ``pruning`` updates that nothing else still names,
    then note them ``pruned``; how many blob files were removed."""
    deleted = 0
    while True:
        with ctx.store.read() as tx:
            rows = tx.payloads_pruning(project.id, BATCH)
            in_use = tx.blobs_in_use([digest for _id, digest in rows]) if rows else set()
        if not rows:
            return deleted
        deleted += ctx.blobs.delete(sorted({d for _id, d in rows} - in_use))
        # Not durable: lost with the power, the rows are finished again (a no-op delete).
        with ctx.store.write(durable=False) as tx:
            tx.set_payloads_pruned([uid for uid, _digest in rows])
        if len(rows) < BATCH:
            return deleted
