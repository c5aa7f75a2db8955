"""Organiser actions: ban and unban a contributor, revoke an update's credit, roll the model
back to an earlier version (``barnraise-backend ban``, ``unban``, ``revoke``, ``rollback``).

Each action is written to the project's action log (``ActionRecord``) in the transaction
of its effect, so the log can neither claim what did not happen nor miss what did; the
project page and ``Stats.actions`` show the log, reasons included, to every volunteer.

- **ban** stops a contributor for good: lease, heartbeat, upload, ``me`` and joining again
  with the same key answer 403 ``banned`` (``backend.services.tasks.check_not_banned``),
  and its live leases end. A new key is a new identity: a ban is of a key, not a person.
  With ``revoke`` it also loses every credit it earned (granted: revoked; pending:
  withheld) and its updates not aggregated yet are set aside (verdict ``banned``): work
  already in a published version stays in the model; roll back to take it out.
- **unban** lifts the ban; what it lost stays lost.
- **revoke** takes back the credit of one update (granted: revoked; pending: withheld, and
  the update is set aside with verdict ``revoked`` unless it is being aggregated now).
- **rollback** publishes a new version (current + 1) whose model and strategy state are an
  earlier version's. It is signed like any version, naming the current version as its
  parent and no updates, so the chain of versions stays whole and auditable
  (``barnraise-backend verify``): history is added to, never rewritten. Leases and pending
  updates trained on the versions rolled back are cancelled and dropped (their credit is
  granted: the lost work is the organiser's decision, not the contributors' fault).
"""

from __future__ import annotations

import dataclasses

from backend.services import crediting
from backend.services.context import ServiceContext
from backend.services.models import model_manifest, sign_model
from backend.store import (
    ActionRecord,
    ClientRecord,
    ProjectRecord,
    UpdateRecord,
    VersionRecord,
    WriteTx,
)
from federated.protocol.names import clean_text
from federated.signing import SigningKey

MAX_REASON_CHARS = 500
"""An action's reason is shown on the public page: a sentence, not an essay."""

MIN_PREFIX_CHARS = 4
"""A client or update id may be given by a unique prefix this long (the page shows 6)."""


class AdminError(ValueError):
    """An action that cannot be taken as asked; the message says why and what to do."""


def clean_reason(reason: str) -> str:
    """The reason as stored and shown: cleaned like a display name, required, bounded."""
    text = clean_text(reason or "").strip()
    if not text:
        raise AdminError("give a reason (--reason): it is recorded and shown on the project page")
    if len(text) > MAX_REASON_CHARS:
        raise AdminError(f"the reason is {len(text)} characters; at most {MAX_REASON_CHARS}")
    return text


def _gflop(value: float) -> str:
    return f"{value:,.4g} GFLOP"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _by_prefix(ref: str, ids: list[str], what: str, project: str) -> str:
    ref = ref.strip().lstrip("#")
    if ref in ids:
        return ref
    found = [i for i in ids if i.startswith(ref)] if len(ref) >= MIN_PREFIX_CHARS else []
    if len(found) == 1:
        return found[0]
    if not found:
        raise AdminError(
            f"project {project!r} has no {what} {ref!r} (give its id, or a unique prefix of "
            f"at least {MIN_PREFIX_CHARS} characters, as the page shows it)"
        )
    raise AdminError(f"{ref!r} is the start of {len(found)} {what} ids: give more of it")


def find_client(tx: WriteTx, project: ProjectRecord, ref: str) -> ClientRecord:
    """The project's contributor ``ref`` names: its id, or a unique prefix (``#`` allowed)."""
    clients = {c.id: c for c in tx.clients(project.id)}
    return clients[_by_prefix(ref, list(clients), "contributor", project.name)]


def find_update(tx: WriteTx, project: ProjectRecord, ref: str) -> UpdateRecord:
    """The project's update ``ref`` names: its id, or a unique prefix."""
    update = tx.update(ref.strip())
    if update is not None and update.project_id == project.id:
        return update
    updates = {u.id: u for u in tx.updates(project.id)}
    return updates[_by_prefix(ref, list(updates), "update", project.name)]


def describe(client: ClientRecord) -> str:
    return f"{client.display_name} ({client.id})"


