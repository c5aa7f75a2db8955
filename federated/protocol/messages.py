"""Every message the two programs exchange, as typed structs.

Requests the coordinator receives (``JoinRequest``, ``UpdateManifest``) are closed: an
unknown field is refused. Answers the contributor receives are open: the coordinator may add
fields (a signed manifest's signature covers them all), and a contributor reads only the
fields it knows. ``federated.protocol.wire`` parses and converts them strictly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from federated.protocol import limits
from federated.protocol.names import clean_text
from federated.protocol.types import (
    ChallengeText,
    CodecName,
    Count,
    Digest,
    ErrorCode,
    Examples,
    HParams,
    MetricName,
    MetricValue,
    PositiveInt,
    ProjectName,
    PublicKey,
    ServerId,
    Signature,
    UnixSeconds,
)

CREDIT_UNIT: Literal["GFLOP"] = "GFLOP"
"""What credit is counted in: useful training work, not wall time."""

Mode = Literal["sync", "async"]
Status = Literal["open", "paused", "closed", "finished"]
DataMode = Literal["builtin", "local"]
EnergyMethod = Literal["rapl", "nvml", "rapl+nvml", "estimated"]
"""How a contributor's computer knew the energy it reports (``app.contributor.energy``):
rapl: the CPU packages' RAPL counters (Intel, AMD), the training process's share of them;
nvml: the NVIDIA GPU's energy counter, with the CPU's part estimated; rapl+nvml: both
measured; estimated: the training process's CPU seconds times a declared wattage."""
PrivacyMechanism = Literal["dp-sgd", "dp-fedavg"]
"""dp-sgd: record-level, each contributor clips per-example gradients and adds noise
locally (Opacus), so no record of its own data can be inferred from its updates whatever
the coordinator does. dp-fedavg: user-level, the coordinator clips each contributor's
whole update and adds noise to their sum, so no contributor's participation can be
inferred from the published versions (the coordinator itself is trusted)."""


class _Request(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """A message the coordinator receives: closed, every field checked."""


class _Answer(msgspec.Struct, kw_only=True):
    """A message the contributor receives: fields it does not know are ignored."""


# --- requests ----------------------------------------------------------------------------


class JoinRequest(_Request):
    """Join a project, proving possession of ``public_key`` by signing the challenge.

    ``signature`` is over ``canonical_json({"challenge", "project", "public_key",
    "purpose": "join"})``. ``display_name`` is 1-64 characters after stripping and ``team``
    0-64 (empty means none); any text is allowed, pages escape it."""

    display_name: Annotated[
        str, msgspec.Meta(min_length=1, max_length=limits.MAX_DISPLAY_NAME_CHARS)
    ]
    public_key: PublicKey
    challenge: Annotated[str, msgspec.Meta(max_length=limits.MAX_CHALLENGE_CHARS)]
    signature: Signature
    team: Annotated[str, msgspec.Meta(max_length=limits.MAX_TEAM_CHARS)] | None = None
    invite: Annotated[str, msgspec.Meta(max_length=limits.MAX_INVITE_CHARS)] | None = None

    def __post_init__(self) -> None:
        if not 1 <= len(clean_text(self.display_name)) <= limits.MAX_DISPLAY_NAME_CHARS:
            raise ValueError(
                f"display_name must be 1 to {limits.MAX_DISPLAY_NAME_CHARS} visible characters "
                "(control, bidi and zero-width characters do not count) - at `$.display_name`"
            )
        if self.team is not None and len(clean_text(self.team)) > limits.MAX_TEAM_CHARS:
            raise ValueError(
                f"team must be null or at most {limits.MAX_TEAM_CHARS} characters - at `$.team`"
            )


class JoinStatement(_Request):
    """What a joining contributor signs (with the key it registers): proof of possession,
    bound to this project and this single-use challenge."""

    challenge: str
    project: ProjectName
    public_key: PublicKey
    purpose: Literal["join"] = "join"


class UpdateManifest(_Request, omit_defaults=True):
    """What a contributor signs for one update: the body's digest and what it claims.

    Fields at their default are left out of the canonical bytes (so a manifest without
    energy reads exactly as before it existed).

    Sent as base64 of its canonical JSON in ``X-Barnraise-Manifest``, signed (those exact
    bytes) in ``X-Barnraise-Signature``."""

    project: ProjectName
    task_id: ServerId
    client_id: ServerId
    base_digest: Digest
    payload_digest: Digest
    codec: CodecName
    num_examples: Examples
    metrics: Annotated[
        dict[MetricName, MetricValue],
        msgspec.Meta(
            max_length=limits.MAX_METRICS,
            description="At most 32 numbers within ±1e9; loss_before and loss_after within "
            "[0, 1e4], seconds within [0, 1e7], examples_per_second and steps within [0, 1e9].",
        ),
    ] = msgspec.field(default_factory=dict)
    energy_joules: (
        Annotated[
            float,
            msgspec.Meta(
                ge=0,
                le=limits.MAX_ENERGY_JOULES,
                description="Energy the contributor's computer reports it spent training "
                "this update, in joules (at most 1e9); absent: unknown. Shown as reported, "
                "never credited.",
            ),
        ]
        | None
    ) = None
    energy_method: (
        Annotated[
            EnergyMethod,
            msgspec.Meta(description="How energy_joules was known; with it, or neither."),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if (self.energy_joules is None) != (self.energy_method is None):
            raise ValueError(
                "energy_joules and energy_method come together or not at all - at `$.energy_joules`"
            )
        for name, (low, high) in limits.METRIC_RANGES.items():
            value = self.metrics.get(name)
            if value is not None and not low <= value <= high:
                raise ValueError(
                    f"metric {name!r} is {value:g}: not a value it can take "
                    f"(it is within [{low:g}, {high:g}])"
                )


# --- answers -----------------------------------------------------------------------------


class ErrorDetail(_Answer):
    code: ErrorCode
    message: Annotated[str, msgspec.Meta(description="What was wrong and what to do next.")]


class ErrorBody(_Answer):
    error: ErrorDetail


class Health(_Answer):
    """``degraded`` (answered 503) while some project's aggregation is overdue or the
    coordinator's disk is full."""

    status: Literal["ok", "degraded"]
    aggregation_overdue: list[ProjectName] = msgspec.field(default_factory=list)
    storage_full: Annotated[
        bool,
        msgspec.Meta(
            description="Writes fail for want of space (they answer 507 insufficient_storage)."
        ),
    ] = False


class DataColumns(_Answer):
    label: str | None
    features: list[str]


class PrivacyTerms(_Answer):
    """What a project promises about differential privacy.

    Disclosed before a volunteer joins, carried in every signed task, and pinned by the
    contributor at join: it refuses a task whose terms differ from those it consented to,
    so a coordinator cannot quietly drop the noise for one contributor."""

    mechanism: PrivacyMechanism
    epsilon: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=limits.MAX_DP_EPSILON,
            description="The budget: training stops when the epsilon spent would pass it.",
        ),
    ]
    delta: Annotated[float, msgspec.Meta(gt=0, le=limits.MAX_DP_DELTA)]
    noise_multiplier: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=limits.MAX_DP_NOISE_MULTIPLIER,
            description="Gaussian noise standard deviation over the clipping bound.",
        ),
    ]
    clip_norm: Annotated[
        float,
        msgspec.Meta(
            gt=0,
            le=limits.MAX_DP_CLIP_NORM,
            description="dp-sgd: each example's gradient L2 bound; dp-fedavg: the first "
            "bound of each update (adapted per version when clip_quantile > 0).",
        ),
    ]
    clip_quantile: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            lt=1,
            description="dp-fedavg: the share of updates the adaptive bound aims to leave "
            "unclipped (Andrew et al. 2021); 0: a fixed bound.",
        ),
    ] = 0.0


