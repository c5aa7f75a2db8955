"""The backend's OpenAPI 3.1 description of docs/protocol.md, built as plain data.

API::

    build_openapi(server_url: str | None = None) -> dict[str, Any]

Serve ``json.dumps(build_openapi())`` at ``GET /api/v1/openapi.json``
(``Content-Type: application/json``); the document is the same for every request, so it can
be built once and cached. ``server_url`` (e.g. ``"https://host"``) adds a ``servers`` entry;
without it clients resolve the paths against wherever they fetched the document.

Every endpoint in the protocol's table is here with its path parameter patterns, bodies,
headers, and every status it documents; a unit test checks the table and this document agree.
Response schemas allow extra properties (the server may add fields); request schemas do not.
Each ``operationId`` is the route name in ``backend.wsgi.ROUTES``.
"""

from __future__ import annotations

import copy
from typing import Any

from backend.pages.views import CREDIT_UNIT
from federated.errors import UPDATE_REJECTION_CODES

OPENAPI_VERSION = "3.1.0"
API_VERSION = "1"

Schema = dict[str, Any]

PROJECT_NAME_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"
DIGEST_PATTERN = r"^[0-9a-f]{64}$"
B64_32_PATTERN = r"^[A-Za-z0-9+/]{43}=$"  # 32 raw bytes, standard base64, padded
B64_64_PATTERN = r"^[A-Za-z0-9+/]{86}==$"  # 64 raw bytes (an Ed25519 signature)
B64_PATTERN = r"^[A-Za-z0-9+/]*={0,2}$"

ERROR_CODES = (
    "bad_id",
    "bad_json",
    "bad_request",
    "payload_too_large",
    "unsupported_media_type",
    "not_found",
    "unknown_project",
    "method_not_allowed",
    "missing_token",
    "bad_token",
    "invite_required",
    "bad_invite",
    "bad_challenge",
    "bad_signature",
    "project_closed",
    "project_paused",
    "unknown_task",
    "not_your_task",
    "lease_expired",
    "task_rejected",
    "incomplete_body",
    "wrong_base",
    "manifest_mismatch",
    "digest_mismatch",
    "task_already_answered",
    "rate_limited",
    *UPDATE_REJECTION_CODES,
)
"""The stable error codes of docs/protocol.md (the server may add others, e.g. internal_error)."""


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _obj(properties: dict[str, Schema], required: list[str], *, closed: bool = False) -> Schema:
    schema: Schema = {"type": "object", "properties": properties, "required": required}
    if closed:
        schema["additionalProperties"] = False
    return schema


_INT = {"type": "integer", "minimum": 0}
_UNIX = {"type": "integer", "minimum": 0, "description": "Unix seconds."}
_NUM = {"type": "number"}
_STR = {"type": "string"}


