"""Differential privacy at the coordinator (issue 14): the terms a project promises, the
budget it has spent, and the check before each noisy aggregate.

Two mechanisms (``ProjectSettings.privacy``):

- **dp-sgd**, record-level: each contributor trains with DP-SGD and keeps its own
  accountant (``federated.privacy.dp_sgd``); the coordinator only shows the largest epsilon
  a contributor reported with an accepted update. The noise is the contributor's secret,
  so spot checks by re-execution are off (``ProjectSettings`` refuses them).
- **dp-fedavg**, user-level: the coordinator clips every update to the version's bound,
  adds Gaussian noise to their sum (``federated.strategies.DPFedAvg``) and counts every
  noisy aggregate it computes in the ledger (``WriteTx.record_privacy_spend``), in the
  transaction that publishes it or keeps it back. Before claiming the next aggregate it
  checks that one more still fits the budget; when it would not, the project is closed and
  says why (``privacy_budget_spent``).

Accounting assumes no amplification by sampling (sample rate 1): every version's manifest
names the updates in it, so who took part is public, and volunteers choose when they come.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from backend.services.context import ServiceContext
from backend.settings import ProjectSettings
from backend.store import ProjectRecord, ReadTx, VersionRecord, WriteTx
from federated import protocol
from federated.privacy.accounting import Spend, epsilon_spent, steps_within_budget
from federated.privacy.dp_sgd import check_dp_sgd_model
from federated.privacy.user_level import noise_to_signal
from federated.recipes import Recipe
from federated.strategies import DPFedAvg, Strategy

log = logging.getLogger(__name__)

CLIP_NORM_METRIC = "dp_clip_norm"
"""A dp-fedavg version's metrics name the bound its successor's updates are clipped to."""

USER_LEVEL_SAMPLE_RATE = 1.0
"""No amplification by sampling is claimed (module docstring)."""

FEW_VERSIONS = 10
"""A user-level budget that allows fewer noisy aggregates than this is worth a warning."""


def terms(settings: ProjectSettings) -> protocol.PrivacyTerms | None:
    """What the project promises, as every task and the project view carry it."""
    if settings.privacy == "none":
        return None
    return protocol.PrivacyTerms(
        mechanism=settings.privacy,  # type: ignore[arg-type]  # validated by ProjectSettings
        epsilon=settings.dp_epsilon,
        delta=settings.dp_delta,
        noise_multiplier=settings.dp_noise_multiplier,
        clip_norm=settings.dp_clip_norm,
        clip_quantile=settings.dp_clip_quantile if settings.privacy == "dp-fedavg" else 0.0,
    )


def check_new_project(
    settings: ProjectSettings,
    recipe: Recipe,
    hparams: Mapping[str, Any],
    strategy: Strategy,
    num_parameters: int,
) -> list[str]:
    """Refuse (ValueError) what cannot keep the promise; warn of what would not pay off."""
    if settings.privacy == "dp-sgd":
        problems = check_dp_sgd_model(recipe, hparams)
        if problems:
            raise ValueError(f"recipe {recipe.name!r} cannot train with DP-SGD: {problems[0]}")
        return []
    if settings.privacy != "dp-fedavg":
        return []
    if not strategy.streaming:
        raise ValueError(
            f"strategy {strategy.name!r} needs every single update, and user-level privacy "
            "adds noise to their sum only: choose fedavg, fedprox, fedadam, fedyogi, "
            "fedadagrad or diloco"
        )
    warnings = []
    versions = steps_within_budget(
        [],
        noise_multiplier=settings.dp_noise_multiplier,
        sample_rate=USER_LEVEL_SAMPLE_RATE,
        epsilon=settings.dp_epsilon,
        delta=settings.dp_delta,
    )
    if versions < FEW_VERSIONS:
        warnings.append(
            f"the budget (epsilon {settings.dp_epsilon:g}, delta {settings.dp_delta:g}) "
            f"allows {versions} noisy aggregate(s) at dp_noise_multiplier "
            f"{settings.dp_noise_multiplier:g}: raise the noise multiplier for more versions"
        )
    ratio = noise_to_signal(
        noise_multiplier=settings.dp_noise_multiplier,
        expected_updates=settings.dp_expected_updates,
        num_parameters=num_parameters,
    )
    if ratio > 1:
        warnings.append(
            f"with {settings.dp_expected_updates} updates per aggregate the noise on their "
            f"mean is {ratio:.1f} x the largest update the clip allows: the model will learn "
            "little. User-level privacy pays off with many contributors per aggregate: raise "
            "clients_per_round (buffer_size), or lower dp_noise_multiplier and the budget's "
            "rounds"
        )
    return warnings


def wrap(strategy: Strategy, settings: ProjectSettings, clip_norm: float) -> DPFedAvg:
    """The project's strategy under user-level privacy, clipping at ``clip_norm``."""
    adaptive = settings.dp_clip_quantile > 0
    return DPFedAvg(
        strategy,
        clip_norm=clip_norm,
        noise_multiplier=settings.dp_noise_multiplier,
        clip_quantile=settings.dp_clip_quantile,
        count_stddev=settings.dp_count_noise if adaptive else None,
    )