class PrivacySpent(_Answer):
    """How much of a project's privacy budget is gone (``Project.privacy_spent``)."""

    epsilon: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="dp-fedavg: the coordinator's accountant over every noisy aggregate "
            "it computed; dp-sgd: the largest epsilon a contributor reported for its own data.",
        ),
    ]
    delta: Annotated[float, msgspec.Meta(gt=0)]
    steps: Annotated[
        int,
        msgspec.Meta(ge=0, description="dp-fedavg: noisy aggregates; dp-sgd: reports counted."),
    ]
    exhausted: bool = False
    clip_norm: Annotated[
        float | None,
        msgspec.Meta(description="dp-fedavg: the bound the next updates are clipped to."),
    ] = None


class ProjectSummary(_Answer):
    name: ProjectName
    description: str = ""
    recipe: str = ""
    mode: Mode = "sync"
    status: Status = "open"
    current_version: Count = 0
    invite_required: bool = False
    page_url: str = ""
    data_mode: DataMode = "builtin"
    privacy: PrivacyMechanism | None = None


class ProjectList(_Answer):
    projects: list[ProjectSummary]


class Project(_Answer, kw_only=True):
    # In the order the coordinator sends them (kw_only, so defaults may come first).
    name: ProjectName
    description: str = ""
    recipe: str
    recipe_version: Count
    hparams: HParams
    data_mode: DataMode
    data_columns: DataColumns | None = None
    strategy: Annotated[
        dict[str, Any],
        msgspec.Meta(description="The aggregation strategy: its name and its settings."),
    ]
    mode: Mode
    status: Status
    current_version: Count
    model_digest: Digest | None = None
    public_key: PublicKey
    key_fingerprint: str
    invite_required: bool
    codec: str = ""
    page_url: str = ""
    privacy: PrivacyTerms | None = None
    privacy_spent: PrivacySpent | None = None


class Challenge(_Answer):
    challenge: ChallengeText
    expires_at: UnixSeconds


class JoinResponse(_Answer):
    client_id: ServerId
    token: Annotated[
        str,
        msgspec.Meta(
            min_length=1, description="Bearer token; shown once, the server stores its sha256."
        ),
    ]
    project: Project


