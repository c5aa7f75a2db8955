"""The wire contract between the coordinator and the contributor, defined once.

Both programs import their message shapes, id formats, size limits and error codes from
here; nothing else defines a wire shape. ``docs/protocol.md`` is the prose; the served
OpenAPI document is generated from these types.

    from federated.protocol import UpdateManifest, decode, encode_canonical
"""

from federated.protocol.errors import (
    ERROR_STATUS,
    FINAL_UPLOAD_CODES,
    PAYLOAD_CODES,
    ProtocolError,
)
from federated.protocol.ids import (
    DIGEST_PATTERN,
    ID_PATTERN,
    PROJECT_NAME_PATTERN,
    is_digest,
    is_project_name,
    is_server_id,
)
from federated.protocol.limits import (
    CHALLENGE_TTL_S,
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_DISPLAY_NAME_CHARS,
    MAX_INVITE_CHARS,
    MAX_JSON_BODY_BYTES,
    MAX_LONG_POLL_S,
    MAX_MANIFEST_HEADER_BYTES,
    MAX_METRICS,
    MAX_TEAM_CHARS,
)
from federated.protocol.messages import (
    Challenge,
    ErrorBody,
    ErrorDetail,
    Health,
    Heartbeat,
    JoinRequest,
    JoinResponse,
    Leaderboard,
    LeaderboardContributor,
    LeaderboardTeam,
    Me,
    ModelManifest,
    Project,
    ProjectList,
    ProjectSummary,
    Receipt,
    SignedModel,
    SignedTask,
    Stats,
    TaskManifest,
    UpdateManifest,
    VersionStats,
)
from federated.protocol.wire import (
    convert,
    decode,
    encode_canonical,
    parse_json,
    to_wire,
)

__all__ = [
    "CHALLENGE_TTL_S",
    "DEFAULT_MAX_PAYLOAD_BYTES",
    "DIGEST_PATTERN",
    "ERROR_STATUS",
    "FINAL_UPLOAD_CODES",
    "ID_PATTERN",
    "MAX_DISPLAY_NAME_CHARS",
    "MAX_INVITE_CHARS",
    "MAX_JSON_BODY_BYTES",
    "MAX_LONG_POLL_S",
    "MAX_MANIFEST_HEADER_BYTES",
    "MAX_METRICS",
    "MAX_TEAM_CHARS",
    "PAYLOAD_CODES",
    "PROJECT_NAME_PATTERN",
    "Challenge",
    "ErrorBody",
    "ErrorDetail",
    "Health",
    "Heartbeat",
    "JoinRequest",
    "JoinResponse",
    "Leaderboard",
    "LeaderboardContributor",
    "LeaderboardTeam",
    "Me",
    "ModelManifest",
    "Project",
    "ProjectList",
    "ProjectSummary",
    "ProtocolError",
    "Receipt",
    "SignedModel",
    "SignedTask",
    "Stats",
    "TaskManifest",
    "UpdateManifest",
    "VersionStats",
    "convert",
    "decode",
    "encode_canonical",
    "is_digest",
    "is_project_name",
    "is_server_id",
    "parse_json",
    "to_wire",
]