def update_clip_norm(settings: ProjectSettings, version: VersionRecord | None) -> float | None:
    """dp-fedavg: the bound updates on ``version`` are clipped to (the adapted one its
    aggregation wrote, else the project's first)."""
    if settings.privacy != "dp-fedavg":
        return None
    if version is not None:
        value = version.metrics.get(CLIP_NORM_METRIC)
        if isinstance(value, int | float) and value > 0:
            return float(value)
    return settings.dp_clip_norm


def _history(tx: ReadTx, project_id: int) -> list[Spend]:
    return [Spend(z, q, steps) for z, q, steps in tx.privacy_spends(project_id)]


def fits_another_aggregate(tx: ReadTx, project_id: int, settings: ProjectSettings) -> bool:
    """dp-fedavg: whether one more noisy aggregate keeps the epsilon spent within budget."""
    if settings.privacy != "dp-fedavg":
        return True
    history = [*_history(tx, project_id), _one_aggregate(settings, 1)]
    return epsilon_spent(history, settings.dp_delta) <= settings.dp_epsilon


def record_aggregates(
    tx: WriteTx, project_id: int, settings: ProjectSettings, count: int, now: float
) -> None:
    """dp-fedavg: ``count`` noisy aggregates were computed (in the transaction that
    publishes one of them, or keeps them all back)."""
    if settings.privacy == "dp-fedavg" and count > 0:
        spend = _one_aggregate(settings, count)
        tx.record_privacy_spend(
            project_id,
            now,
            noise_multiplier=spend.noise_multiplier,
            sample_rate=spend.sample_rate,
            steps=spend.steps,
        )


def record_report(
    tx: WriteTx,
    project_id: int,
    settings: ProjectSettings,
    client_id: str,
    metrics: Mapping[str, float],
    sample_rate: float,
    now: float,
) -> None:
    """dp-sgd: what a contributor reported of its own spending with an accepted update
    (``sample_rate``: its batch size over the examples it claimed)."""
    if settings.privacy != "dp-sgd" or "dp_epsilon" not in metrics:
        return
    tx.record_privacy_spend(
        project_id,
        now,
        client_id=client_id,
        noise_multiplier=settings.dp_noise_multiplier,
        sample_rate=sample_rate,
        steps=int(metrics.get("steps", 0)),
        epsilon=float(metrics["dp_epsilon"]),
    )


def _one_aggregate(settings: ProjectSettings, steps: int) -> Spend:
    return Spend(settings.dp_noise_multiplier, USER_LEVEL_SAMPLE_RATE, steps)


def spent(
    tx: ReadTx, project: ProjectRecord, settings: ProjectSettings
) -> protocol.PrivacySpent | None:
    """How much of the budget is gone, for the project view and its page."""
    if settings.privacy == "none":
        return None
    delta = settings.dp_delta
    if settings.privacy == "dp-sgd":
        epsilon, reports = tx.reported_epsilon(project.id)
        return protocol.PrivacySpent(
            epsilon=epsilon or 0.0,
            delta=delta,
            steps=reports,
            exhausted=epsilon is not None and epsilon >= settings.dp_epsilon,
        )
    history = _history(tx, project.id)
    version = tx.version(project.id, project.current_version)
    return protocol.PrivacySpent(
        epsilon=epsilon_spent(history, delta),
        delta=delta,
        steps=sum(s.steps for s in history),
        exhausted=not fits_another_aggregate(tx, project.id, settings),
        clip_norm=update_clip_norm(settings, version),
    )


def close_if_spent(
    ctx: ServiceContext, project: ProjectRecord, notify: Callable[[str], None]
) -> bool:
    """dp-fedavg: close the project when not one more aggregate fits its budget; True if
    it did. Its tasks then answer ``privacy_budget_spent``."""
    settings = ctx.runtime(project).settings
    if settings.privacy != "dp-fedavg":
        return False
    with ctx.store.read() as rtx:  # the common answer, without queueing for the writer
        if fits_another_aggregate(rtx, project.id, settings):
            return False
    with ctx.store.write() as tx:
        fresh = tx.project_by_id(project.id)
        if fresh is None or fresh.status == "closed":
            return False
        if fits_another_aggregate(tx, project.id, settings):
            return False
        tx.set_project_status(project.id, "closed")
    log.warning(
        "project %s: its privacy budget (epsilon %g, delta %g) is spent; it is closed",
        project.name,
        settings.dp_epsilon,
        settings.dp_delta,
    )
    notify(project.name)
    return True
