"""The daily exports for third-party stats sites, BOINC style (``docs/protocol.md``, Exports).

``GET .../export/users.json.gz`` and ``.../export/teams.json.gz`` answer a gzip file whose
JSON is a ``UsersExport`` or a ``TeamsExport``: what the public leaderboard shows, plus
when each contributor first joined, computed at ``generated_at`` (at most once a day).
Rows come in rank order. Open answers: a stats site ignores fields it does not know.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from federated.protocol.messages import CREDIT_UNIT, _Answer
from federated.protocol.types import Count, ProjectName, Rank, ServerId, UnixSeconds

_Credit = Annotated[float, msgspec.Meta(ge=0, description="GFLOP of training given.")]
_Recent = Annotated[float, msgspec.Meta(description="GFLOP, an average with a 7-day half-life.")]


class ExportUser(_Answer, kw_only=True):
    """One contributor of a project, as on its public leaderboard."""

    id: Annotated[ServerId, msgspec.Meta(description="The client id of the leaderboard.")]
    name: str
    team: str | None = None
    total_credit: _Credit
    recent_credit: _Recent
    updates_accepted: Count
    first_seen: UnixSeconds
    last_seen: UnixSeconds
    rank: Rank
    banned: bool = False


class ExportTeam(_Answer, kw_only=True):
    """One team of a project: its members' totals."""

    name: str
    members: Count
    member_ids: list[ServerId]
    total_credit: _Credit
    recent_credit: _Recent
    updates_accepted: Count
    rank: Rank


class UsersExport(_Answer, kw_only=True):
    """The body of ``users.json.gz`` (gunzipped)."""

    project: ProjectName
    generated_at: UnixSeconds
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT
    users: list[ExportUser]


class TeamsExport(_Answer, kw_only=True):
    """The body of ``teams.json.gz`` (gunzipped)."""

    project: ProjectName
    generated_at: UnixSeconds
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT
    teams: list[ExportTeam]