def _schemas() -> dict[str, Schema]:
    hparams = {
        "type": "object",
        "description": "Resolved hyperparameters: name -> integer, number, string or boolean.",
        "additionalProperties": {"type": ["integer", "number", "string", "boolean"]},
    }
    return {
        "Error": _obj(
            {
                "error": _obj(
                    {
                        "code": {
                            "type": "string",
                            "pattern": r"^[a-z][a-z0-9_]*$",
                            "description": "Stable machine-readable code, one of: "
                            + ", ".join(ERROR_CODES)
                            + ".",
                            "examples": ["unknown_project"],
                        },
                        "message": {
                            "type": "string",
                            "description": "What was wrong and what to do next.",
                        },
                    },
                    ["code", "message"],
                )
            },
            ["error"],
        ),
        "ProjectName": {"type": "string", "pattern": PROJECT_NAME_PATTERN},
        "Id": {"type": "string", "pattern": ID_PATTERN},
        "Digest": {"type": "string", "pattern": DIGEST_PATTERN, "description": "sha256, hex."},
        "PublicKey": {
            "type": "string",
            "pattern": B64_32_PATTERN,
            "description": "Raw 32-byte Ed25519 public key, standard base64 with padding.",
        },
        "Signature": {
            "type": "string",
            "pattern": B64_64_PATTERN,
            "description": "Raw 64-byte Ed25519 signature, standard base64 with padding.",
        },
        "ProjectSummary": _obj(
            {
                "name": _ref("ProjectName"),
                "description": _STR,
                "recipe": _STR,
                "mode": {"enum": ["sync", "async"]},
                "status": {"enum": ["open", "paused", "closed"]},
                "current_version": _INT,
                "page_url": _STR,
            },
            ["name"],
        ),
        "Project": _obj(
            {
                "name": _ref("ProjectName"),
                "description": _STR,
                "recipe": _STR,
                "recipe_version": _INT,
                "hparams": hparams,
                "data_mode": {"enum": ["builtin", "local"]},
                "data_columns": {
                    "oneOf": [
                        {"type": "null"},
                        _obj(
                            {"label": _STR, "features": {"type": "array", "items": _STR}},
                            ["label", "features"],
                        ),
                    ]
                },
                "strategy": {
                    "type": "object",
                    "properties": {"name": _STR},
                    "required": ["name"],
                    "description": "The aggregation strategy and its settings.",
                },
                "mode": {"enum": ["sync", "async"]},
                "status": {"enum": ["open", "paused", "closed"]},
                "current_version": _INT,
                "model_digest": _ref("Digest"),
                "public_key": _ref("PublicKey"),
                "key_fingerprint": _STR,
                "invite_required": {"type": "boolean"},
                "codec": _STR,
                "page_url": _STR,
            },
            [
                "name",
                "recipe",
                "recipe_version",
                "hparams",
                "data_mode",
                "strategy",
                "mode",
                "status",
                "current_version",
                "public_key",
                "key_fingerprint",
                "invite_required",
            ],
        ),
        "ProjectList": _obj(
            {"projects": {"type": "array", "items": _ref("ProjectSummary")}}, ["projects"]
        ),
        "Challenge": _obj(
            {
                "challenge": {
                    "type": "string",
                    "pattern": B64_32_PATTERN,
                    "description": "32 random bytes, base64. Single use; expires after 5 minutes.",
                },
                "expires_at": _UNIX,
            },
            ["challenge", "expires_at"],
        ),
        "JoinRequest": _obj(
            {
                "display_name": {
                    "type": "string",
                    "minLength": 1,
                    "maxLength": 64,
                    "pattern": r"\S",
                    "description": "1-64 characters after stripping; any text (pages escape it).",
                },
                "team": {
                    "type": ["string", "null"],
                    "maxLength": 64,
                    "description": "0-64 characters; null or empty for no team.",
                },
                "public_key": _ref("PublicKey"),
                "challenge": {"type": "string", "pattern": B64_32_PATTERN},
                "signature": {
                    "allOf": [_ref("Signature")],
                    "description": "Client signature over canonical_json({challenge, project, "
                    'public_key, "purpose": "join"}): proof of possession of the key.',
                },
                "invite": {"type": ["string", "null"], "maxLength": 256},
            },
            ["display_name", "public_key", "challenge", "signature"],
            closed=True,
        ),
        "JoinResponse": _obj(
            {
                "client_id": _ref("Id"),
                "token": {
                    "type": "string",
                    "minLength": 1,
                    "description": "Bearer token; shown once, the server stores its sha256.",
                },
                "project": _ref("Project"),
            },
            ["client_id", "token", "project"],
        ),
        "TaskManifest": _obj(
            {
                "task_id": _ref("Id"),
                "project": _ref("ProjectName"),
                "client_id": _ref("Id"),
                "base_version": _INT,
                "base_digest": _ref("Digest"),
                "recipe": _STR,
                "recipe_version": _INT,
                "hparams": hparams,
                "shard_index": _INT,
                "max_examples": {"type": "integer", "minimum": 1},
                "codec": _STR,
                "max_update_norm": {"type": "number", "exclusiveMinimum": 0},
                "max_payload_bytes": {"type": "integer", "minimum": 1},
                "issued_at": _UNIX,
                "deadline": {
                    **_UNIX,
                    "description": "Unix seconds: the lease ends unless a heartbeat extends it.",
                },
                "useful_until": {
                    **_UNIX,
                    "description": "Unix seconds: until then the update is expected to be "
                    "used (aggregated); one arriving later is likely refused as wrong_base. "
                    "A contributor that cannot finish by then should give the task back.",
                },
            },
            [
                "task_id",
                "project",
                "client_id",
                "base_version",
                "base_digest",
                "recipe",
                "recipe_version",
                "hparams",
                "shard_index",
                "max_examples",
                "codec",
                "max_update_norm",
                "max_payload_bytes",
                "issued_at",
                "deadline",
                "useful_until",
            ],
        ),
        "SignedTask": _obj(
            {
                "manifest": _ref("TaskManifest"),
                "signature": {
                    "allOf": [_ref("Signature")],
                    "description": "Project-key signature over canonical_json(manifest).",
                },
            },
            ["manifest", "signature"],
        ),
        "Heartbeat": _obj({"deadline": _UNIX}, ["deadline"]),
        "UpdateManifest": _obj(
            {
                "project": _ref("ProjectName"),
                "task_id": _ref("Id"),
                "client_id": _ref("Id"),
                "base_digest": _ref("Digest"),
                "payload_digest": _ref("Digest"),
                "codec": _STR,
                "num_examples": {"type": "integer", "minimum": 1},
                "metrics": {
                    "type": "object",
                    "properties": {
                        "loss_before": _NUM,
                        "loss_after": _NUM,
                        "seconds": _NUM,
                        "examples_per_second": _NUM,
                    },
                    "additionalProperties": {"type": "number"},
                },
            },
            [
                "project",
                "task_id",
                "client_id",
                "base_digest",
                "payload_digest",
                "codec",
                "num_examples",
                "metrics",
            ],
            closed=True,
        ),
        "Receipt": _obj(
            {
                "update_id": _STR,
                "task_id": _ref("Id"),
                "payload_digest": _ref("Digest"),
                "accepted_at": _UNIX,
                "credit": {"type": "number", "minimum": 0},
                "credit_unit": {"const": CREDIT_UNIT},
            },
            ["update_id", "task_id", "payload_digest", "accepted_at", "credit", "credit_unit"],
        ),
        "ModelManifest": _obj(
            {
                "project": _ref("ProjectName"),
                "version": _INT,
                "digest": _ref("Digest"),
                "created_at": _UNIX,
            },
            ["project", "version", "digest", "created_at"],
        ),
        "SignedModel": _obj(
            {"manifest": _ref("ModelManifest"), "signature": _ref("Signature")},
            ["manifest", "signature"],
        ),
        "LeaderboardContributor": _obj(
            {
                "rank": {"type": "integer", "minimum": 1},
                "name": _STR,
                "team": {"type": ["string", "null"]},
                "credit": _NUM,
                "recent_credit": _NUM,
                "updates_accepted": _INT,
                "updates_rejected": _INT,
                "last_seen": {"type": ["number", "null"]},
            },
            ["name", "credit"],
        ),
        "LeaderboardTeam": _obj(
            {
                "rank": {"type": "integer", "minimum": 1},
                "name": _STR,
                "members": _INT,
                "credit": _NUM,
                "recent_credit": _NUM,
                "updates_accepted": _INT,
            },
            ["name", "credit"],
        ),
        "Leaderboard": _obj(
            {
                "contributors": {"type": "array", "items": _ref("LeaderboardContributor")},
                "teams": {"type": "array", "items": _ref("LeaderboardTeam")},
                "credit_unit": {"const": CREDIT_UNIT},
            },
            ["contributors", "teams"],
        ),
        "VersionStats": _obj(
            {
                "version": _INT,
                "digest": _ref("Digest"),
                "created_at": _NUM,
                "metrics": {
                    "type": "object",
                    "description": "Held-out evaluation, e.g. accuracy and loss.",
                    "additionalProperties": {"type": ["number", "null"]},
                },
                "updates": _INT,
                "contributors": _INT,
            },
            ["version", "digest", "created_at", "metrics"],
        ),
        "Stats": _obj(
            {
                "versions": {"type": "array", "items": _ref("VersionStats")},
                "live_leases": _INT,
                "pending_updates": _INT,
                "updates_aggregated": {
                    **_INT,
                    "description": "Accepted updates that went into a published version.",
                },
                "updates_dropped": {
                    **_INT,
                    "description": "Accepted updates dropped as too stale before aggregation.",
                },
                "tasks_rejected": {
                    **_INT,
                    "description": "Tasks ended for good by a final refusal of their update.",
                },
            },
            ["versions"],
        ),
        "Me": _obj(
            {
                "client_id": _ref("Id"),
                "display_name": _STR,
                "team": {"type": ["string", "null"]},
                "credit": _NUM,
                "recent_credit": _NUM,
                "rank": {"type": ["integer", "null"], "minimum": 1},
                "updates_accepted": _INT,
                "updates_rejected": _INT,
            },
            ["credit", "updates_accepted", "updates_rejected"],
        ),
        "Health": _obj({"status": {"const": "ok"}}, ["status"]),
    }


