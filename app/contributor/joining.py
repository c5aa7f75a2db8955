"""Joining a project: preview what the volunteer consents to, register, pin the key.

Also the trust-on-first-use key change: detect that a coordinator signs with a new key and,
only when the volunteer accepts it explicitly, pin the new key while keeping the identity.
"""

from __future__ import annotations

import base64
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from app.contributor import privacy
from app.contributor.client import ClientError, CoordinatorClient, UntrustedError, save_json_atomic
from app.contributor.credentials import (
    CredentialStore,
    ProjectCredentials,
    project_key,
)
from app.contributor.invites import JoinTarget, parse_join_target
from app.contributor.paths import EnginePaths
from federated import protocol
from federated.signing import SigningKey, fingerprint

__all__ = [
    "JoinPreview",
    "KeyChange",
    "accept_new_key",
    "already_joined",
    "complete_join",
    "detect_key_change",
    "preview_join",
    "project_data_path",
    "save_consent",
    "save_project_data_path",
]


@dataclass(frozen=True)
class JoinPreview:
    """What the volunteer consents to: the project as the coordinator describes it
    (``project``: the protocol's ``Project`` as plain JSON values)."""

    target: JoinTarget
    project: dict[str, Any]

    @property
    def fingerprint(self) -> str:
        return fingerprint(str(self.project["public_key"]))

    @property
    def data_mode(self) -> str:
        return str(self.project.get("data_mode", "builtin"))

    def disclosure(
        self, *, display_name: str, team: str | None, data_path: str | None = None
    ) -> list[str]:
        """Each thing that will leave this machine, and what stays, as lines for the user."""
        codec = self.project.get("codec", "?")
        lines = [
            f"Project {self.project['name']!r} at {self.target.server_url}: {self.project.get('description', '')}",
            f"Recipe: {self.project.get('recipe')} v{self.project.get('recipe_version')} "
            "(a built-in training recipe; the server cannot send code)",
            f"Project key fingerprint: {self.fingerprint} (pinned now; tasks signed by any other key are refused)",
        ]
        if self.data_mode == "local":
            lines.append(
                f"Training data: your file {data_path or '(choose with --data PATH)'}; it is read "
                "here and never leaves this machine"
            )
        else:
            lines.append(
                "Training data: a shard of the project's built-in data set (none of your files are read)"
            )
        lines += [
            "What leaves this machine:",
            f"  - your display name {display_name!r}"
            + (f" and team {team!r}" if team else "")
            + ", shown publicly on the project's leaderboard",
            "  - a public key made for this project (the private key stays in your keychain)",
            f"  - per task: the model update (the change to the shared model, codec {codec}), "
            "the number of examples trained on, "
            + (
                "seconds and examples/s (no loss computed on your data)"
                if self.privacy
                else "and loss before/after, seconds and examples/s"
            ),
            "  - your IP address, as with any connection to the server",
        ]
        return lines + privacy.disclosure(self.privacy)

    @property
    def privacy(self) -> dict[str, Any] | None:
        """The project's privacy terms (the protocol's ``PrivacyTerms``), pinned at join."""
        return privacy.normal_terms(self.project.get("privacy"))


def preview_join(text: str, *, insecure: bool = False) -> JoinPreview:
    """Parse ``text`` (page URL, invite link) and fetch the project; raises InviteError,
    ClientError."""
    target = parse_join_target(text)
    client = CoordinatorClient(target.server_url, target.project, insecure=insecure)
    try:
        info = client.get_project()
    finally:
        client.close()
    if info.name != target.project:
        raise ClientError(f"{target.page_url} did not describe project {target.project!r}")
    return JoinPreview(target=target, project=protocol.to_wire(info))


