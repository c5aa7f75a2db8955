"""The coordinator client: one coordinator, one project (docs/protocol.md).

Every request has a timeout. Network errors, 5xx, 429 and ``incomplete_body`` are retried
with exponential backoff and full jitter, honouring ``Retry-After``; other errors are not
retried. A network error is anything that leaves us without a whole answer: a refused or
reset connection, a timeout, or a response cut short (after its headers or midway through
its body, or a JSON body that does not parse). JSON answers are read and parsed inside the
retry loop, so every call below that returns one is retried as a whole. A ``cancel`` event
cuts backoff sleeps and long polls short (``Cancelled``).

Retrying is safe for every call: a lease retried returns the client's live task, an upload
retried returns the first receipt, a release or heartbeat retried does it once. Join is
retried as a pair with a fresh challenge (see ``join``).

Answers are read as their ``federated.protocol`` messages (``Project``, ``Heartbeat``,
``Receipt``, ``Me``, ...), checked strictly. An answer of the wrong shape is not retried
(asking again gets the same answer): it is ``UnavailableError``, or ``UntrustedError`` for a
signed task or model, which is verified against the pinned key over the raw JSON first.

The client never imports torch: model bytes go to the cache, the trainer child decodes them.
"""

from __future__ import annotations

import base64
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import requests

from app.contributor.client.downloads import download_model
from app.contributor.client.errors import (
    _RETRIED,
    _RETRIED_CODES,
    AuthError,
    Cancelled,
    ClientError,
    UnavailableError,
    UntrustedError,
    _error_of,
    _json_of,
    _whole_response,
)
from app.contributor.client.transport import (
    DEFAULT_TIMEOUT_S,
    RetryPolicy,
    _retry_after,
    check_transport,
)
from app.contributor.client.uploads import send_update
from federated import protocol
from federated.errors import SignatureError
from federated.signing import SigningKey, verify

__all__ = ["DEFAULT_LEASE_WAIT_S", "CoordinatorClient", "JoinResult", "LeasedTask"]

log = logging.getLogger(__name__)

# Long-poll wait for a lease: the server answers at once when a task appears (a new model
# version), so a short round costs one network round trip, not a polling interval.
DEFAULT_LEASE_WAIT_S = 25

_T = TypeVar("_T")


@dataclass(frozen=True)
class JoinResult:
    client_id: str
    token: str
    project: protocol.Project


@dataclass(frozen=True)
class LeasedTask:
    """A verified task: ``manifest`` is what the project key signed."""

    manifest: dict[str, Any]
    signature: str

    @property
    def task_id(self) -> str:
        return str(self.manifest["task_id"])

    @property
    def deadline(self) -> float:
        return float(self.manifest["deadline"])

    def to_json(self) -> dict[str, Any]:
        return {"manifest": self.manifest, "signature": self.signature}


