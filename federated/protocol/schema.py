"""JSON Schema of every message, as OpenAPI 3.1 components."""

from __future__ import annotations

from typing import Any

import msgspec

from federated.protocol.exports import TeamsExport, UsersExport
from federated.protocol.messages import (
    Challenge,
    ErrorBody,
    Health,
    Heartbeat,
    InclusionProof,
    JoinRequest,
    JoinResponse,
    ModelManifest,
    Project,
    ProjectList,
    ProjectSummary,
    Receipt,
    SignedModel,
    SignedTask,
    TaskManifest,
    UpdateManifest,
    UploadProgress,
)
from federated.protocol.standings import Leaderboard, Me, OrganiserAction, Stats, UpdateStatus

MESSAGES: tuple[type[msgspec.Struct], ...] = (
    ErrorBody,
    Health,
    ProjectSummary,
    ProjectList,
    Project,
    Challenge,
    JoinRequest,
    JoinResponse,
    TaskManifest,
    SignedTask,
    Heartbeat,
    UpdateManifest,
    Receipt,
    UploadProgress,
    UpdateStatus,
    ModelManifest,
    SignedModel,
    InclusionProof,
    Leaderboard,
    Stats,
    Me,
    OrganiserAction,
    UsersExport,
    TeamsExport,
)
"""Every message, for the generated OpenAPI components."""

REF_TEMPLATE = "#/components/schemas/{name}"


def _ecma_patterns(node: Any) -> Any:
    # Types check "^…\Z" (Python's "$" accepts a trailing newline); JSON Schema's "$" does
    # not, and "\Z" is not ECMA-262, so the document says "^…$".
    if isinstance(node, dict):
        out = {k: _ecma_patterns(v) for k, v in node.items()}
        pattern = out.get("pattern")
        if isinstance(pattern, str) and pattern.endswith(r"\Z"):
            out["pattern"] = pattern[:-2] + "$"
        return out
    if isinstance(node, list):
        return [_ecma_patterns(v) for v in node]
    return node


def message_schemas() -> dict[str, dict[str, Any]]:
    """name -> JSON Schema for every message in ``MESSAGES`` (and the structs they hold)."""
    _refs, components = msgspec.json.schema_components(MESSAGES, ref_template=REF_TEMPLATE)
    schemas: dict[str, dict[str, Any]] = _ecma_patterns(components)
    return schemas
