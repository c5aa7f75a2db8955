"""Projects that finish: a declared end, and what reaching it does.

A project may declare when it is done (``ProjectSettings.finish_*``): a number of
versions, a held-out metric reached, the compute its model took, or a date. It is checked
after each version is published (``finish_if_done``, from the aggregation path) and, for
the date, on each pass of the worker; the organiser may also finish a project by hand
(``barnraise-backend project finish``). Finishing is for good: the project's status
becomes ``finished``, its current version is its final model, leases and joins answer
410 ``project_finished`` (contributors stop asking and say so), the leases out are
cancelled, and the updates that arrived too late for the final model are dropped with
their credit granted, as stale updates are: honest work the project no longer needs.
The reason goes in the organiser's action log, which the page shows.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable

from backend.errors import HTTPError, api_error
from backend.services import crediting
from backend.services.context import ServiceContext
from backend.settings import ProjectSettings, metric_target
from backend.store import ActionRecord, ProjectRecord, VersionRecord

log = logging.getLogger(__name__)

FINISHED = "finished"
ENDED = frozenset({"closed", FINISHED})
"""Statuses no project leaves: it takes no work and no members again."""
EXAMPLES_TRAINED = "examples_trained"
_COMPARE = {">=": operator.ge, "<=": operator.le}


def finished_error(project: str) -> HTTPError:
    """What a lease, an upload or a join of a finished project is answered."""
    return api_error(
        "project_finished",
        f"project {project!r} has finished training: its model is final and it needs no "
        "more work. Thank you!",
    )


def declares_an_end(settings: ProjectSettings) -> bool:
    return bool(
        settings.finish_after_versions
        or settings.finish_at_metric
        or settings.finish_compute_gflop
        or settings.finish_at
    )


def end_reached(
    settings: ProjectSettings, version: VersionRecord, flops_per_example: float, now: float
) -> str | None:
    """Why the project is done at ``version``, in words for the page; None if it is not."""
    if settings.finish_after_versions and version.version >= settings.finish_after_versions:
        return f"{version.version} versions published (the project's end: {settings.finish_after_versions})"
    target = metric_target(settings.finish_at_metric)
    if target is not None and version.version > 0:
        name, op, wanted = target
        value = version.metrics.get(name)
        if isinstance(value, int | float) and _COMPARE[op](float(value), wanted):
            return (
                f"held-out {name} {float(value):.4g} at version {version.version} ({op} {wanted:g})"
            )
    if settings.finish_compute_gflop:
        examples = version.metrics.get(EXAMPLES_TRAINED)
        gflop = float(examples or 0) * flops_per_example / 1e9
        if gflop >= settings.finish_compute_gflop:
            return (
                f"{gflop:,.0f} GFLOP of training in the model "
                f"(the project's budget: {settings.finish_compute_gflop:,.0f})"
            )
    end = settings.finish_at_s
    if end is not None and now >= end:
        return f"its end date, {settings.finish_at}"
    return None


def finish_if_done(
    ctx: ServiceContext, project: ProjectRecord, notify: Callable[[str], None]
) -> bool:
    """Finish the project if its declared end is reached at its current version; True if
    this call finished it."""
    rt = ctx.runtime(project)
    if project.status in ENDED or not declares_an_end(rt.settings):
        return False
    with ctx.store.read() as tx:
        fresh = tx.project_by_id(project.id)
        version = tx.version(project.id, fresh.current_version) if fresh else None
    if fresh is None or version is None:
        return False
    reason = end_reached(rt.settings, version, rt.flops_per_example, ctx.clock())
    if reason is None:
        return False
    return finish(ctx, fresh, reason, notify)


def finish(
    ctx: ServiceContext, project: ProjectRecord, reason: str, notify: Callable[[str], None]
) -> bool:
    """End ``project`` for good with its current version as the final model; False if it
    had ended already (closed or finished)."""
    now = ctx.clock()
    with ctx.store.write() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status in ENDED:
            return False
        tx.set_project_status(project.id, FINISHED)
        tx.cancel_round_leases(project.id, fresh.current_version)
        late = [u.id for u in tx.pending_update_records(project.id, None, None)]
        if late:
            tx.drop_updates(late)
            crediting.settle(tx, late, grant=True, now=now)
        tx.insert_action(
            ActionRecord(
                id=0,
                project_id=project.id,
                at=now,
                action="finish",
                target=str(fresh.current_version),
                reason=reason[:500],
            )
        )
    log.warning(
        "project %s finished at version %d: %s", project.name, fresh.current_version, reason
    )
    notify(project.name)
    return True
