"""Public profiles: one contributor's or one team's standing and history, and each
project's state in words for the index page.

Only what the public leaderboard already shows, plus first seen, credit by day and the
codes and times of refusals: never a token, a key, an address, a task or its payload.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend.errors import NotFound
from backend.services.context import ServiceContext
from backend.services.standings import StandingsService
from backend.store import ProjectRecord
from federated import protocol

REFUSALS_SHOWN = 20
"""A contributor page lists its newest this many refusals (the counts cover them all)."""


@dataclass(frozen=True)
class ContributorProfile:
    row: protocol.LeaderboardContributor  # as on the leaderboard, with its rank
    first_seen: float
    credit_by_day: list[tuple[int, float]]  # (UTC day number, GFLOP granted), oldest first
    refusal_codes: dict[str, int]  # code -> how many
    refusals: list[tuple[float, str]]  # (when, code), newest first, REFUSALS_SHOWN at most


@dataclass(frozen=True)
class TeamProfile:
    team: protocol.LeaderboardTeam
    members: list[protocol.LeaderboardContributor]  # in rank order
    updates_rejected: int
    credit_by_day: list[tuple[int, float]]
    first_seen: float  # when its first member joined


class ProfileService:
    """Read-only: the contributor and team pages, and the index's project states."""

    def __init__(self, ctx: ServiceContext, standings: StandingsService) -> None:
        self._ctx = ctx
        self._standings = standings

    def contributor(self, project: ProjectRecord, client_id: str) -> ContributorProfile:
        """``client_id``'s profile in ``project``; NotFound if it is no member of it."""
        with self._ctx.store.read() as tx:
            client = tx.client(client_id)
            if client is None or client.project_id != project.id:
                raise NotFound(
                    f"project {project.name!r} has no contributor {client_id!r}; "
                    "the project's page lists them all"
                )
            by_day = tx.credit_by_day(project.id, client.id, None)
            codes, refusals = tx.refusals(project.id, client.id, REFUSALS_SHOWN)
        board = self._standings.leaderboard(project)
        row = next(r for r in board.contributors if r.client_id == client.id)
        return ContributorProfile(
            row=row,
            first_seen=client.created_at,
            credit_by_day=by_day,
            refusal_codes=codes,
            refusals=refusals,
        )

    def team(self, project: ProjectRecord, name: str) -> TeamProfile:
        """The team spelt exactly ``name`` (as the leaderboard spells it); NotFound if none."""
        board = self._standings.leaderboard(project)
        team = next((t for t in board.teams if t.team == name), None)
        if team is None:
            raise NotFound(
                f"project {project.name!r} has no team {name[:80]!r}; the project's page "
                "lists them all"
            )
        members = [r for r in board.contributors if r.team == name]
        with self._ctx.store.read() as tx:
            by_day = tx.credit_by_day(project.id, None, name)
            joined = [c.created_at for c in tx.clients(project.id) if c.team == name]
        return TeamProfile(
            team=team,
            members=members,
            updates_rejected=sum(m.updates_rejected for m in members),
            credit_by_day=by_day,
            first_seen=min(joined, default=self._ctx.clock()),
        )

    def live_contributors(self, project: ProjectRecord) -> int:
        """Members not banned and seen (joined, leased or heartbeat) within the project's
        longest lease life (``ProjectSettings.lease_life_s``: an hour at the defaults): a
        contributor that works leases at least that often, one gone longer has stopped."""
        since = self._ctx.clock() - self._ctx.runtime(project).settings.lease_life_s
        with self._ctx.store.read() as tx:
            return tx.clients_seen_since(project.id, since)

    def state(self, project: ProjectRecord) -> str:
        """The project's state in words: "waiting for N volunteers" (a sync project with
        fewer live contributors than ``clients_per_round``), "training", "paused",
        "finished", "closed"; "· invite only" after it while it takes members by invite."""
        settings = self._ctx.runtime(project).settings
        if project.status in ("closed", "finished"):
            return project.status
        if project.status == "paused":
            words = "paused"
        elif settings.mode == "sync":
            missing = settings.clients_per_round - self.live_contributors(project)
            words = (
                f"waiting for {missing} volunteer{'s' if missing != 1 else ''}"
                if missing > 0
                else "training"
            )
        else:
            words = "training"
        return f"{words} · invite only" if settings.invite_required else words
