"""Spot checks: the coordinator re-executes a share of the updates it aggregates.

For built-in data the coordinator holds everything a task used (the base version, the
shard, the task's hyperparameters and seed), so it trains the task again on CPU and
compares (``federated.replication``). Who is checked follows their record: newcomers and
anyone who failed a check on every update, the others down to ``spot_check_rate``. A
failed check keeps the update out of its aggregate (verdict ``replication_mismatch``),
revokes the credit of every update since the contributor's last clean check and counts
against its record. The work spent is counted in ``barnraise_verification_gflop_total``.

Local-data projects cannot be checked this way (the coordinator has not got the data);
handing a task to a second contributor, BOINC-style, is the way for them and is not built.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass

from backend import credit as credit_math
from backend.services.context import ProjectRuntime, ServiceContext
from backend.store import ProjectRecord, UpdateRecord
from federated.codec import decode_model, decode_update
from federated.replication import (
    check_probability,
    chosen_for_check,
    reexecute,
    relative_difference,
)
from federated.tensors import StateDict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckOutcome:
    """One re-executed update: how far it was from its re-execution, and the verdict."""

    update: UpdateRecord
    error: float
    passed: bool
    gflop: float

    def verdict(self, tolerance: float) -> tuple[str, str]:
        return (
            "replication_mismatch",
            f"the coordinator trained this task again and got a delta {self.error:.3g} away "
            f"(relative L2; the tolerance is {tolerance:g}): the upload is not this task's "
            "training",
        )


def spot_check(
    ctx: ServiceContext, project: ProjectRecord, rt: ProjectRuntime, updates: list[UpdateRecord]
) -> list[CheckOutcome]:
    """Re-execute the updates the draw picks and compare; the outcomes, in order."""
    settings = rt.settings
    if settings.spot_check_rate <= 0 or rt.recipe.data_mode != "builtin" or not updates:
        return []
    with ctx.store.read() as tx:
        clients = {u.client_id: tx.client(u.client_id) for u in updates}
        tasks = {u.id: tx.task(u.task_id) for u in updates}
        bases = {u.base_version: tx.version(project.id, u.base_version) for u in updates}
    failed_here: set[str] = set()
    outcomes: list[CheckOutcome] = []
    for update in updates:
        client, task, base = clients[update.client_id], tasks[update.id], bases[update.base_version]
        if client is None or task is None or base is None:
            continue
        failed = client.checks_failed + (1 if update.client_id in failed_here else 0)
        probability = check_probability(client.checks_passed, failed, settings.spot_check_rate)
        if not chosen_for_check(update.id, probability):
            continue
        hparams = rt.recipe.resolve_hparams(task.manifest.get("hparams") or {})
        try:
            base_state = rt.model_state(
                base.digest, functools.partial(_decode_model, ctx, rt, base.digest)
            )
            reference = reexecute(
                rt.recipe,
                hparams,
                base_state,
                rt.recipe.load_shard(hparams, task.shard_index),
                task_id=task.id,
                max_examples=task.max_examples,
            )
            uploaded = decode_update(
                ctx.blobs.read(update.payload_digest), rt.spec, expected_codec=settings.codec
            )
            error = relative_difference(uploaded, reference)
        except Exception:
            log.exception("could not spot-check update %s of %s", update.id, project.name)
            continue
        gflop = credit_math.update_credit(
            update.num_examples, task.max_examples, rt.flops_per_example, hparams
        )
        ctx.metrics.verification_gflop.labels(project=project.name).inc(gflop)
        passed = error <= settings.replication_tolerance
        if not passed:
            failed_here.add(update.client_id)
        outcomes.append(CheckOutcome(update, error, passed, gflop))
    return outcomes


def _decode_model(ctx: ServiceContext, rt: ProjectRuntime, digest: str) -> StateDict:
    return decode_model(ctx.blobs.read(digest), rt.spec)
