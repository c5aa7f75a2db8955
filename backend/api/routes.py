"""The route table as data: each route's path, method, handler and what it answers.

The router (``backend.wsgi``) matches requests against it and the OpenAPI document
(``backend.openapi``) is generated from it and the message types of
``federated.protocol``, so the two cannot disagree. A path's ``{name}`` segments are
captured and passed to the handler by name; handlers validate them before they touch
storage.
"""

from __future__ import annotations

from backend.api import models, pages, projects, provenance, stats, system, tasks
from backend.api.public_routes import EXPORT_ROUTES, PROFILE_PAGE_ROUTES
from backend.api.route_types import API, Answer, Media, Param, Route
from federated import protocol as p

__all__ = ["API", "HTML_ROUTES", "ROUTE_TABLE", "Answer", "Media", "Param", "Route"]


_P = f"{API}/projects/{{project}}"
_V = f"{_P}/versions/{{version}}"
_T = f"{_P}/tasks/{{task_id}}"
_JSON_BODY = (400, 413, 415)
_LIMITED = (429,)

UPLOAD_DESCRIPTION = (
    "The body streams to disk under the task's max_payload_bytes. Checks, in order, "
    "committing nothing on failure: manifest parse (strict: canonical JSON, no duplicate "
    "or unknown fields), signature, live lease owned by the caller, manifest matches the "
    "task, payload digest, payload validation. The same payload again answers 200 with the "
    "first receipt; another payload for an answered task is 409. A final refusal (400 "
    "bad_request/bad_json, 403 bad_signature, 409 wrong_base, 413, 415, 422) ends the task "
    "for good: it is never leased again, and later uploads and heartbeats for it answer 410 "
    "task_rejected. 400 incomplete_body (the body was cut short) does not: send it again. "
    "Resumable: the prefix of a body cut short is kept for the lease's owner; ask GET on "
    "this path how much is held and send the rest with Content-Range and Content-Digest "
    "(one chunk per request: 202 with the progress, the last one the receipt). A chunk's "
    "own refusals (400 bad_content_range, bad_content_digest, chunk_digest_mismatch; 409 "
    "upload_offset_mismatch, upload_in_progress) are never final and store nothing."
)

_MANIFEST_PARAMS = (
    Param(
        "X-Barnraise-Manifest",
        "header",
        "base64 of canonical_json(UpdateManifest).",
        {
            "type": "string",
            "pattern": r"^[A-Za-z0-9+/]*={0,2}$",
            "minLength": 4,
            "maxLength": p.MAX_MANIFEST_HEADER_BYTES,
        },
        required=True,
    ),
    Param(
        "X-Barnraise-Signature",
        "header",
        "base64 client signature over the exact manifest bytes.",
        {"$ref": "#/components/schemas/Signature"},
        required=True,
    ),
)

_UPDATE_PARAM = Param(
    "update",
    "query",
    "The update: its id (from the receipt) or its payload digest.",
    {"type": "string", "pattern": p.ID_PATTERN},
    required=True,
)

