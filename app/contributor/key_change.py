"""A project's coordinator signs with another key than the one pinned at join.

Its tasks are refused (``UntrustedError``) and the project stops; the engine asks the
coordinator which key it uses now (``key_change_of``) so the volunteer can compare the
fingerprint with the organiser's. Only on their explicit say-so, naming that fingerprint,
is the new key pinned (``accept_key_change``), keeping this machine's identity and credit.
"""

from __future__ import annotations

import logging

from app.contributor.client import ClientError
from app.contributor.credentials import CredentialStore, ProjectCredentials
from app.contributor.joining import KeyChange, accept_new_key, detect_key_change

__all__ = ["accept_key_change", "key_change_of"]

log = logging.getLogger(__name__)


def key_change_of(creds: ProjectCredentials, *, insecure: bool) -> KeyChange | None:
    """The key the project's coordinator signs with now, if not the pinned one; None when
    it is the pinned one or the coordinator cannot be asked."""
    try:
        return detect_key_change(creds, insecure=insecure)
    except ClientError as exc:
        log.info("could not ask %s for its key: %s", creds.project, exc)
        return None


def accept_key_change(
    credentials: CredentialStore,
    creds: ProjectCredentials | None,
    change: KeyChange | None,
    fingerprint: str,
) -> None:
    """Pin ``change``'s key for the project of ``creds`` if ``fingerprint`` names it;
    ClientError (and nothing changed) when no change waits or the fingerprint differs."""
    if creds is None or change is None:
        raise ClientError("no key change is waiting to be accepted for this project")
    if fingerprint.strip() != change.new_fingerprint:
        raise ClientError(
            f"the project now signs with {change.new_fingerprint}, not {fingerprint!r}; "
            "nothing was changed"
        )
    accept_new_key(credentials, creds, change)