class AdminService:
    """The organiser's actions on a project, each recorded with its effect."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def _log(self, tx: WriteTx, record: ActionRecord) -> ActionRecord:
        return dataclasses.replace(record, id=tx.insert_action(record))

    def ban(
        self, project: ProjectRecord, client_id: str, reason: str, *, revoke: bool = False
    ) -> ActionRecord:
        """Ban a contributor (and with ``revoke`` take back all its credit); see the module."""
        reason = clean_reason(reason)
        ctx = self._ctx
        now = ctx.clock()
        with ctx.store.write() as tx:
            client = find_client(tx, project, client_id)
            parts: list[str] = []
            if client.banned_at is None:
                parts += ban_in_tx(tx, client, reason, now, revoke=False)
            elif not revoke:
                raise AdminError(
                    f"{describe(client)} is banned already ({client.ban_reason}); add --revoke "
                    "to take its credit back too"
                )
            else:
                parts.append(f"{client.display_name} was banned already")
            if revoke:
                parts += _revoke_all(tx, client, reason, now)
            record = ActionRecord(0, project.id, now, "ban", client.id, reason, "; ".join(parts))
            record = self._log(tx, record)
        ctx.notifier.notify(project.name)  # its lease capacity is free again
        ctx.wake_worker()
        return record

    def unban(self, project: ProjectRecord, client_id: str, reason: str) -> ActionRecord:
        """Lift a ban: the contributor may lease again; what it lost stays lost."""
        reason = clean_reason(reason)
        ctx = self._ctx
        now = ctx.clock()
        with ctx.store.write() as tx:
            client = find_client(tx, project, client_id)
            if client.banned_at is None:
                raise AdminError(f"{describe(client)} is not banned")
            tx.set_client_ban(client.id, None, None)
            detail = f"lifted the ban on {client.display_name} (it was: {client.ban_reason})"
            record = self._log(
                tx, ActionRecord(0, project.id, now, "unban", client.id, reason, detail)
            )
        ctx.notifier.notify(project.name)
        return record

    def revoke_update(self, project: ProjectRecord, update_id: str, reason: str) -> ActionRecord:
        """Take back one update's credit: granted → revoked, pending → withheld (and the
        update set aside with verdict ``revoked`` if it is not being aggregated now)."""
        reason = clean_reason(reason)
        ctx = self._ctx
        now = ctx.clock()
        with ctx.store.write() as tx:
            update = find_update(tx, project, update_id)
            client = tx.client(update.client_id)
            who = describe(client) if client is not None else update.client_id
            if update.credit_state == "granted":
                taken = crediting.revoke(tx, update.client_id, [update], now)
                parts = [f"revoked {_gflop(taken)} granted to {who}"]
                versions = sorted({v for v, _u, _d in tx.leaves_matching(project.id, update.id)})
                if versions:
                    parts.append(
                        f"it stays in the model of version {versions[0]}: roll back to take it out"
                    )
            elif update.credit_state == "pending":
                parts = [f"withheld {_gflop(update.credit)} pending for {who}"]
                set_aside = tx.set_aside_updates(
                    [update.id], "revoked", f"revoked by the organiser: {reason}", now
                )
                tx.settle_credit([update.id], "withheld")
                if set_aside:
                    parts.append("set it aside: it goes into no version")
                else:
                    parts.append(
                        "it is being aggregated now and may still go into the next version"
                    )
            else:
                raise AdminError(
                    f"update {update.id} has no credit to revoke: its credit is "
                    f"{update.credit_state}"
                )
            detail = "; ".join(parts)
            record = self._log(
                tx, ActionRecord(0, project.id, now, "revoke", update.id, reason, detail)
            )
        ctx.wake_worker()
        return record

    def rollback(self, project: ProjectRecord, to_version: int, reason: str) -> ActionRecord:
        """Publish version current + 1 with version ``to_version``'s model; see the module."""
        reason = clean_reason(reason)
        ctx = self._ctx
        now = ctx.clock()
        key = ctx.keys.load(project.name)
        with ctx.store.write() as tx:
            fresh = tx.project_by_id(project.id)
            assert fresh is not None
            current = fresh.current_version
            target = tx.version(project.id, to_version) if 0 <= to_version <= current else None
            if target is None:
                raise AdminError(
                    f"project {project.name!r} has no version {to_version}: its versions are "
                    f"0 to {current}"
                )
            if to_version == current:
                raise AdminError(
                    f"version {to_version} is the current version of {project.name!r}: there "
                    "is nothing to roll back"
                )
            if not ctx.blobs.exists(target.digest):
                raise AdminError(f"the model of version {to_version} is not stored any more")
            if tx.aggregation_running(project.id):
                raise AdminError(
                    f"an aggregation of {project.name!r} is running; roll back once it has "
                    "published its version (seconds, usually)"
                )
            parent = tx.version(project.id, current)
            assert parent is not None
            version = _rollback_version(project, parent, target, now, key)
            if not tx.publish_version(version, current):
                raise AdminError("the current version changed meanwhile; try again")
            cancelled = sum(
                tx.cancel_round_leases(project.id, v) for v in range(to_version + 1, current + 1)
            )
            stale = [
                u.id
                for u in tx.pending_update_records(project.id, None, None)
                if u.base_version > to_version
            ]
            tx.drop_updates(stale)
            crediting.settle(tx, stale, grant=True, now=now)
            detail = (
                f"published version {version.version} with the model of version {to_version} "
                f"({target.digest[:12]}…) after version {current}; cancelled "
                f"{_plural(cancelled, 'lease')} and dropped {_plural(len(stale), 'update')} "
                f"trained on versions after {to_version} (their credit granted)"
            )
            record = self._log(
                tx, ActionRecord(0, project.id, now, "rollback", str(to_version), reason, detail)
            )
        ctx.metrics.model_version.labels(project=project.name).set(version.version)
        ctx.notifier.notify(project.name)  # long polls: a new version to train from
        ctx.wake_worker()
        return record

    def actions(self, project: ProjectRecord, limit: int | None = None) -> list[ActionRecord]:
        """The project's action log, newest first."""
        with self._ctx.store.read() as tx:
            return tx.actions(project.id, limit)


