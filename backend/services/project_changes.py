"""The organiser changes a running project's settings and hyperparameters, where it is safe.

Safe means: nothing a contributor or the record already relies on changes meaning. So the
round sizes, deadlines, shares, checks, retention, the project's end and its licence may
change; training hyperparameters may change when the model's shape and its data split stay
as they are (the next tasks carry them; a task leased before keeps, and is checked against,
the hyperparameters its signed manifest names). What may not change: the recipe, the
model's shape, the data split, the mode, the codec, the payload cap and every privacy
term (a budget is spent against them). Each change is validated as a whole, as at
creation, applies from the next lease, and goes in the organiser's action log with the
version it applies from; each process notices it on its next read of the project
(``ServiceContext.runtime`` compares what it parsed with the stored row).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from backend.services.context import ServiceContext
from backend.services.finishing import ENDED
from backend.services.projects import check_end
from backend.settings import ProjectSettings
from backend.store import ActionRecord, ProjectRecord
from federated.recipes import get_recipe
from federated.strategies import build_strategy

log = logging.getLogger(__name__)

CHANGEABLE_SETTINGS = frozenset(
    {
        "clients_per_round", "min_updates", "round_deadline_s", "overprovision", "buffer_size",
        "max_staleness", "staleness_exponent", "max_concurrent_leases", "lease_s",
        "max_update_norm", "invite_required", "fit_tasks", "max_local_examples",
        "outlier_norm_ratio", "clip_norm_ratio", "max_client_share", "max_network_share",
        "spot_check_rate", "max_loss_regression", "replication_tolerance",
        "keep_payload_versions", "finish_after_versions", "finish_at_metric",
        "finish_compute_gflop", "finish_at", "model_license",
    }
)  # fmt: skip
"""Settings an organiser may change after creation; the rest are fixed (module docstring)."""
PRIVATE_FIXED = frozenset({"clients_per_round", "min_updates", "buffer_size", "spot_check_rate"})
"""Fixed as well on a private project: the noise is calibrated to the aggregate's size, and
DP-SGD's noise is the contributor's secret, which a spot check would need."""
CHANGEABLE_HPARAMS = frozenset(
    {
        "lr", "momentum", "weight_decay", "local_epochs", "batch_size", "max_steps",
        "lr_schedule", "min_lr_ratio", "warmup_steps", "clip_norm", "optimizer", "prox_mu",
    }
)  # fmt: skip
"""Training hyperparameters that may change if the model's tensor spec stays the same."""


def change(
    ctx: ServiceContext,
    project: ProjectRecord,
    settings: Mapping[str, Any],
    hparams: Mapping[str, Any],
    reason: str,
) -> ProjectRecord:
    """Apply the change, or raise ValueError naming what may not change and why."""
    if project.status in ENDED:
        raise ValueError(
            f"project {project.name!r} has ended ({project.status}): nothing to change"
        )
    if not settings and not hparams:
        raise ValueError("nothing to change: give KEY=VALUE settings or --hp KEY=VALUE")
    old = ProjectSettings.from_dict(project.settings)
    fixed = set(settings) - CHANGEABLE_SETTINGS
    if old.privacy != "none":
        fixed |= set(settings) & PRIVATE_FIXED
    if fixed:
        name = sorted(fixed)[0]
        raise ValueError(
            f"{name} cannot change after creation (contributors or the record rely on it); "
            f"these can: {', '.join(sorted(CHANGEABLE_SETTINGS))}"
        )
    new_settings = ProjectSettings.from_dict({**project.settings, **settings})
    new_hparams = _changed_hparams(project, hparams)
    with ctx.store.read() as rtx:
        current = rtx.version(project.id, project.current_version)
    check_end(new_settings, current.metrics if current else {}, ctx.clock())
    strategy = build_strategy(
        str(project.strategy.get("name", "fedavg")), dict(project.strategy.get("params", {}))
    )
    smallest = new_settings.min_updates if new_settings.mode == "sync" else new_settings.buffer_size
    strategy.check_round_size(smallest)
    detail = _describe(project.settings, new_settings.to_dict(), project.hparams, new_hparams)
    if not detail:
        raise ValueError("nothing would change: every value given is the current one")
    now = ctx.clock()
    with ctx.store.write() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.settings != project.settings or fresh.hparams != project.hparams:
            raise ValueError("the project changed meanwhile; run the command again")
        tx.set_project_config(project.id, new_settings.to_dict(), new_hparams)
        tx.insert_action(
            ActionRecord(
                id=0,
                project_id=project.id,
                at=now,
                action="settings",
                target=str(fresh.current_version),
                reason=reason.strip()[:500],
                detail=f"{detail} (from version {fresh.current_version})"[:2000],
            )
        )
    log.warning("project %s: %s (from version %d)", project.name, detail, fresh.current_version)
    ctx.notifier.notify(project.name)  # long polls: there may be room for more leases now
    ctx.wake_worker()
    return ctx.project(project.name)


def _changed_hparams(project: ProjectRecord, hparams: Mapping[str, Any]) -> dict[str, Any]:
    fixed = sorted(set(hparams) - CHANGEABLE_HPARAMS)
    if fixed:
        raise ValueError(
            f"hyperparameter {fixed[0]} cannot change after creation (it shapes the model or "
            f"splits the data); these can: {', '.join(sorted(CHANGEABLE_HPARAMS))}"
        )
    recipe = get_recipe(project.recipe)
    merged = recipe.resolve_hparams({**project.hparams, **hparams})  # validates each value
    if recipe.tensor_spec(merged) != recipe.tensor_spec(project.hparams):
        raise ValueError("that change would change the model's shape; it cannot change")
    return dict(merged)


def _describe(
    old_settings: Mapping[str, Any],
    new_settings: Mapping[str, Any],
    old_hparams: Mapping[str, Any],
    new_hparams: Mapping[str, Any],
) -> str:
    changes = [
        f"{k} {old.get(k)!r} -> {new[k]!r}"
        for old, new in ((old_settings, new_settings), (old_hparams, new_hparams))
        for k in sorted(new)
        if old.get(k) != new[k]
    ]
    return "; ".join(changes)