class TaskManifest(_Answer):
    """One unit of work, signed by the project key; the contributor checks it first."""

    task_id: ServerId
    project: ProjectName
    client_id: ServerId
    base_version: Count
    base_digest: Digest
    recipe: str
    recipe_version: Count
    hparams: HParams
    shard_index: Count
    max_examples: PositiveInt
    codec: CodecName
    max_update_norm: Annotated[float, msgspec.Meta(gt=0)]
    max_payload_bytes: PositiveInt
    issued_at: UnixSeconds
    deadline: Annotated[
        int, msgspec.Meta(ge=0, description="The lease ends then unless a heartbeat extends it.")
    ]
    useful_until: Annotated[
        int,
        msgspec.Meta(
            ge=0,
            description="Until then the update is expected to be used; one arriving later is "
            "likely refused as wrong_base. A contributor that cannot finish by then should "
            "give the task back.",
        ),
    ]
    privacy: PrivacyTerms | None = None
    update_clip_norm: (
        Annotated[
            float,
            msgspec.Meta(
                gt=0,
                description="dp-fedavg: clip the whole update to this L2 norm before sending it.",
            ),
        ]
        | None
    ) = None
    report_energy: Annotated[
        bool,
        msgspec.Meta(
            description="The coordinator takes energy_joules and energy_method in this task's "
            "update manifest. Absent (a coordinator from before them, which would refuse "
            "the unknown fields): the contributor leaves them out."
        ),
    ] = False


class SignedTask(_Answer):
    manifest: TaskManifest
    signature: Signature


class Heartbeat(_Answer):
    deadline: UnixSeconds


class Receipt(_Answer):
    update_id: str
    task_id: ServerId
    payload_digest: Digest
    accepted_at: UnixSeconds
    credit: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            description="The work the task asked for, in GFLOP; pending until the update is "
            "aggregated (see UpdateStatus).",
        ),
    ]
    credit_unit: Literal["GFLOP"] = CREDIT_UNIT
    energy_joules: Annotated[
        float | None,
        msgspec.Meta(description="The energy the update's manifest reported, as reported."),
    ] = None
    energy_method: EnergyMethod | None = None


class UploadProgress(_Answer):
    """How much of an update's payload the coordinator holds for a task (resumable uploads,
    docs/protocol.md "Resumable upload"). ``receipt``: the task already has an accepted
    update with this payload, so nothing more needs to be sent."""

    payload_digest: Digest
    offset: Annotated[
        int, msgspec.Meta(ge=0, description="Bytes held: the next chunk starts here.")
    ]
    length: Annotated[
        int | None,
        msgspec.Meta(description="The payload's size in bytes, once a first part arrived."),
    ] = None
    receipt: Receipt | None = None


class ModelManifest(_Answer, omit_defaults=True):
    """What the project key signs for each published version (``federated.provenance``).

    The provenance fields make the versions a hash chain: each names its parent's model
    digest and the sha256 of its parent's signed manifest, the strategy state it carries
    and the Merkle root of the updates aggregated into it. Fields at their default are left
    out of the wire form (and so of the signed bytes): a version published before these
    fields existed keeps exactly the manifest, and the signature, it had."""

    project: ProjectName
    version: Count
    digest: Digest
    created_at: UnixSeconds
    parent_digest: Annotated[
        Digest | None,
        msgspec.Meta(description="The model digest of version - 1; absent for version 0."),
    ] = None
    parent_manifest_digest: Annotated[
        Digest | None,
        msgspec.Meta(
            description="sha256 of the canonical JSON of version - 1's signed manifest; "
            "absent for version 0."
        ),
    ] = None
    strategy_state_digest: Annotated[
        Digest | None,
        msgspec.Meta(description="The strategy state blob (momentum, …), if the strategy has one."),
    ] = None
    updates_root: Annotated[
        Digest | None,
        msgspec.Meta(
            description="Merkle root (RFC 6962 hashing) of the updates aggregated into this "
            "version; for version 0 the root of no updates, sha256 of nothing."
        ),
    ] = None
    updates: Annotated[
        int, msgspec.Meta(ge=0, description="How many leaves ``updates_root`` covers.")
    ] = 0


class SignedModel(_Answer):
    manifest: ModelManifest
    signature: Signature


class InclusionProof(_Answer):
    """That an update is one of the leaves under a version's signed ``updates_root``."""

    project: ProjectName
    version: Count
    update_id: ServerId
    payload_digest: Digest
    index: Annotated[int, msgspec.Meta(ge=0, description="The leaf's place, from 0.")]
    size: Annotated[int, msgspec.Meta(ge=1, description="Leaves in the tree (``updates``).")]
    path: Annotated[
        list[Digest],
        msgspec.Meta(
            max_length=limits.MAX_PROOF_PATH,
            description="Sibling hashes from the leaf up (RFC 9162 inclusion path).",
        ),
    ]
    updates_root: Digest