def complete_join(
    preview: JoinPreview,
    credentials: CredentialStore,
    *,
    display_name: str,
    team: str | None = None,
    insecure: bool = False,
) -> ProjectCredentials:
    """Register this machine with the project and store key, token and the pinned key.

    Idempotent: when this machine already joined the project, its key is used again, so the
    coordinator answers with the same client (the same identity and credit) and a fresh
    token; display name and team are updated. Otherwise a new key pair is made."""
    target = preview.target
    existing = already_joined(preview, credentials)
    key = (
        SigningKey.from_private_bytes(base64.b64decode(existing.private_key_b64))
        if existing is not None
        else SigningKey.generate()
    )
    client = CoordinatorClient(
        target.server_url,
        target.project,
        insecure=insecure,
        project_public_key_b64=str(preview.project["public_key"]),
    )
    try:
        answer = client.join(key, display_name=display_name, team=team, invite=target.invite)
    finally:
        client.close()
    if answer.project.public_key != preview.project["public_key"]:
        raise UntrustedError(
            "the project key changed between showing it to you and joining; nothing was saved, try again"
        )
    creds = ProjectCredentials(
        server_url=target.server_url,
        project=target.project,
        client_id=answer.client_id,
        token=answer.token,
        private_key_b64=base64.b64encode(key.private_bytes()).decode("ascii"),
        project_public_key_b64=str(preview.project["public_key"]),
    )
    credentials.save(creds.key, creds)
    return creds


def already_joined(preview: JoinPreview, credentials: CredentialStore) -> ProjectCredentials | None:
    """This machine's identity in the previewed project, if it joined it before."""
    return credentials.load(project_key(preview.target.server_url, preview.target.project))


@dataclass(frozen=True)
class KeyChange:
    """The coordinator now signs with another key than the one pinned at join."""

    project: str
    pinned_fingerprint: str
    new_fingerprint: str
    new_public_key_b64: str

    def describe(self) -> str:
        return (
            f"the key of project {self.project!r} changed: pinned {self.pinned_fingerprint}, "
            f"now {self.new_fingerprint}. Tasks are refused until you check the new "
            "fingerprint with the organiser and accept it, or leave the project"
        )


def detect_key_change(creds: ProjectCredentials, *, insecure: bool = False) -> KeyChange | None:
    """Ask the coordinator which key it signs with now; a KeyChange if it is not the pinned
    one. Raises ClientError when the coordinator cannot be asked."""
    client = CoordinatorClient(creds.server_url, creds.project, insecure=insecure)
    try:
        current = client.get_project().public_key
    finally:
        client.close()
    if current == creds.project_public_key_b64:
        return None
    try:
        new_fingerprint = fingerprint(current)
    except Exception as exc:
        raise UntrustedError(f"the coordinator sent an unusable project key: {exc}") from None
    return KeyChange(
        project=creds.project,
        pinned_fingerprint=fingerprint(creds.project_public_key_b64),
        new_fingerprint=new_fingerprint,
        new_public_key_b64=current,
    )


def accept_new_key(
    credentials: CredentialStore, creds: ProjectCredentials, change: KeyChange
) -> ProjectCredentials:
    """Pin ``change``'s key instead of the old one, keeping client id, token and private key
    (the volunteer's identity and credit). Only on the volunteer's explicit say-so."""
    updated = dataclasses.replace(creds, project_public_key_b64=change.new_public_key_b64)
    credentials.save(updated.key, updated)
    return updated


def save_consent(paths: EnginePaths, creds: ProjectCredentials, preview: JoinPreview) -> None:
    """Keep the privacy terms the volunteer was shown (``app.contributor.privacy``): every
    task of the project must carry exactly these."""
    privacy.consent(paths, creds.key, creds.project, preview.privacy)


def save_project_data_path(
    paths: EnginePaths, key: str, project: str, data_path: str | None
) -> None:
    """Remember the local data file of a local-data project (it never leaves the machine)."""
    save_json_atomic(paths.project_dir(key, project) / "config.json", {"data_path": data_path})


def project_data_path(paths: EnginePaths, key: str, project: str) -> str | None:
    try:
        config = json.loads((paths.project_dir(key, project) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    value = config.get("data_path")
    return str(value) if value else None
