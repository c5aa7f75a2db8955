"""Every stable error code of the protocol and the HTTP status it is answered with.

The coordinator raises coded errors and maps them to statuses only through
``ERROR_STATUS``; the contributor classifies answers by code with the same table.
"""

from __future__ import annotations

from federated.errors import UPDATE_REJECTION_CODES, FederatedError

PAYLOAD_CODES: tuple[str, ...] = UPDATE_REJECTION_CODES
"""The codes of ``federated.errors.UpdateRejected``, answered as 422 under the same name."""

SCREENING_CODES: tuple[str, ...] = (
    "too_many_examples",
    "empty_update",
    "echoes_base",
    "duplicate_payload",
)
"""Upload refusals of an update that is well formed but carries no work of its own: more
examples claimed than the task gave, a delta of (almost) no length, the base model sent
back, a payload that another update already sent. 422, final, no credit."""

VERDICT_CODES: tuple[str, ...] = (
    "norm_outlier",
    "replication_mismatch",
    "harms_model",
    "version_gate",
    "banned",
    "revoked",
)
"""Why an accepted update was kept out of its aggregate (``UpdateStatus.verdict``): its
norm was far above the median of the updates aggregated with it; the coordinator trained
its task again and got something else; the version was worse on held-out data with it
than without it; or no version made of it and the others was good enough to publish.
Its credit is withheld. ``banned`` and ``revoked``: an organiser set it aside before it
was aggregated, banning its contributor (``barnraise-backend ban --revoke``) or revoking
that update alone (``barnraise-backend revoke``)."""

ERROR_STATUS: dict[str, int] = {
    "bad_id": 400,
    "bad_json": 400,
    "bad_request": 400,
    "bad_challenge": 400,
    "incomplete_body": 400,
    "bad_content_range": 400,
    "bad_content_digest": 400,
    "chunk_digest_mismatch": 400,
    "missing_token": 401,
    "bad_token": 401,
    "invite_required": 403,
    "bad_invite": 403,
    "bad_signature": 403,
    "not_your_task": 403,
    "banned": 403,
    "not_found": 404,
    "unknown_project": 404,
    "unknown_task": 404,
    "method_not_allowed": 405,
    "wrong_base": 409,
    "task_already_answered": 409,
    "name_taken": 409,
    "upload_offset_mismatch": 409,
    "upload_in_progress": 409,
    "project_closed": 410,
    "project_finished": 410,
    "privacy_budget_spent": 410,
    "lease_expired": 410,
    "task_rejected": 410,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "request_timeout": 408,
    "range_not_satisfiable": 416,
    "manifest_mismatch": 422,
    "digest_mismatch": 422,
    **dict.fromkeys(PAYLOAD_CODES, 422),
    **dict.fromkeys(SCREENING_CODES, 422),
    "rate_limited": 429,
    "too_many_connections": 429,
    "headers_too_large": 431,
    "project_paused": 503,
    "unavailable": 503,
    "insufficient_storage": 507,
    "internal_error": 500,
}
"""Every stable error code and its status: the table in docs/protocol.md, as data."""

FINAL_UPLOAD_CODES: frozenset[str] = frozenset(
    {
        "bad_request",
        "bad_json",
        "bad_signature",
        "payload_too_large",
        "unsupported_media_type",
        "wrong_base",
        "manifest_mismatch",
        "digest_mismatch",
        *PAYLOAD_CODES,
        *SCREENING_CODES,
    }
)
"""Upload refusals that end the task for good (status ``rejected``): sending the same
update again would be refused again, so the task is never leased again and later uploads
and heartbeats for it answer 410 ``task_rejected``. Everything else leaves the task as it
was: server errors and 429 (try again), 401 and ``unknown_task``/``not_your_task`` (the
caller does not own the task, so it must not be able to end it), ``incomplete_body`` (a
connection cut mid-upload: send it again), ``lease_expired``, ``task_already_answered``
``project_closed`` and ``project_finished`` (the task is over already), the resumable
upload's own codes (``RESUME_CODES``: ask the offset and send the chunk again), and ``banned`` (the caller may not work
for the project at all: the ban ended its leases already, and after an unban it starts
from new tasks)."""


RESUME_CODES: frozenset[str] = frozenset(
    {
        "bad_content_range",
        "bad_content_digest",
        "chunk_digest_mismatch",
        "upload_offset_mismatch",
        "upload_in_progress",
    }
)
"""Refusals of one chunk of a resumable upload (docs/protocol.md "Resumable upload"):
never final, nothing is appended. ``bad_content_range``: ``Content-Range`` malformed,
or not of this payload (its total is another size, its length not the body's);
``bad_content_digest``: ``Content-Digest`` missing or malformed; ``chunk_digest_mismatch``:
the chunk is not what its digest names (send it again); ``upload_offset_mismatch``: the
chunk does not start where the held part ends (``Upload-Offset`` says where);
``upload_in_progress``: another request is writing this upload now (``Retry-After``)."""


class ProtocolError(FederatedError, ValueError):
    """A message that breaks the contract: ``code`` is one of ``ERROR_STATUS``.

    ``message`` names what was wrong and where (the field's JSON path), so the coordinator
    can answer it as is and the contributor can show it as is.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_STATUS:
            raise ValueError(f"{code!r} is not a protocol error code")
        super().__init__(message)
        self.code = code
        self.message = message

    @property
    def status(self) -> int:
        return ERROR_STATUS[self.code]