def ban_in_tx(
    tx: WriteTx, client: ClientRecord, reason: str, now: float, *, revoke: bool
) -> list[str]:
    """A ban's effect, in ``tx``: the client banned, its live leases ended and, with
    ``revoke``, all its credit taken back (``_revoke_all``); what it did, in phrases. The
    organiser's ``ban`` and the coordinator's own (a caught cheat) both come here."""
    tx.set_client_ban(client.id, now, reason)
    ended = tx.end_client_leases(client.project_id, client.id)
    parts = [f"banned {client.display_name}", f"ended {_plural(ended, 'lease')}"]
    if revoke:
        parts += _revoke_all(tx, client, reason, now)
    return parts


def _revoke_all(tx: WriteTx, client: ClientRecord, reason: str, now: float) -> list[str]:
    """A ban's ``--revoke``: all granted credit revoked, all pending withheld, the updates
    not claimed by an aggregation set aside (verdict ``banned``)."""
    granted = tx.client_updates(client.id, "granted")
    taken = crediting.revoke_since(tx, client.id, 0.0, now)
    pending = tx.client_updates(client.id, "pending")
    set_aside = tx.set_aside_updates(
        [u.id for u in pending if u.status == "pending"],
        "banned",
        f"its contributor was banned: {reason}",
        now,
    )
    tx.settle_credit([u.id for u in pending], "withheld")
    parts = [
        f"revoked {_gflop(taken)} of {_plural(len(granted), 'update')}",
        f"withheld {_gflop(sum(u.credit for u in pending))} of {_plural(len(pending), 'update')}",
        f"set aside {_plural(len(set_aside), 'update')} not aggregated yet",
    ]
    in_flight = len(pending) - len(set_aside)
    if in_flight:
        parts.append(f"{_plural(in_flight, 'update')} being aggregated now may still go in")
    return parts


def _rollback_version(
    project: ProjectRecord,
    parent: VersionRecord,
    target: VersionRecord,
    now: float,
    key: SigningKey,
) -> VersionRecord:
    """Version parent + 1 holding ``target``'s model and strategy state, signed with the
    current version as its parent and no updates (as ``run_aggregation`` signs one)."""
    manifest = model_manifest(
        project.name,
        parent.version + 1,
        target.digest,
        now,
        parent=parent,
        updates=(),
        strategy_state_digest=target.strategy_state_digest,
    )
    return VersionRecord(
        project_id=project.id,
        version=parent.version + 1,
        digest=target.digest,
        created_at=now,
        signature=sign_model(key, manifest),
        metrics=dict(target.metrics),  # the same model: the same evaluation
        updates=0,
        contributors=0,
        strategy_state_digest=target.strategy_state_digest,
        parent_digest=manifest.parent_digest,
        parent_manifest_digest=manifest.parent_manifest_digest,
        updates_root=manifest.updates_root,
        leaves=(),
    )
