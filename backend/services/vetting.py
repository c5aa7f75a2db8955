"""What may go into one aggregate: share limits, norm outliers, spot checks.

``select_by_share`` picks, oldest first, the updates of an aggregate so that no contributor
(``max_client_share``) and no network (``max_network_share``) supplies more than its share.
``vet`` then keeps out the updates whose norm is far above the aggregate's median
(``outlier_norm_ratio``, reason ``norm_outlier``) and says to what norm the rest are
clipped (``clip_norm_ratio`` x the median): the defences of ``federated.screening`` on the
norms recorded at upload, so no payload is decoded to decide. ``judge`` adds the spot
checks (``backend.services.replication``) and ``record`` writes every verdict, settles
credit and revokes a cheat's, in the transaction that publishes the version.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from backend.services import crediting
from backend.services.admin import ban_in_tx
from backend.services.context import ProjectRuntime, ServiceContext
from backend.services.replication import CheckOutcome, spot_check
from backend.settings import ProjectSettings
from backend.store import ActionRecord, ProjectRecord, UpdateRecord, WriteTx
from federated.replication import should_ban
from federated.screening import norm_outliers


def select_by_share(
    updates: Iterable[UpdateRecord], settings: ProjectSettings, size: int
) -> tuple[list[UpdateRecord], list[UpdateRecord]]:
    """(at most ``size`` updates within the share limits of an aggregate of ``size``, in
    order; the ones passed over because their contributor or network had its share)."""
    client_cap = settings.client_cap(size)
    network_cap = settings.per_source_cap(settings.max_network_share, size)
    per_client: Counter[str] = Counter()
    per_network: Counter[str] = Counter()
    chosen: list[UpdateRecord] = []
    passed_over: list[UpdateRecord] = []
    for update in updates:
        if len(chosen) == size:
            break
        net = update.source_net or ""
        if per_client[update.client_id] >= client_cap or (net and per_network[net] >= network_cap):
            passed_over.append(update)
            continue
        per_client[update.client_id] += 1
        if net:
            per_network[net] += 1
        chosen.append(update)
    return chosen, passed_over


@dataclass(frozen=True)
class Vetting:
    """The updates that go in, why the others do not, and the norm the ones in are clipped to."""

    kept: list[UpdateRecord]
    verdicts: dict[str, tuple[str, str]]  # update id -> (reason code, sentence)
    clip_norm: float | None
    checks: tuple[CheckOutcome, ...] = ()

    def without(self, kept: list[UpdateRecord], verdicts: dict[str, tuple[str, str]]) -> Vetting:
        """This vetting with ``kept`` left in and ``verdicts`` added (the version gate's)."""
        return Vetting(kept, {**self.verdicts, **verdicts}, self.clip_norm, self.checks)


def vet(updates: list[UpdateRecord], settings: ProjectSettings) -> Vetting:
    """Keep out the norm outliers of one aggregate; the norm the rest are clipped to."""
    known = [u for u in updates if u.norm is not None]
    norms = [float(u.norm) for u in known if u.norm is not None]
    if len(known) < 3:
        return Vetting(list(updates), {}, None)
    median = statistics.median(norms)
    out = {known[i].id for i in norm_outliers(norms, settings.outlier_norm_ratio)}
    verdicts = {
        u.id: (
            "norm_outlier",
            f"its L2 norm {u.norm:.4g} is over {settings.outlier_norm_ratio:g} x the median "
            f"{median:.4g} of the {len(known)} updates aggregated with it",
        )
        for u in known
        if u.id in out
    }
    clip = settings.clip_norm_ratio * median if settings.clip_norm_ratio > 0 else None
    return Vetting([u for u in updates if u.id not in out], verdicts, clip)


def judge(
    ctx: ServiceContext, project: ProjectRecord, rt: ProjectRuntime, updates: list[UpdateRecord]
) -> Vetting:
    """``vet``, then spot-check what it kept: a failed check keeps its update out too."""
    vetting = vet(updates, rt.settings)
    checks = spot_check(ctx, project, rt, vetting.kept)
    tolerance = rt.settings.replication_tolerance
    failed = {c.update.id: c.verdict(tolerance) for c in checks if not c.passed}
    return Vetting(
        kept=[u for u in vetting.kept if u.id not in failed],
        verdicts={**vetting.verdicts, **failed},
        clip_norm=vetting.clip_norm,
        checks=tuple(checks),
    )


def record(tx: WriteTx, claim_id: int, vetting: Vetting, now: float) -> None:
    """Write the verdicts and the checks, settle credit, and revoke the credit a caught
    contributor earned since its last clean check (before the records change)."""
    for check in vetting.checks:
        if not check.passed:
            client = tx.client(check.update.client_id)
            since = client.last_check_passed_at if client is not None else None
            crediting.revoke_since(tx, check.update.client_id, since or 0.0, now)
    tx.reject_updates(claim_id, vetting.verdicts)
    for check in vetting.checks:
        tx.record_check(check.update.client_id, check.update.id, check.error, check.passed, now)
    crediting.settle(tx, [u.id for u in vetting.kept], grant=True, now=now)
    crediting.settle(tx, list(vetting.verdicts), grant=False, now=now)
    for client_id in {c.update.client_id for c in vetting.checks if not c.passed}:
        _ban_if_caught_again(tx, client_id, now)


def _ban_if_caught_again(tx: WriteTx, client_id: str, now: float) -> None:
    """A contributor whose failed checks outweigh its clean record is banned by the
    coordinator as an organiser's ``ban --revoke`` would (the action is logged and shown):
    checking a known cheat on every upload would cost as much again as all its uploads."""
    client = tx.client(client_id)
    if (
        client is None
        or client.banned_at is not None
        or not should_ban(client.checks_passed, client.checks_failed)
    ):
        return
    reason = (
        f"failed {client.checks_failed} spot checks (re-executions that did not match) and "
        f"passed {client.checks_passed}: banned by the coordinator"
    )
    detail = "; ".join(ban_in_tx(tx, client, reason, now, revoke=True))
    tx.insert_action(ActionRecord(0, client.project_id, now, "ban", client_id, reason, detail))