class CoordinatorClient:
    """One coordinator, one project. Thread-safe for concurrent calls (one Session, pooled)."""

    def __init__(
        self,
        server_url: str,
        project: str,
        *,
        token: str | None = None,
        project_public_key_b64: str | None = None,
        cache_dir: Path | None = None,
        insecure: bool = False,
        upload_kbps_cap: float = 0.0,
        timeout: tuple[float, float] = DEFAULT_TIMEOUT_S,
        retry: RetryPolicy | None = None,
        cancel: threading.Event | None = None,
        session: requests.Session | None = None,
    ) -> None:
        check_transport(server_url, insecure=insecure)
        self.server_url = server_url.rstrip("/")
        self.project = project
        self.token = token
        self.project_public_key_b64 = project_public_key_b64
        self.cache_dir = cache_dir
        self.upload_kbps_cap = upload_kbps_cap
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.cancel = cancel or threading.Event()
        self._session = session or requests.Session()
        self._session.headers["User-Agent"] = "barnraise-contributor/1"

    # --- plumbing --------------------------------------------------------------------------
    @property
    def api(self) -> str:
        return f"{self.server_url}/api/v1/projects/{self.project}"

    def close(self) -> None:
        self._session.close()

    def _headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self.token:
            raise AuthError(401, "missing_token", "this project has no token; join it first")
        return {"Authorization": f"Bearer {self.token}"}

    def _sleep(self, seconds: float) -> None:
        if self.cancel.wait(seconds):
            raise Cancelled("cancelled while waiting to retry")

    def request(
        self,
        method: str,
        url: str,
        *,
        auth: bool = False,
        json_body: Any = None,
        body_factory: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
        stream: bool = False,
    ) -> requests.Response:
        """Send with retries; return a 2xx/3xx response or raise. ``body_factory`` makes a
        fresh body per attempt (a streamed body cannot be replayed). Without ``stream`` the
        whole body has arrived when this returns (a body cut short was retried); with
        ``stream`` only the headers have, and the caller handles a body cut short."""
        return self._attempts(
            method,
            url,
            read=_whole_response,
            auth=auth,
            json_body=json_body,
            body_factory=body_factory,
            headers=headers,
            params=params,
            read_timeout=read_timeout,
            stream=stream,
        )

    def request_json(
        self,
        method: str,
        url: str,
        *,
        auth: bool = False,
        json_body: Any = None,
        body_factory: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
    ) -> Any:
        """Send with retries and return the parsed JSON body (None for 204). The body is
        read and parsed inside the retry loop: an answer cut short, or JSON that does not
        parse, is retried like a refused connection, then UnavailableError."""
        return self._attempts(
            method,
            url,
            read=_json_of,
            auth=auth,
            json_body=json_body,
            body_factory=body_factory,
            headers=headers,
            params=params,
            read_timeout=read_timeout,
        )

    def _attempts(
        self,
        method: str,
        url: str,
        *,
        read: Callable[[requests.Response], _T],
        auth: bool = False,
        json_body: Any = None,
        body_factory: Callable[[], Any] | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
        stream: bool = False,
        attempts: int | None = None,
    ) -> _T:
        """The retry loop: send, check the status, and ``read`` the answer, all per attempt."""
        all_headers = {**self._headers(auth), **(headers or {})}
        timeout = (self.timeout[0], read_timeout or self.timeout[1])
        tries = attempts or self.retry.attempts
        last: BaseException | None = None
        for attempt in range(tries):
            if self.cancel.is_set():
                raise Cancelled("cancelled")
            retry_after: float | None = None
            response: requests.Response | None = None
            try:
                response = self._session.request(
                    method,
                    url,
                    json=json_body,
                    data=body_factory() if body_factory else None,
                    headers=all_headers,
                    params=params,
                    timeout=timeout,
                    stream=stream,
                )
                if response.status_code == 429 or response.status_code >= 500:
                    last = _error_of(response)
                    retry_after = _retry_after(response)
                elif response.status_code >= 400:
                    error = _error_of(response)
                    if error.code not in _RETRIED_CODES:
                        raise error
                    last = error
                else:
                    result = read(response)
                    response = None  # handed over: a streamed response is the caller's
                    return result
            except _RETRIED as exc:
                last = exc
            finally:
                if response is not None:
                    response.close()
            if attempt + 1 < tries:
                delay = self.retry.delay(attempt, retry_after)
                log.info(
                    "%s %s: %s (attempt %d); retrying in %.2fs",
                    method,
                    url,
                    last,
                    attempt + 1,
                    delay,
                )
                self._sleep(delay)
        raise UnavailableError(
            f"the coordinator at {self.server_url} did not answer usefully after "
            f"{tries} tries ({last}); check the network, it will be retried later"
        )

    def _answer(self, body: Any, type_: type[_T], what: str) -> _T:
        """``body`` as the message ``type_``; an answer of another shape is UnavailableError
        (not retried: the same question gets the same answer)."""
        try:
            return protocol.convert(body, type_, what=what)
        except protocol.ProtocolError as exc:
            raise UnavailableError(
                f"the coordinator at {self.server_url} sent an unusable answer ({exc}); "
                "it may run another version of Barnraise"
            ) from None

    # --- projects and joining --------------------------------------------------------------
    def get_project(self) -> protocol.Project:
        return self._answer(self.request_json("GET", self.api), protocol.Project, "the project")

    def join(
        self,
        signing_key: SigningKey,
        *,
        display_name: str,
        team: str | None = None,
        invite: str | None = None,
    ) -> JoinResult:
        """Prove possession of ``signing_key`` with a fresh challenge and register it.

        A challenge is single use, so the challenge and the join are retried as a pair: when
        the join's answer is lost (the coordinator may have registered us), a new challenge
        is signed with the same key and sent again. The coordinator answers a known key with
        the same client id (and a new token), so a retry never makes a second identity."""
        public_key = signing_key.public_key_b64
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            challenge = self._answer(
                self.request_json("POST", f"{self.api}/challenge"),
                protocol.Challenge,
                "the join challenge",
            ).challenge
            statement = protocol.JoinStatement(
                challenge=challenge, project=self.project, public_key=public_key
            )
            try:
                body = protocol.to_wire(
                    protocol.JoinRequest(
                        display_name=display_name,
                        team=team,
                        public_key=public_key,
                        challenge=challenge,
                        signature=signing_key.sign(protocol.to_wire(statement)),
                        invite=invite,
                    )
                )
            except ValueError as exc:  # a name of nothing visible, a team too long
                raise ClientError(f"cannot join with these details: {exc}") from None
            try:
                # One attempt: sending the same consumed challenge again would be refused.
                answer = self._attempts(
                    "POST", f"{self.api}/join", read=_json_of, json_body=body, attempts=1
                )
            except UnavailableError as exc:
                last = exc
                if attempt + 1 < self.retry.attempts:
                    self._sleep(self.retry.delay(attempt))
                continue
            joined = self._answer(answer, protocol.JoinResponse, "the join answer")
            return JoinResult(
                client_id=joined.client_id, token=joined.token, project=joined.project
            )
        raise UnavailableError(
            f"could not join {self.project!r} at {self.server_url} after "
            f"{self.retry.attempts} tries ({last}); check the network and try again"
        )

    # --- signatures ------------------------------------------------------------------------
    def _verified(self, what: str, body: Any, type_: type[_T]) -> tuple[dict[str, Any], _T]:
        """A signed answer (``{"manifest", "signature"}``): its raw manifest, verified against
        the pinned key, and the whole answer as ``type_``. Anything else is UntrustedError."""
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("manifest"), dict)
            or not isinstance(body.get("signature"), str)
        ):
            raise UntrustedError(
                f"refused a {what} for project {self.project!r}: the answer is not a signed "
                "manifest"
            )
        manifest: dict[str, Any] = body["manifest"]
        self.verify_signed(what, manifest, body["signature"])
        try:  # signed, but still checked: what this engine cannot read is not used
            message = protocol.convert(body, type_, what=f"the {what}")
        except protocol.ProtocolError as exc:
            raise UntrustedError(f"refused a {what} for project {self.project!r}: {exc}") from None
        return manifest, message

    def verify_signed(self, what: str, manifest: Mapping[str, Any], signature: str) -> None:
        if not self.project_public_key_b64:
            raise UntrustedError(f"no pinned key for project {self.project!r}; join it again")
        try:
            verify(self.project_public_key_b64, manifest, signature)
        except SignatureError as exc:
            raise UntrustedError(
                f"refused a {what} for project {self.project!r}: it is not signed by the key "
                f"pinned when you joined ({exc}); if the organiser changed the key, leave and "
                "join the project again after checking the new fingerprint"
            ) from None
        if manifest.get("project") != self.project:
            raise UntrustedError(
                f"refused a {what}: it is for project {manifest.get('project')!r}, not {self.project!r}"
            )

    # --- tasks -----------------------------------------------------------------------------
    def lease(self, *, wait: float = DEFAULT_LEASE_WAIT_S) -> LeasedTask | None:
        """Lease a task, waiting up to ``wait`` seconds for one; None when there is none."""
        body = self.request_json(
            "POST",
            f"{self.api}/tasks/lease",
            auth=True,
            params={"wait": int(wait)},
            read_timeout=wait + self.timeout[1],
        )
        if body is None:  # 204: no task now
            return None
        manifest, signed = self._verified("task", body, protocol.SignedTask)
        return LeasedTask(manifest=dict(manifest), signature=signed.signature)

    def heartbeat(self, task_id: str) -> float:
        """Extend the lease; returns the new deadline (epoch seconds)."""
        body = self.request_json("POST", f"{self.api}/tasks/{task_id}/heartbeat", auth=True)
        return float(self._answer(body, protocol.Heartbeat, "the heartbeat").deadline)

    def release(self, task_id: str) -> None:
        self.request("POST", f"{self.api}/tasks/{task_id}/release", auth=True).close()

    def upload_update(
        self,
        task_id: str,
        payload: bytes,
        manifest: protocol.UpdateManifest,
        signing_key: SigningKey,
    ) -> protocol.Receipt:
        """PUT the update and return the receipt. A small payload is retried as a whole
        when the answer is lost (the same payload again returns the first receipt); a large
        one cut short is resumed where it stopped (``client.uploads``)."""
        canonical = protocol.encode_canonical(manifest)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(canonical).decode("ascii"),
            "X-Barnraise-Signature": signing_key.sign_bytes(canonical),
        }
        receipt = send_update(self, f"{self.api}/tasks/{task_id}/update", headers, payload)
        return self._answer(receipt, protocol.Receipt, "the upload receipt")

    def me(self) -> protocol.Me:
        body = self.request_json("GET", f"{self.api}/me", auth=True)
        return self._answer(body, protocol.Me, "who this contributor is")

    def leaderboard(self) -> protocol.Leaderboard:
        body = self.request_json("GET", f"{self.api}/leaderboard")
        return self._answer(body, protocol.Leaderboard, "the leaderboard")

    # --- models ----------------------------------------------------------------------------
    def current_model(self) -> protocol.ModelManifest:
        """The verified manifest of the current model (project, version, digest, created_at)."""
        body = self.request_json("GET", f"{self.api}/models/current")
        return self._verified("model", body, protocol.SignedModel)[1].manifest

    def model_path(self, digest: str) -> Path:
        if self.cache_dir is None:
            raise ValueError("this client has no cache directory")
        return self.cache_dir / "models" / f"{digest}.safetensors"

    def download_model(self, digest: str) -> Path:
        """Fetch the model with ``digest`` into the cache (resuming a partial download with
        Range) and return its path; the file is checked against the digest before use. The
        file is marked used now, so ``ModelCache.enforce`` evicts it last."""
        return download_model(self, digest)
