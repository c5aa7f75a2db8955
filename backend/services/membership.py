"""Membership: invites, the join challenge, joining with proof of key possession, and
bearer-token authentication. Only hashes of invite codes and tokens are stored."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

from backend.errors import HTTPError, Unauthorized, api_error
from backend.ids import check_server_id, new_id
from backend.names import name_key
from backend.services.context import ServiceContext
from backend.services.finishing import FINISHED, finished_error
from backend.services.projects import ProjectService
from backend.services.tasks import check_not_banned
from backend.settings import CHALLENGE_TTL_S, ProjectSettings
from backend.store import ClientRecord, NameKeys, ProjectRecord, WriteTx
from federated import protocol
from federated.errors import SignatureError
from federated.protocol.names import clean_text
from federated.signing import verify


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


class MembershipService:
    """Who may join a project, and who a bearer token belongs to."""

    def __init__(self, ctx: ServiceContext, projects: ProjectService) -> None:
        self._ctx = ctx
        self._projects = projects

    def create_invite(self, name: str, *, max_uses: int = 1) -> str:
        """A new invite code for ``name``; only its hash is stored."""
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        ctx = self._ctx
        project = ctx.project(name)
        code = secrets.token_urlsafe(16)
        with ctx.store.write() as tx:
            tx.insert_invite(project.id, hash_token(code), ctx.clock(), max_uses)
        return code

    def new_challenge(self, name: str) -> protocol.Challenge:
        ctx = self._ctx
        project = ctx.project(name)
        if project.status == FINISHED:
            raise finished_error(name)
        if project.status == "closed":
            raise api_error(
                "project_closed", f"project {name!r} is closed and takes no new members"
            )
        challenge = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        expires_at = int(ctx.clock() + CHALLENGE_TTL_S)
        with ctx.store.write(durable=False) as tx:
            tx.insert_challenge(project.id, challenge, expires_at)
        return protocol.Challenge(challenge=challenge, expires_at=expires_at)

    def join(self, name: str, body: protocol.JoinRequest) -> protocol.JoinResponse:
        """Register a contributor (proof of possession of its key); returns id and token.

        ``body``'s shape and sizes are checked already (``federated.protocol``)."""
        ctx = self._ctx
        project = ctx.project(name)
        if project.status == FINISHED:
            raise finished_error(name)
        if project.status == "closed":
            raise api_error(
                "project_closed", f"project {name!r} is closed and takes no new members"
            )
        settings = ProjectSettings.from_dict(project.settings)
        display_name = clean_text(body.display_name)
        team = clean_text(body.team) or None if body.team is not None else None
        public_key, challenge, signature, invite = (
            body.public_key,
            body.challenge,
            body.signature,
            body.invite,
        )
        now = ctx.clock()
        invite_hash = hash_token(invite) if invite else None
        with ctx.store.read() as rtx:
            if not rtx.challenge_valid(project.id, challenge, now):
                raise api_error(
                    "bad_challenge",
                    "the challenge is unknown, used or expired; ask for a new one and sign it",
                )
        statement = protocol.JoinStatement(challenge=challenge, project=name, public_key=public_key)
        try:
            verify(public_key, protocol.to_wire(statement), signature)
        except SignatureError as exc:
            raise api_error("bad_signature", f"the join signature does not verify: {exc}") from None
        token_secret = secrets.token_urlsafe(32)
        with ctx.store.write() as tx:
            # A key that already joined (a retry whose answer was lost, a rename) proved
            # possession above and keeps its identity; its invite was used the first time.
            existing = tx.client_by_key(project.id, public_key)
            check_not_banned(project, existing)  # joining again lifts no ban
            _fill_name_keys(tx, project.id)
            if team is not None:
                team = tx.team_spelling(project.id, name_key(team)) or team
            keys = NameKeys(name=name_key(display_name), team=name_key(team) if team else None)
            for other in tx.clients_named(project.id, keys.name):
                if other.public_key != public_key:
                    raise api_error(
                        "name_taken",
                        f"another contributor of {name!r} is called {other.display_name!r}, "
                        f"which reads the same as {display_name!r}; choose another name",
                    )
            if existing is None and settings.invite_required:
                if invite_hash is None:
                    raise api_error(
                        "invite_required", f"project {name!r} needs an invite code to join"
                    )
                if not tx.consume_invite(project.id, invite_hash):
                    raise api_error(
                        "bad_invite",
                        "the invite code is unknown or used up; ask the organiser for a new one",
                    )
            if not tx.consume_challenge(project.id, challenge, now):
                raise api_error(
                    "bad_challenge", "the challenge was used meanwhile; ask for a new one"
                )
            if existing is not None:
                client_id = existing.id
                tx.rejoin_client(client_id, display_name, team, hash_token(token_secret), now, keys)
            else:
                client_id = new_id()
                tx.insert_client(
                    ClientRecord(
                        id=client_id,
                        project_id=project.id,
                        display_name=display_name,
                        team=team,
                        public_key=public_key,
                        token_hash=hash_token(token_secret),
                        created_at=now,
                        last_seen=now,
                        recent_time=now,
                    ),
                    keys,
                )
        return protocol.JoinResponse(
            client_id=client_id,
            token=f"{client_id}.{token_secret}",
            project=self._projects.project_view(ctx.project(name)),
        )

    def authenticate(self, project: ProjectRecord, authorization: str | None) -> ClientRecord:
        """The client a bearer token belongs to (constant-time comparison of its hash)."""
        if not authorization:
            raise Unauthorized("send Authorization: Bearer <token> from join", code="missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("send Authorization: Bearer <token> from join", code="missing_token")
        client_id, _, secret = token.strip().partition(".")
        bad = Unauthorized("the token is not valid for this project; join again", code="bad_token")
        if not secret:
            raise bad
        try:
            check_server_id(client_id, "client id")
        except HTTPError:
            raise bad from None
        with self._ctx.store.read() as tx:
            client = tx.client(client_id)
        expected = client.token_hash if client else hash_token("")
        if not hmac.compare_digest(expected, hash_token(secret)) or client is None:
            raise bad
        if client.project_id != project.id:
            raise bad
        return client


def _fill_name_keys(tx: WriteTx, project_id: int) -> None:
    """Store the look-alike keys of members who joined before they were stored (once)."""
    for client in tx.clients_without_name_keys(project_id):
        team = name_key(client.team) if client.team else None
        tx.set_name_keys(client.id, NameKeys(name=name_key(client.display_name), team=team))