def _headers() -> dict[str, Schema]:
    return {
        "RetryAfter": {
            "description": "Seconds to wait before trying again.",
            "schema": {"type": "integer", "minimum": 0},
            "required": True,
        },
        "ETag": {
            "description": 'The model digest in quotes: "<sha256 hex>".',
            "schema": {"type": "string", "pattern": r'^"[0-9a-f]{64}"$'},
        },
        "AcceptRanges": {"schema": {"const": "bytes"}},
        "ContentRange": {
            "description": "bytes START-END/TOTAL",
            "schema": {"type": "string", "pattern": r"^bytes (\d+-\d+|\*)/\d+$"},
        },
    }


def _error(description: str, *, retry_after: bool = False) -> Schema:
    response: Schema = {
        "description": description,
        "content": {"application/json": {"schema": _ref("Error")}},
    }
    if retry_after:
        response["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
    return response


def _responses() -> dict[str, Schema]:
    return {
        "BadRequest": _error(
            "bad_id, bad_json, bad_request, bad_challenge, or incomplete_body (an upload "
            "cut short: send it again)."
        ),
        "Unauthorized": _error("missing_token or bad_token: join again to get a token."),
        "Forbidden": _error("invite_required, bad_invite, bad_signature or not_your_task."),
        "NotFound": _error("not_found, unknown_project or unknown_task."),
        "Conflict": _error("wrong_base or task_already_answered."),
        "Gone": _error(
            "project_closed, lease_expired, or task_rejected (the task's update was refused "
            "for good: lease a new task)."
        ),
        "PayloadTooLarge": _error("payload_too_large: the body is over the cap."),
        "UnsupportedMediaType": _error("unsupported_media_type."),
        "Unprocessable": _error(
            "manifest_mismatch, digest_mismatch, or a payload code (unknown_tensor, "
            "missing_tensor, shape_mismatch, dtype_mismatch, non_finite, norm_too_large, "
            "bad_payload, unknown_codec)."
        ),
        "TooManyRequests": _error("rate_limited.", retry_after=True),
        "ServiceUnavailable": _error("project_paused or unavailable.", retry_after=True),
    }


def _r(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _json_ok(description: str, schema: str) -> Schema:
    return {
        "description": description,
        "content": {"application/json": {"schema": _ref(schema)}},
    }


_PROJECT_PARAM = {"$ref": "#/components/parameters/Project"}
_TASK_PARAM = {"$ref": "#/components/parameters/TaskId"}
_BEARER: list[dict[str, list[str]]] = [{"bearerAuth": []}]


def _with_errors(ok: dict[str, Schema], *names: str) -> dict[str, Schema]:
    codes = {
        "BadRequest": "400",
        "Unauthorized": "401",
        "Forbidden": "403",
        "NotFound": "404",
        "Conflict": "409",
        "Gone": "410",
        "PayloadTooLarge": "413",
        "UnsupportedMediaType": "415",
        "Unprocessable": "422",
        "TooManyRequests": "429",
        "ServiceUnavailable": "503",
    }
    responses = dict(ok)
    for name in names:
        responses[codes[name]] = _r(name)
    return responses


def _paths() -> dict[str, Schema]:
    api = "/api/v1"
    project_base = f"{api}/projects/{{project}}"
    task_base = f"{project_base}/tasks/{{task_id}}"
    json_body_errors = ("BadRequest", "PayloadTooLarge", "UnsupportedMediaType")
    auth_errors = ("Unauthorized",)
    return {
        "/healthz": {
            "get": {
                "operationId": "healthz",
                "summary": "Liveness check.",
                "tags": ["ops"],
                "responses": {"200": _json_ok("The server is up.", "Health")},
            }
        },
        "/metrics": {
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics, text exposition format 0.0.4.",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "Metrics text.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
            }
        },
        f"{api}/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document.",
                "tags": ["ops"],
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1 document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        f"{api}/projects": {
            "get": {
                "operationId": "list_projects",
                "summary": "Every project on this server.",
                "tags": ["projects"],
                "responses": _with_errors(
                    {"200": _json_ok("The projects.", "ProjectList")}, "TooManyRequests"
                ),
            }
        },
        project_base: {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "show_project",
                "summary": "One project: recipe, hyperparameters, strategy, key, version.",
                "tags": ["projects"],
                "responses": _with_errors(
                    {"200": _json_ok("The project.", "Project")},
                    "BadRequest",
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/challenge": {
            "parameters": [_PROJECT_PARAM],
            "post": {
                "operationId": "challenge",
                "summary": "A single-use challenge to sign when joining (proof of possession).",
                "tags": ["join"],
                "responses": _with_errors(
                    {"200": _json_ok("A fresh challenge.", "Challenge")},
                    "BadRequest",
                    "NotFound",
                    "Gone",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/join": {
            "parameters": [_PROJECT_PARAM],
            "post": {
                "operationId": "join",
                "summary": "Register a public key and get a client id and bearer token.",
                "tags": ["join"],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("JoinRequest")}},
                },
                "responses": _with_errors(
                    {"201": _json_ok("Joined.", "JoinResponse")},
                    *json_body_errors,
                    "Forbidden",
                    "NotFound",
                    "Gone",
                    "TooManyRequests",
                    "ServiceUnavailable",
                ),
            },
        },
        f"{project_base}/tasks/lease": {
            "parameters": [_PROJECT_PARAM],
            "post": {
                "operationId": "lease_task",
                "summary": "Lease a training task (long poll with wait).",
                "tags": ["tasks"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "wait",
                        "in": "query",
                        "required": False,
                        "description": "Seconds to wait for work before answering 204; "
                        "clamped to [0, 30]. Default 0.",
                        "schema": {"type": "number", "minimum": 0, "maximum": 30},
                    }
                ],
                "responses": _with_errors(
                    {
                        "200": _json_ok("A task, signed with the project key.", "SignedTask"),
                        "204": {
                            "description": "No work now; ask again after Retry-After.",
                            "headers": {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}},
                        },
                    },
                    "BadRequest",
                    *auth_errors,
                    "NotFound",
                    "Gone",
                    "TooManyRequests",
                    "ServiceUnavailable",
                ),
            },
        },
        f"{task_base}/heartbeat": {
            "parameters": [_PROJECT_PARAM, _TASK_PARAM],
            "post": {
                "operationId": "heartbeat",
                "summary": "Extend a live lease.",
                "tags": ["tasks"],
                "security": _BEARER,
                "responses": _with_errors(
                    {"200": _json_ok("The new deadline.", "Heartbeat")},
                    "BadRequest",
                    *auth_errors,
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "Gone",
                    "TooManyRequests",
                ),
            },
        },
        f"{task_base}/release": {
            "parameters": [_PROJECT_PARAM, _TASK_PARAM],
            "post": {
                "operationId": "release",
                "summary": "Give a leased task back to the pool (a task already released "
                "or rejected: 204, nothing changes).",
                "tags": ["tasks"],
                "security": _BEARER,
                "responses": _with_errors(
                    {"204": {"description": "Released."}},
                    "BadRequest",
                    *auth_errors,
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "Gone",
                    "TooManyRequests",
                ),
            },
        },
        f"{task_base}/update": {
            "parameters": [_PROJECT_PARAM, _TASK_PARAM],
            "put": {
                "operationId": "upload_update",
                "summary": "Upload the update payload with its signed manifest (idempotent).",
                "description": "The body streams to disk under the task's max_payload_bytes. "
                "Checks, in order, committing nothing on failure: manifest parse, signature, "
                "live lease owned by the caller, manifest matches the task, payload digest, "
                "payload validation. The same payload again answers 200 with the first "
                "receipt; another payload for an answered task is 409. A final refusal "
                "(400 bad_request/bad_json, 403 bad_signature, 409 wrong_base, 413, 415, 422) "
                "ends the task for good: it is never leased again, and later uploads and "
                "heartbeats for it answer 410 task_rejected. 400 incomplete_body (the body "
                "was cut short) does not: send it again.",
                "tags": ["updates"],
                "security": _BEARER,
                "parameters": [
                    {
                        "name": "X-Barnraise-Manifest",
                        "in": "header",
                        "required": True,
                        "description": "base64 of canonical_json(UpdateManifest).",
                        "schema": {
                            "type": "string",
                            "pattern": B64_PATTERN,
                            "minLength": 4,
                            "maxLength": 16384,
                        },
                    },
                    {
                        "name": "X-Barnraise-Signature",
                        "in": "header",
                        "required": True,
                        "description": "base64 client signature over the exact manifest bytes.",
                        "schema": _ref("Signature"),
                    },
                ],
                "requestBody": {
                    "required": True,
                    "description": "The payload from federated.codec.encode_update "
                    "(safetensors, optionally zstd).",
                    "content": {
                        "application/octet-stream": {
                            "schema": {
                                "type": "string",
                                "contentMediaType": "application/octet-stream",
                            }
                        }
                    },
                },
                "responses": _with_errors(
                    {
                        "201": _json_ok("Accepted and credited.", "Receipt"),
                        "200": _json_ok(
                            "Retry of an accepted upload: the first receipt.", "Receipt"
                        ),
                    },
                    "BadRequest",
                    *auth_errors,
                    "Forbidden",
                    "NotFound",
                    "Conflict",
                    "Gone",
                    "PayloadTooLarge",
                    "UnsupportedMediaType",
                    "Unprocessable",
                    "TooManyRequests",
                    "ServiceUnavailable",
                ),
            },
        },
        f"{project_base}/models/current": {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "current_model",
                "summary": "Which model version and digest is current, signed.",
                "tags": ["models"],
                "responses": _with_errors(
                    {"200": _json_ok("The current model.", "SignedModel")},
                    "BadRequest",
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/models/{{digest}}": {
            "parameters": [_PROJECT_PARAM, {"$ref": "#/components/parameters/Digest"}],
            "get": {
                "operationId": "download_model",
                "summary": "Model bytes by digest, resumable (Range) and cacheable (ETag).",
                "tags": ["models"],
                "parameters": [
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "description": "One byte range, e.g. bytes=1024-.",
                        "schema": {"type": "string", "maxLength": 200},
                    },
                    {
                        "name": "If-None-Match",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 200},
                    },
                ],
                "responses": _with_errors(
                    {
                        "200": {
                            "description": "The whole model (safetensors).",
                            "headers": {
                                "ETag": {"$ref": "#/components/headers/ETag"},
                                "Accept-Ranges": {"$ref": "#/components/headers/AcceptRanges"},
                            },
                            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                        },
                        "206": {
                            "description": "The requested byte range.",
                            "headers": {
                                "ETag": {"$ref": "#/components/headers/ETag"},
                                "Content-Range": {"$ref": "#/components/headers/ContentRange"},
                            },
                            "content": {"application/octet-stream": {"schema": {"type": "string"}}},
                        },
                        "304": {
                            "description": "Not modified (If-None-Match matched the ETag).",
                            "headers": {"ETag": {"$ref": "#/components/headers/ETag"}},
                        },
                        "416": {
                            "description": "range_not_satisfiable.",
                            "headers": {
                                "Content-Range": {"$ref": "#/components/headers/ContentRange"}
                            },
                            "content": {"application/json": {"schema": _ref("Error")}},
                        },
                    },
                    "BadRequest",
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/leaderboard": {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "leaderboard",
                "summary": f"Contributors and teams ranked by credit ({CREDIT_UNIT}).",
                "tags": ["stats"],
                "responses": _with_errors(
                    {"200": _json_ok("The leaderboard.", "Leaderboard")},
                    "BadRequest",
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/stats": {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "stats",
                "summary": "The model's progress over versions.",
                "tags": ["stats"],
                "responses": _with_errors(
                    {"200": _json_ok("Per-version metrics.", "Stats")},
                    "BadRequest",
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        f"{project_base}/me": {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "me",
                "summary": "The caller's credit, rank and update counts.",
                "tags": ["stats"],
                "security": _BEARER,
                "responses": _with_errors(
                    {"200": _json_ok("This client.", "Me")},
                    "BadRequest",
                    *auth_errors,
                    "NotFound",
                    "TooManyRequests",
                ),
            },
        },
        "/": {
            "get": {
                "operationId": "page_index",
                "summary": "HTML: the projects on this server.",
                "tags": ["pages"],
                "responses": {
                    "200": {"description": "HTML page.", "content": {"text/html": {"schema": _STR}}}
                },
            }
        },
        "/p/{project}": {
            "parameters": [_PROJECT_PARAM],
            "get": {
                "operationId": "page_project",
                "summary": "HTML: a project's leaderboard, model progress and join instructions.",
                "tags": ["pages"],
                "responses": {
                    "200": {
                        "description": "HTML page.",
                        "content": {"text/html": {"schema": _STR}},
                    },
                    "400": {
                        "description": "Bad project name (HTML).",
                        "content": {"text/html": {"schema": _STR}},
                    },
                    "404": {
                        "description": "No such project (HTML).",
                        "content": {"text/html": {"schema": _STR}},
                    },
                },
            },
        },
    }


def build_openapi(server_url: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document, a fresh deep copy each call (callers may mutate it)."""
    document: dict[str, Any] = {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": "Barnraise coordinator",
            "version": API_VERSION,
            "summary": "Federated training on the computers people already own.",
            "description": "The wire contract between the Barnraise coordinator and its "
            "contributors (docs/protocol.md). JSON control messages, safetensors bodies, "
            "Ed25519 signatures over canonical JSON.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": name}
            for name in ("projects", "join", "tasks", "updates", "models", "stats", "pages", "ops")
        ],
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "responses": _responses(),
            "headers": _headers(),
            "parameters": {
                "Project": {
                    "name": "project",
                    "in": "path",
                    "required": True,
                    "schema": _ref("ProjectName"),
                },
                "TaskId": {
                    "name": "task_id",
                    "in": "path",
                    "required": True,
                    "schema": _ref("Id"),
                },
                "Digest": {
                    "name": "digest",
                    "in": "path",
                    "required": True,
                    "schema": _ref("Digest"),
                },
            },
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from join; the server stores only its sha256.",
                }
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url.rstrip("/") or "/"}]
    return copy.deepcopy(document)
