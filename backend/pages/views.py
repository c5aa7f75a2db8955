"""Plain frozen dataclasses the pages render. The caller (the router) fills them from the store.

Times are unix seconds (float or int); credit is in GFLOP (examples x the recipe's FLOPs
per example / 1e9). Text fields hold raw user text: the renderer escapes it, callers must not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

CREDIT_UNIT = "GFLOP"


@dataclass(frozen=True)
class ProjectSummaryView:
    """One project on the index page ``/``."""

    name: str
    description: str = ""
    recipe: str = ""
    mode: str = "sync"  # "sync" | "async"
    status: str = "open"  # "open" | "paused" | "closed"
    current_version: int = 0
    contributors: int = 0
    total_credit: float = 0.0  # GFLOP
    accuracy: float | None = None  # latest version's held-out accuracy in [0, 1]
    updated_at: float | None = None  # when the latest version was published
    state: str = ""  # in words: "training · invite only", "waiting for 2 volunteers"...


@dataclass(frozen=True)
class ContributorRow:
    """One contributor, in rank order (the page numbers rows 1, 2, 3, ... as given)."""

    name: str
    team: str | None
    credit: float  # GFLOP, all time
    recent_credit: float  # GFLOP, average with a 7-day half-life
    updates_accepted: int
    updates_rejected: int
    last_seen: float | None  # unix seconds; None: never
    short_id: str = ""  # the first characters of the client id: names alone can look alike
    banned: bool = False  # banned by the organiser: marked, kept in its place
    client_id: str = ""  # the public id: the name links to /p/PROJECT/c/CLIENT_ID when set
    # Energy its computer reported (joules; not credited), and the part of it measured.
    energy_joules: float = 0.0
    energy_measured_joules: float = 0.0


@dataclass(frozen=True)
class ActionRow:
    """One organiser action (ban, unban, revoke, rollback), newest first; raw text."""

    at: float
    action: str
    target: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class TeamRow:
    """One team, in rank order."""

    name: str
    members: int
    credit: float
    recent_credit: float
    updates_accepted: int


@dataclass(frozen=True)
class VersionPoint:
    """One published model version, in increasing version order."""

    version: int
    created_at: float
    accuracy: float | None  # [0, 1]; None if not evaluated
    loss: float | None
    updates: int  # updates aggregated into this version
    contributors: int  # distinct contributors of those updates


@dataclass(frozen=True)
class PrivacyView:
    """A project's differential-privacy promise and how much of its budget is gone."""

    mechanism: str  # "dp-sgd" | "dp-fedavg"
    epsilon: float  # the budget
    delta: float
    noise_multiplier: float
    clip_norm: float  # dp-sgd: per example; dp-fedavg: the current update bound
    clip_quantile: float
    epsilon_spent: float
    steps: int  # dp-fedavg: noisy aggregates; dp-sgd: contributor reports
    exhausted: bool


@dataclass(frozen=True)
class ProjectPageView:
    """Everything ``/p/NAME`` shows.

    ``page_url`` must be the absolute URL of this page as a volunteer reaches it
    (``https://host/p/name``): it is what they paste into the app. ``now`` is the time the
    relative "last seen" texts are computed against, so rendering stays a pure function.
    ``contributors``/``teams`` may be truncated (top N); ``contributors_total`` and
    ``teams_total`` then say how many there are in all, and ``total_credit`` /
    ``updates_accepted_total`` give the project totals (else they are summed over the rows).
    """

    name: str
    page_url: str
    now: float
    description: str = ""
    recipe: str = ""
    recipe_version: int = 1
    strategy: str = ""
    mode: str = "sync"
    status: str = "open"
    data_mode: str = "builtin"  # "builtin" | "local"
    codec: str = ""
    current_version: int = 0
    key_fingerprint: str = ""
    invite_required: bool = False
    contributors: tuple[ContributorRow, ...] = field(default_factory=tuple)
    teams: tuple[TeamRow, ...] = field(default_factory=tuple)
    versions: tuple[VersionPoint, ...] = field(default_factory=tuple)
    contributors_total: int | None = None
    teams_total: int | None = None
    total_credit: float | None = None  # GFLOP, all contributors
    updates_accepted_total: int | None = None
    actions: tuple[ActionRow, ...] = field(default_factory=tuple)  # newest first
    privacy: PrivacyView | None = None
    # Language models: (prompt, continuation) by the current version, and bytes trained.
    samples: tuple[tuple[str, str], ...] = ()
    tokens_trained: int | None = None
    model_digest: str = ""  # the current version's model: the final one once finished


@dataclass(frozen=True)
class ModelCardView:
    """Everything ``/p/NAME/model`` shows: what the current (or final) model is, how it was
    made, by whom, under which licence, and how to take it away."""

    name: str
    page_url: str
    now: float
    status: str
    version: int
    created_at: float
    digest: str
    key_fingerprint: str
    recipe: str
    recipe_version: int
    description: str
    data_mode: str
    strategy: str
    mode: str
    codec: str
    hparams: tuple[tuple[str, str], ...]
    metrics: tuple[tuple[str, float], ...]
    contributors: int
    updates_accepted: int
    total_credit: float
    examples_trained: int | None
    license: str = ""
    finished_reason: str = ""
    privacy: PrivacyView | None = None
    load_snippet: str = ""


@dataclass(frozen=True)
class RefusalRow:
    """One refused upload or kept-out update: when, and its code (no payload detail)."""

    at: float
    code: str


@dataclass(frozen=True)
class ContributorPageView:
    """Everything ``/p/NAME/c/CLIENT_ID`` shows: what the leaderboard shows of one
    contributor, plus first seen, credit by day and the codes of its refusals.

    ``credit_days`` holds (UTC day number, GFLOP granted that day), oldest first, days
    without credit left out; the page draws the running total from ``first_seen``'s day to
    ``now``'s. ``refusal_codes`` is (code, count), most first; ``refusals`` newest first.
    """

    project: str
    now: float
    client_id: str
    name: str
    team: str | None
    rank: int | None
    credit: float
    recent_credit: float
    updates_accepted: int
    updates_rejected: int
    first_seen: float
    last_seen: float | None
    banned: bool = False
    credit_days: tuple[tuple[int, float], ...] = ()
    refusal_codes: tuple[tuple[str, int], ...] = ()
    refusals: tuple[RefusalRow, ...] = ()
    energy_joules: float = 0.0  # reported by its computer, not credited
    energy_measured_joules: float = 0.0


@dataclass(frozen=True)
class TeamPageView:
    """Everything ``/p/NAME/t/TEAM`` shows: the team's totals, its members (in rank order,
    each with its ``client_id`` for the link) and its credit by day (as the contributor
    page's, from ``first_seen``, its first member's joining)."""

    project: str
    now: float
    name: str
    rank: int | None
    credit: float
    recent_credit: float
    updates_accepted: int
    updates_rejected: int
    first_seen: float
    members: tuple[ContributorRow, ...] = ()
    credit_days: tuple[tuple[int, float], ...] = ()
