"""Standings: the leaderboard (contributors and teams), project stats, a contributor's own
row, and the receipt of an accepted update."""

from __future__ import annotations

from backend import credit as credit_math
from backend.errors import NotFound
from backend.services.context import ServiceContext
from backend.services.tasks import check_not_banned
from backend.store import ClientRecord, ProjectRecord, UpdateRecord
from federated import protocol

ACTIONS_SHOWN = 20
"""Organiser actions in ``Stats.actions`` (and so on the page), newest first."""


def receipt(update: UpdateRecord) -> protocol.Receipt:
    """The protocol's ``Receipt`` for an accepted update."""
    return protocol.Receipt(
        update_id=update.id,
        task_id=update.task_id,
        payload_digest=update.payload_digest,
        accepted_at=int(update.accepted_at),
        credit=update.credit,
        energy_joules=update.energy_joules,
        energy_method=update.energy_method,  # type: ignore[arg-type]
    )


class StandingsService:
    """Read-only views of who contributed what."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx

    def leaderboard(self, project: ProjectRecord) -> protocol.Leaderboard:
        now = self._ctx.clock()
        with self._ctx.store.read() as tx:
            clients = tx.clients(project.id)
        rows = [
            protocol.LeaderboardContributor(
                client_id=c.id,
                name=c.display_name,
                display_name=c.display_name,
                team=c.team,
                credit=c.credit,
                recent_credit=credit_math.recent_average(c.recent_sum, c.recent_time, now),
                updates_accepted=c.accepted,
                updates_rejected=c.rejected,
                last_seen=int(c.last_seen),
                banned=c.banned_at is not None,
                energy_joules=max(0.0, c.energy_joules),
                energy_measured_joules=max(0.0, c.energy_measured_joules),
            )
            for c in clients
        ]
        rows.sort(key=lambda r: (-r.credit, -r.updates_accepted, r.display_name))
        for rank, row in enumerate(rows, start=1):
            row.rank = rank
        teams: dict[str, protocol.LeaderboardTeam] = {}
        for row in rows:
            if not row.team:
                continue
            team = teams.setdefault(
                row.team,
                protocol.LeaderboardTeam(
                    name=row.team,
                    team=row.team,
                    members=0,
                    credit=0.0,
                    recent_credit=0.0,
                    updates_accepted=0,
                ),
            )
            team.members += 1
            team.credit += row.credit
            team.recent_credit += row.recent_credit
            team.updates_accepted += row.updates_accepted
        team_rows = sorted(teams.values(), key=lambda t: (-t.credit, t.team))
        for rank, team in enumerate(team_rows, start=1):
            team.rank = rank
        return protocol.Leaderboard(contributors=rows, teams=team_rows)

    def stats(self, project: ProjectRecord) -> protocol.Stats:
        now = self._ctx.clock()
        with self._ctx.store.read() as tx:
            versions = tx.versions(project.id)
            clients = tx.clients(project.id)
            live = tx.live_leases(project.id, now)
            pending = tx.pending_updates(project.id)
            rejected_tasks = tx.rejected_tasks(project.id)
            aggregated = tx.updates_with_status(project.id, "aggregated")
            dropped = tx.updates_with_status(project.id, "dropped")
            quarantined = tx.updates_with_status(project.id, "quarantined")
            kept_out = tx.updates_with_status(project.id, "rejected")
            actions = tx.actions(project.id, ACTIONS_SHOWN)
        return protocol.Stats(
            project=project.name,
            current_version=project.current_version,
            versions=[
                protocol.VersionStats(
                    version=v.version,
                    digest=v.digest,
                    created_at=int(v.created_at),
                    metrics=dict(v.metrics),
                    updates=v.updates,
                    contributors=v.contributors,
                    parent_digest=v.parent_digest,
                    parent_manifest_digest=v.parent_manifest_digest,
                    updates_root=v.updates_root,
                )
                for v in versions
            ],
            contributors=len(clients),
            updates_accepted=sum(c.accepted for c in clients),
            updates_rejected=sum(c.rejected for c in clients),
            total_credit=sum(c.credit for c in clients),
            live_leases=live,
            pending_updates=pending,
            updates_aggregated=aggregated,
            updates_dropped=dropped,
            tasks_rejected=rejected_tasks,
            updates_quarantined=quarantined,
            updates_kept_out=kept_out,
            credit_pending=max(0.0, sum(c.credit_pending for c in clients)),
            actions=[
                protocol.OrganiserAction(
                    id=a.id,
                    at=int(a.at),
                    action=a.action,  # type: ignore[arg-type]
                    target=a.target,
                    reason=a.reason,
                    detail=a.detail,
                )
                for a in actions
            ],
        )

    def me(self, project: ProjectRecord, client: ClientRecord) -> protocol.Me:
        check_not_banned(project, client)  # so the app stops, rather than retry as if swapped
        board = self.leaderboard(project)
        row = next(r for r in board.contributors if r.client_id == client.id)
        return protocol.Me(
            client_id=row.client_id,
            name=row.name,
            display_name=row.display_name,
            team=row.team,
            credit=row.credit,
            recent_credit=row.recent_credit,
            updates_accepted=row.updates_accepted,
            updates_rejected=row.updates_rejected,
            last_seen=row.last_seen,
            rank=row.rank,
            credit_pending=max(0.0, client.credit_pending),
            energy_joules=row.energy_joules,
            energy_measured_joules=row.energy_measured_joules,
        )

    def update_status(
        self, project: ProjectRecord, client: ClientRecord, update_id: str
    ) -> protocol.UpdateStatus:
        """The fate of one of ``client``'s updates (404 for anyone else's: not theirs to see)."""
        with self._ctx.store.read() as tx:
            update = tx.update(update_id)
        if update is None or update.project_id != project.id or update.client_id != client.id:
            raise NotFound(f"you have no update {update_id!r} in project {project.name!r}")
        status = "pending" if update.status == "claimed" else update.status
        detail = update.verdict_detail or update.quarantine_reason
        return protocol.UpdateStatus(
            update_id=update.id,
            task_id=update.task_id,
            status=status,  # type: ignore[arg-type]
            credit=update.credit,
            credit_state=update.credit_state,  # type: ignore[arg-type]
            verdict=update.verdict,
            detail=detail,
        )
