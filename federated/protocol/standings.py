"""The standings messages: what a contributor's work became and how it ranks.

The leaderboard, a project's stats and its organiser actions (public), a contributor's own
row and the fate of each of its updates (its token only). Open answers, like every message
the contributor receives (``federated.protocol.messages``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from federated.protocol.messages import CREDIT_UNIT, _Answer
from federated.protocol.types import (
    Count,
    Digest,
    PositiveInt,
    ProjectName,
    Rank,
    ServerId,
    UnixSeconds,
)

CreditState = Literal["pending", "granted", "withheld", "revoked"]

EnergyJoules = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        description="Energy the contributor's computer reported with its accepted updates, "
        "in joules, as reported (not credited: credit is GFLOP).",
    ),
]
MeasuredJoules = Annotated[
    float,
    msgspec.Meta(
        ge=0,
        description="The part of energy_joules that was measured (RAPL, NVML), not estimated.",
    ),
]


class UpdateStatus(_Answer, kw_only=True):
    """What became of one accepted update, for the contributor who sent it."""

    update_id: str
    task_id: ServerId
    status: Annotated[
        Literal["pending", "aggregated", "dropped", "rejected", "quarantined"],
        msgspec.Meta(
            description="pending: waits for its aggregate; aggregated: in a version; dropped: "
            "too stale by then, or its network had its share; rejected: kept out (verdict); "
            "quarantined: it broke an aggregation."
        ),
    ]
    credit: Annotated[float, msgspec.Meta(ge=0)]
    credit_state: CreditState
    verdict: Annotated[
        str | None, msgspec.Meta(description="Why it was kept out: a code of VERDICT_CODES.")
    ] = None
    detail: str | None = None
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT


class LeaderboardContributor(_Answer, kw_only=True):
    client_id: ServerId
    name: str
    display_name: Annotated[str, msgspec.Meta(description="The same as ``name``.")]
    team: str | None = None
    credit: float
    recent_credit: float = 0.0
    updates_accepted: Count = 0
    updates_rejected: Count = 0
    last_seen: UnixSeconds | None = None
    rank: Rank | None = None
    banned: Annotated[
        bool,
        msgspec.Meta(description="Banned by the organiser: takes no more work (see ``actions``)."),
    ] = False
    energy_joules: EnergyJoules = 0.0
    energy_measured_joules: MeasuredJoules = 0.0


class LeaderboardTeam(_Answer, kw_only=True):
    name: str
    team: Annotated[str, msgspec.Meta(description="The same as ``name``.")]
    members: Count = 0
    credit: float
    recent_credit: float = 0.0
    updates_accepted: Count = 0
    rank: Rank | None = None


class Leaderboard(_Answer):
    contributors: list[LeaderboardContributor]
    teams: list[LeaderboardTeam]
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT


class VersionStats(_Answer):
    version: Count
    digest: Digest
    created_at: UnixSeconds
    metrics: Annotated[
        dict[str, float | None],
        msgspec.Meta(description="Held-out evaluation, e.g. accuracy and loss."),
    ]
    updates: Count = 0
    contributors: Count = 0
    parent_digest: Digest | None = None
    parent_manifest_digest: Digest | None = None
    updates_root: Digest | None = None


class Stats(_Answer):
    project: ProjectName
    current_version: Count
    versions: list[VersionStats]
    contributors: Count = 0
    updates_accepted: Count = 0
    updates_rejected: Count = 0
    total_credit: float = 0.0
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT
    live_leases: Count = 0
    pending_updates: Count = 0
    updates_aggregated: Annotated[
        int, msgspec.Meta(ge=0, description="Accepted updates that went into a published version.")
    ] = 0
    updates_dropped: Annotated[
        int,
        msgspec.Meta(ge=0, description="Accepted updates dropped as too stale before aggregation."),
    ] = 0
    tasks_rejected: Annotated[
        int,
        msgspec.Meta(ge=0, description="Tasks ended for good by a final refusal of their update."),
    ] = 0
    updates_quarantined: Annotated[
        int,
        msgspec.Meta(
            ge=0, description="Accepted updates set aside because they broke an aggregation."
        ),
    ] = 0
    updates_kept_out: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Accepted updates kept out of their aggregate (a verdict such as "
            "norm_outlier); their credit was withheld.",
        ),
    ] = 0
    credit_pending: Annotated[
        float, msgspec.Meta(ge=0, description="Credit of updates not aggregated yet.")
    ] = 0.0
    actions: Annotated[
        list[OrganiserAction], msgspec.Meta(description="Organiser actions, newest first.")
    ] = msgspec.field(default_factory=list)


class Me(_Answer, kw_only=True):
    """The caller's own row of the leaderboard."""

    client_id: ServerId | None = None
    name: str | None = None
    display_name: str | None = None
    team: str | None = None
    credit: float
    recent_credit: float = 0.0
    updates_accepted: Count
    updates_rejected: Count
    last_seen: UnixSeconds | None = None
    rank: Rank | None = None
    credit_pending: Annotated[
        float,
        msgspec.Meta(ge=0, description="Credit of accepted updates not aggregated yet."),
    ] = 0.0
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT
    energy_joules: EnergyJoules = 0.0
    energy_measured_joules: MeasuredJoules = 0.0


class OrganiserAction(_Answer, kw_only=True):
    """One thing an organiser did to the project, recorded with its effect
    (``barnraise-backend ban``, ``unban``, ``revoke``, ``rollback``)."""

    id: PositiveInt
    at: UnixSeconds
    action: Literal["ban", "unban", "revoke", "rollback"]
    target: Annotated[str, msgspec.Meta(description="A client or update id, or a version.")]
    reason: Annotated[str, msgspec.Meta(description="Why, as the organiser gave it.")]
    detail: Annotated[str, msgspec.Meta(description="What it changed, in a sentence.")] = ""