ROUTE_TABLE: tuple[Route, ...] = (
    Route(
        "healthz",
        "GET",
        "/healthz",
        system.healthz,
        "Liveness check, and whether every project's aggregation is on time.",
        "ops",
        {
            200: Answer("The server is up and no aggregation is overdue.", p.Health),
            503: Answer(
                "Up, but some project's aggregation is overdue (named), or the disk is full.",
                p.Health,
            ),
        },
    ),
    Route(
        "metrics",
        "GET",
        "/metrics",
        system.metrics,
        "Prometheus metrics, text exposition format.",
        "ops",
        {200: Answer("Metrics text.", media="text")},
    ),
    Route(
        "page_index",
        "GET",
        "/",
        pages.index_page,
        "HTML: the projects on this server.",
        "pages",
        {200: Answer("HTML page.", media="html")},
        html_errors=True,
    ),
    Route(
        "page_model_card",
        "GET",
        "/p/{project}/model",
        pages.model_card_page,
        "HTML: the model card of a project's current (or final) model, and how to take it away.",
        "pages",
        {200: Answer("HTML page.", media="html")},
        errors=(400, 404),
        html_errors=True,
        trailing_slash=True,
    ),
    *PROFILE_PAGE_ROUTES,
    Route(
        "page_project",
        "GET",
        "/p/{project}",
        pages.project_page,
        "HTML: a project's leaderboard, model progress and join instructions.",
        "pages",
        {200: Answer("HTML page.", media="html")},
        errors=(400, 404),
        html_errors=True,
        trailing_slash=True,
    ),
    Route(
        "openapi",
        "GET",
        f"{API}/openapi.json",
        system.openapi,
        "This document.",
        "ops",
        {200: Answer("OpenAPI 3.1 document.", None)},
    ),
    Route(
        "list_projects",
        "GET",
        f"{API}/projects",
        projects.list_projects,
        "Every project on this server.",
        "projects",
        {200: Answer("The projects.", p.ProjectList)},
        _LIMITED,
    ),
    Route(
        "show_project",
        "GET",
        _P,
        projects.show_project,
        "One project: recipe, hyperparameters, strategy, key, version.",
        "projects",
        {200: Answer("The project.", p.Project)},
        (400, 404, 429),
    ),
    Route(
        "challenge",
        "POST",
        f"{_P}/challenge",
        projects.new_challenge,
        "A single-use challenge to sign when joining (proof of possession).",
        "join",
        {200: Answer("A fresh challenge.", p.Challenge)},
        (400, 404, 410, 429, 507),
    ),
    Route(
        "join",
        "POST",
        f"{_P}/join",
        projects.join_project,
        "Register a public key and get a client id and bearer token.",
        "join",
        {201: Answer("Joined.", p.JoinResponse)},
        (*_JSON_BODY, 403, 404, 410, 429, 503, 507),
        body=p.JoinRequest,
    ),
    Route(
        "lease_task",
        "POST",
        f"{_P}/tasks/lease",
        tasks.lease_task,
        "Lease a training task (long poll with wait).",
        "tasks",
        {
            200: Answer("A task, signed with the project key.", p.SignedTask),
            204: Answer(
                "No work now; ask again after Retry-After.", media=None, headers=("Retry-After",)
            ),
        },
        (400, 401, 403, 404, 410, 429, 503, 507),
        bearer=True,
        params=(
            Param(
                "wait",
                "query",
                f"Seconds to wait for work before answering 204; clamped to "
                f"[0, {p.MAX_LONG_POLL_S:g}]. Default 0.",
                {"type": "number", "minimum": 0, "maximum": p.MAX_LONG_POLL_S},
            ),
        ),
    ),
    Route(
        "heartbeat",
        "POST",
        f"{_T}/heartbeat",
        tasks.heartbeat_task,
        "Extend a live lease.",
        "tasks",
        {200: Answer("The new deadline.", p.Heartbeat)},
        (400, 401, 403, 404, 409, 410, 429, 507),
        bearer=True,
    ),
    Route(
        "release",
        "POST",
        f"{_T}/release",
        tasks.release_task,
        "Give a leased task back to the pool (a task already released or rejected: 204, "
        "nothing changes).",
        "tasks",
        {204: Answer("Released.", media=None)},
        (400, 401, 403, 404, 409, 410, 429, 507),
        bearer=True,
    ),
    Route(
        "upload_update",
        "PUT",
        f"{_T}/update",
        tasks.upload_update,
        "Upload the update payload with its signed manifest (idempotent).",
        "updates",
        {
            201: Answer("Accepted and credited.", p.Receipt),
            200: Answer("Retry of an accepted upload: the first receipt.", p.Receipt),
            202: Answer(
                "A resumed chunk stored; send the next from the offset.",
                p.UploadProgress,
                headers=("Upload-Offset",),
            ),
        },
        (400, 401, 403, 404, 409, 410, 413, 415, 422, 429, 503, 507),
        bearer=True,
        body="binary",
        description=UPLOAD_DESCRIPTION,
        params=(
            *_MANIFEST_PARAMS,
            Param(
                "Content-Range",
                "header",
                "A resumed chunk: bytes FIRST-LAST/TOTAL, FIRST the offset held.",
                {"type": "string", "maxLength": p.limits.MAX_CONTENT_RANGE_CHARS},
            ),
            Param(
                "Content-Digest",
                "header",
                "A resumed chunk's sha-256 (RFC 9530): sha-256=:BASE64:. Required with "
                "Content-Range.",
                {"type": "string", "maxLength": p.limits.MAX_CONTENT_DIGEST_CHARS},
            ),
        ),
    ),
    Route(
        "upload_progress",
        "GET",
        f"{_T}/update",
        tasks.upload_progress,
        "How much of the upload signed by this manifest the coordinator holds (resume).",
        "updates",
        {
            200: Answer(
                "The offset to resume from (0: none held), or the receipt if the task "
                "already has this update.",
                p.UploadProgress,
                headers=("Upload-Offset",),
            )
        },
        (400, 401, 403, 404, 409, 410, 422, 429),
        bearer=True,
        params=_MANIFEST_PARAMS,
    ),
    Route(
        "current_model",
        "GET",
        f"{_P}/models/current",
        models.current_model,
        "Which model version and digest is current, signed.",
        "models",
        {200: Answer("The current model.", p.SignedModel)},
        (400, 404, 429),
    ),
    Route(
        "download_model",
        "GET",
        f"{_P}/models/{{digest}}",
        models.download_model,
        "Model bytes by digest, resumable (Range) and cacheable (ETag).",
        "models",
        {
            200: Answer(
                "The whole model (safetensors).", media="binary", headers=("ETag", "Accept-Ranges")
            ),
            206: Answer(
                "The requested byte range.", media="binary", headers=("ETag", "Content-Range")
            ),
            304: Answer(
                "Not modified (If-None-Match matched the ETag).", media=None, headers=("ETag",)
            ),
        },
        (400, 404, 416, 429),
        params=(
            Param(
                "Range",
                "header",
                "One byte range, e.g. bytes=1024-.",
                {"type": "string", "maxLength": 200},
            ),
            Param(
                "If-None-Match",
                "header",
                "An ETag seen before.",
                {"type": "string", "maxLength": 200},
            ),
        ),
    ),
    Route(
        "leaderboard",
        "GET",
        f"{_P}/leaderboard",
        stats.leaderboard,
        f"Contributors and teams ranked by credit ({p.messages.CREDIT_UNIT}).",
        "stats",
        {200: Answer("The leaderboard.", p.Leaderboard)},
        (400, 404, 429),
    ),
    *EXPORT_ROUTES,
    Route(
        "stats",
        "GET",
        f"{_P}/stats",
        stats.project_stats,
        "The model's progress over versions.",
        "stats",
        {200: Answer("Per-version metrics and the chain of versions.", p.Stats)},
        (400, 404, 429),
    ),
    Route(
        "version_manifest",
        "GET",
        f"{_V}/manifest",
        provenance.version_manifest,
        "Any version's signed manifest: its model, parent and updates root (provenance).",
        "provenance",
        {200: Answer("The version's manifest and its signature.", p.SignedModel)},
        (400, 404, 429),
    ),
    Route(
        "version_proof",
        "GET",
        f"{_V}/proof",
        provenance.version_proof,
        "The proof that an update is one of the updates under a version's updates_root.",
        "provenance",
        {200: Answer("The inclusion proof.", p.InclusionProof)},
        (400, 404, 429),
        params=(_UPDATE_PARAM,),
    ),
    Route(
        "update_proof",
        "GET",
        f"{_P}/proof",
        provenance.update_proof,
        "The proof that an update is in the version it was aggregated into.",
        "provenance",
        {200: Answer("The inclusion proof, naming that version.", p.InclusionProof)},
        (400, 404, 429),
        params=(_UPDATE_PARAM,),
    ),
    Route(
        "me",
        "GET",
        f"{_P}/me",
        stats.me,
        "The caller's credit, rank and update counts.",
        "stats",
        {200: Answer("This client.", p.Me)},
        (400, 401, 403, 404, 429),
        bearer=True,
    ),
    Route(
        "update_status",
        "GET",
        f"{_P}/updates/{{update_id}}",
        stats.update_status,
        "What became of one of the caller's accepted updates: aggregated, pending or kept "
        "out (with the verdict), and whether its credit is granted.",
        "stats",
        {200: Answer("The update's status.", p.UpdateStatus)},
        (400, 401, 404, 429),
        bearer=True,
    ),
)
"""Order matters only where paths overlap: models/current before models/{digest}."""

HTML_ROUTES = frozenset(r.name for r in ROUTE_TABLE if r.html_errors)
