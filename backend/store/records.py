"""The plain records the store reads and writes (``backend.store.base`` re-exports them).

Frozen dataclasses, one per table row the coordinator needs; the SQLite and PostgreSQL
stores build them generically from their rows (``sqlite_rows``), so a column added by a
migration is a field here with a default.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ActionRecord",
    "AggregationClaim",
    "ClientRecord",
    "NameKeys",
    "ProjectRecord",
    "RoundCounts",
    "TaskRecord",
    "UpdateRecord",
    "VersionRecord",
]


@dataclass(frozen=True)
class ProjectRecord:
    id: int
    name: str
    description: str
    recipe: str
    recipe_version: int
    hparams: dict[str, Any]
    strategy: dict[str, Any]
    settings: dict[str, Any]
    status: str  # open | paused | closed
    current_version: int
    public_key: str
    created_at: float
    shard_sizes: list[int] | None = None


@dataclass(frozen=True)
class VersionRecord:
    project_id: int
    version: int
    digest: str
    created_at: float
    signature: str
    metrics: dict[str, float] = field(default_factory=dict)
    updates: int = 0
    contributors: int = 0
    strategy_state_digest: str | None = None
    # Provenance (migration 5; None for versions published before it): what the signed
    # manifest names besides the model (backend.services.models.version_manifest).
    parent_digest: str | None = None
    parent_manifest_digest: str | None = None
    updates_root: str | None = None
    # (update id, payload digest) of each update under ``updates_root``, in tree order.
    # Written by ``insert_version``; ``version()``/``versions()`` leave it empty (it can be
    # long): ``version_leaves`` reads it.
    leaves: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class NameKeys:
    """How a client's display name and team read (``backend.names.name_key``), stored and
    indexed so look-alike checks at join cost one index look-up."""

    name: str
    team: str | None


@dataclass(frozen=True)
class ClientRecord:
    id: str
    project_id: int
    display_name: str
    team: str | None
    public_key: str
    token_hash: str
    created_at: float
    last_seen: float
    credit: float = 0.0
    recent_sum: float = 0.0
    recent_time: float = 0.0
    accepted: int = 0
    rejected: int = 0
    pace_s_per_step: float | None = None  # see backend.pacing.Pace
    pace_dev: float | None = None
    pace_samples: int = 0
    pace_at: float | None = None
    pace_examples: int | None = None
    credit_pending: float = 0.0  # GFLOP of accepted updates not yet settled
    checks_passed: int = 0  # spot checks (re-executions) that matched
    checks_failed: int = 0
    last_check_passed_at: float | None = None
    refused_in_a_row: int = 0  # uploads refused for what they were since the last accepted
    refused_at: float | None = None
    banned_at: float | None = None  # banned by the organiser (backend.services.admin)
    ban_reason: str | None = None
    # Energy its computer reported with its accepted updates (migration 10), in joules:
    # all of it, and the part measured (RAPL, NVML) rather than estimated from CPU time.
    energy_joules: float = 0.0
    energy_measured_joules: float = 0.0


@dataclass(frozen=True)
class TaskRecord:
    id: str
    project_id: int
    client_id: str
    base_version: int
    shard_index: int
    status: str  # leased | answered | released | expired | cancelled | rejected
    issued_at: float
    deadline: float
    max_examples: int
    manifest: dict[str, Any]
    signature: str
    rejected_code: str | None = None  # status rejected: the error code of the refusal
    rejected_at: float | None = None


@dataclass(frozen=True)
class UpdateRecord:
    id: str
    project_id: int
    task_id: str
    client_id: str
    base_version: int
    payload_digest: str
    num_examples: int
    max_examples: int
    credit: float
    accepted_at: float
    manifest_b64: str
    signature: str
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "pending"  # pending | claimed | aggregated | dropped | quarantined | rejected
    aggregation_id: int | None = None
    quarantine_reason: str | None = None  # why it made its aggregation fail
    norm: float | None = None  # global L2 norm of the delta
    source_net: str | None = None  # the uploader's network: IPv4 /24 or IPv6 /48
    credit_state: str = "pending"  # pending | granted | withheld | revoked
    verdict: str | None = None  # status 'rejected': the reason code ...
    verdict_detail: str | None = None  # ... and the sentence the contributor sees
    check_error: float | None = None  # spot-checked: relative difference to its re-execution
    # Retention (migration 7, backend.services.retention): kept | pruning (the database no
    # longer promises the payload; its blob is being deleted) | pruned; and since when.
    payload_state: str = "kept"
    payload_pruned_at: float | None = None
    # What the contributor's computer reported it spent on it (migration 10; None when it
    # did not say): joules and how they were known (federated.protocol.EnergyMethod).
    energy_joules: float | None = None
    energy_method: str | None = None


@dataclass(frozen=True)
class AggregationClaim:
    id: int
    project_id: int
    base_version: int
    owner: str
    claimed_at: float
    updates: list[UpdateRecord]


@dataclass(frozen=True)
class ActionRecord:
    """One organiser action (migration 6): ``action`` ban | unban | revoke | rollback;
    ``target`` a client id, an update id or a version number; ``detail`` what it changed."""

    id: int  # 0 until inserted
    project_id: int
    at: float
    action: str
    target: str
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class RoundCounts:
    live_leases: int
    answered: int
