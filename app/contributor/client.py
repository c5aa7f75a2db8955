"""HTTP client for the coordinator's contributor API (docs/protocol.md).

Exceptions::

    ClientError                    anything this module raises
    ├── InsecureTransportError     http:// to a host that is not loopback, without insecure=True
    ├── ServerError                the coordinator answered with a JSON error (.status, .code)
    │   ├── AuthError              401/403: the token or key is not (or no longer) accepted
    │   └── LeaseLostError         the task is gone: expired, answered, rejected, not ours
    ├── UnavailableError           no usable answer after the retries (connection, 5xx, 429)
    ├── IntegrityError             a download does not match its digest
    └── UntrustedError             a task or model is not signed by the pinned project key

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

The client never imports torch: model bytes go to the cache, the trainer child decodes them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.client
import ipaddress
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import requests
import urllib3.exceptions

from app.contributor.cache import touch as touch_cached_model
from federated.errors import SignatureError
from federated.signing import SigningKey, canonical_json, verify

__all__ = [
    "DEFAULT_LEASE_WAIT_S",
    "AuthError",
    "Cancelled",
    "ClientError",
    "CoordinatorClient",
    "InsecureTransportError",
    "IntegrityError",
    "JoinResult",
    "LeaseLostError",
    "LeasedTask",
    "RetryPolicy",
    "ServerError",
    "ThrottledBody",
    "UnavailableError",
    "UntrustedError",
    "check_transport",
    "is_loopback_host",
]

log = logging.getLogger(__name__)

# Long-poll wait for a lease: the server answers at once when a task appears (a new model
# version), so a short round costs one network round trip, not a polling interval.
DEFAULT_LEASE_WAIT_S = 25
# (connect, read) timeouts for ordinary calls; a long poll adds its wait to the read timeout.
DEFAULT_TIMEOUT_S = (5.0, 30.0)
DOWNLOAD_CHUNK = 256 * 1024
UPLOAD_CHUNK = 16 * 1024
_CUT_SHORT: tuple[type[BaseException], ...] = (
    # What requests raises: refused, reset, RemoteDisconnected (ConnectionError), timeouts,
    # and a body cut midway (ChunkedEncodingError wraps urllib3's ProtocolError/IncompleteRead).
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    # The same faults unwrapped, as another transport (or a body read outside requests'
    # own wrappers) raises them.
    urllib3.exceptions.ProtocolError,
    urllib3.exceptions.TimeoutError,
    http.client.IncompleteRead,
    http.client.HTTPException,
    ConnectionError,  # the built-in one: reset, aborted, broken pipe
    TimeoutError,
)
"""Exceptions that mean "no whole answer arrived": retried like a refused connection."""

_TASK_ID_LOST = {
    "lease_expired",
    "unknown_task",
    "not_your_task",
    "task_already_answered",
    # The coordinator ended the task for good after a final rejection of its update; it is
    # never handed out again, so the engine must drop it (issue 9, section 2).
    "task_rejected",
}
"""Error codes that mean "this task is gone": LeaseLostError, whatever the status."""

_RETRIED_CODES = {
    # The coordinator got our request body cut short (a connection broken mid-upload that
    # it noticed first): a network error, sent again like a refused connection.
    "incomplete_body",
}

_T = TypeVar("_T")


class ClientError(Exception):
    """Anything the coordinator client raises."""


class InsecureTransportError(ClientError):
    pass


class ServerError(ClientError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{message} ({code}, HTTP {status})")
        self.status = status
        self.code = code
        self.message = message


class AuthError(ServerError):
    pass


class LeaseLostError(ServerError):
    pass


class UnavailableError(ClientError):
    pass


class IntegrityError(ClientError):
    pass


class UntrustedError(ClientError):
    pass


class Cancelled(ClientError):
    """The caller's cancel event was set while waiting."""


class _CutShort(Exception):
    """A response arrived but not whole (a JSON body that does not parse): retried."""


_RETRIED: tuple[type[BaseException], ...] = (_CutShort, *_CUT_SHORT)


def is_loopback_host(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_transport(url: str, *, insecure: bool) -> None:
    """Refuse plain http:// to anything but loopback unless ``insecure`` (tokens and keys travel)."""
    parts = urlsplit(url)
    if parts.scheme == "https":
        return
    if parts.scheme != "http":
        raise InsecureTransportError(f"{url!r}: only http(s) coordinators are supported")
    if insecure or is_loopback_host(parts.hostname or ""):
        return
    raise InsecureTransportError(
        f"{url!r} uses plain http to another machine, so your token and updates would travel "
        "unencrypted; ask the organiser for the https address, or pass --insecure if you "
        "trust this network"
    )


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter: sleep U(0, min(cap, base * 2**attempt))."""

    attempts: int = 6
    base_s: float = 0.25
    cap_s: float = 30.0

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.cap_s)
        return random.uniform(0.0, min(self.cap_s, self.base_s * (2**attempt)))


@dataclass(frozen=True)
class JoinResult:
    client_id: str
    token: str
    project: dict[str, Any]


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


class ThrottledBody:
    """An upload body that yields chunks no faster than ``kbps`` kilobits per second.

    It has a length, so requests sends ``Content-Length`` (not chunked encoding), and it can
    be iterated again for a retry.
    """

    def __init__(
        self,
        data: bytes,
        kbps: float,
        *,
        chunk: int = UPLOAD_CHUNK,
        cancel: threading.Event | None = None,
    ) -> None:
        self._data = data
        self._rate = kbps * 125.0 if kbps > 0 else 0.0  # kilobits/s -> bytes/s
        self._chunk = chunk
        self._cancel = cancel or threading.Event()

    def __len__(self) -> int:
        return len(self._data)

    def __iter__(self) -> Iterator[bytes]:
        start = time.monotonic()
        sent = 0
        view = memoryview(self._data)
        while sent < len(self._data):
            piece = bytes(view[sent : sent + self._chunk])
            yield piece
            sent += len(piece)
            if self._rate:
                ahead = sent / self._rate - (time.monotonic() - start)
                if ahead > 0 and self._cancel.wait(ahead):
                    raise Cancelled("upload cancelled")


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _declares_json(response: requests.Response) -> bool:
    ctype = response.headers.get("Content-Type", "")
    return ctype.split(";")[0].strip().lower() == "application/json"


def _error_of(response: requests.Response) -> ServerError:
    """The coordinator's JSON error as an exception. An error body that says it is JSON but
    does not parse was cut short (``_CutShort``: retried); any other body (a proxy's HTML
    page) gives a ServerError with code ``http_error``."""
    code, message = "http_error", response.reason or "error"
    try:
        body = json.loads(response.content)
    except ValueError:
        if _declares_json(response) and response.content:
            raise _CutShort(f"HTTP {response.status_code} with a cut JSON body") from None
        body = None
    try:
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except (KeyError, TypeError):
        pass
    status = response.status_code
    if status in (401, 403) and code not in _TASK_ID_LOST:
        return AuthError(status, code, message)
    if code in _TASK_ID_LOST or status == 410:
        return LeaseLostError(status, code, message)
    return ServerError(status, code, message)


def _json_of(response: requests.Response) -> Any:
    """The parsed body of a 2xx answer; None for 204 No Content. A body that does not parse
    was cut short (a proxy or the network ended it early): ``_CutShort``, retried."""
    if response.status_code == 204:
        return None
    try:
        return json.loads(response.content)
    except ValueError:
        raise _CutShort(
            f"HTTP {response.status_code} with a body that is not whole JSON "
            f"({len(response.content)} bytes)"
        ) from None


def _whole_response(response: requests.Response) -> requests.Response:
    return response


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

    # --- projects and joining --------------------------------------------------------------
    def get_project(self) -> dict[str, Any]:
        return dict(self.request_json("GET", self.api))

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
            challenge = self.request_json("POST", f"{self.api}/challenge")["challenge"]
            signature = signing_key.sign(
                {
                    "challenge": challenge,
                    "project": self.project,
                    "public_key": public_key,
                    "purpose": "join",
                }
            )
            body = {
                "display_name": display_name,
                "team": team,
                "public_key": public_key,
                "challenge": challenge,
                "signature": signature,
                "invite": invite,
            }
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
            return JoinResult(
                client_id=str(answer["client_id"]),
                token=str(answer["token"]),
                project=answer["project"],
            )
        raise UnavailableError(
            f"could not join {self.project!r} at {self.server_url} after "
            f"{self.retry.attempts} tries ({last}); check the network and try again"
        )

    # --- signatures ------------------------------------------------------------------------
    def _verify(self, what: str, manifest: Mapping[str, Any], signature: str) -> None:
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
        manifest, signature = body["manifest"], str(body["signature"])
        self._verify("task", manifest, signature)
        return LeasedTask(manifest=dict(manifest), signature=signature)

    def heartbeat(self, task_id: str) -> float:
        """Extend the lease; returns the new deadline (epoch seconds)."""
        body = self.request_json("POST", f"{self.api}/tasks/{task_id}/heartbeat", auth=True)
        return float(body["deadline"])

    def release(self, task_id: str) -> None:
        self.request("POST", f"{self.api}/tasks/{task_id}/release", auth=True).close()

    def upload_update(
        self, task_id: str, payload: bytes, manifest: Mapping[str, Any], signing_key: SigningKey
    ) -> dict[str, Any]:
        """PUT the update and return the receipt. Retried as a whole when the answer is
        lost: the same payload again returns the first receipt (idempotent)."""
        canonical = canonical_json(manifest)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(canonical).decode("ascii"),
            "X-Barnraise-Signature": signing_key.sign_bytes(canonical),
        }
        receipt = self.request_json(
            "PUT",
            f"{self.api}/tasks/{task_id}/update",
            auth=True,
            headers=headers,
            body_factory=lambda: ThrottledBody(payload, self.upload_kbps_cap, cancel=self.cancel),
        )
        return dict(receipt)

    def me(self) -> dict[str, Any]:
        return dict(self.request_json("GET", f"{self.api}/me", auth=True))

    def leaderboard(self) -> dict[str, Any]:
        return dict(self.request_json("GET", f"{self.api}/leaderboard"))

    # --- models ----------------------------------------------------------------------------
    def current_model(self) -> dict[str, Any]:
        """The verified manifest of the current model (project, version, digest, created_at)."""
        body = self.request_json("GET", f"{self.api}/models/current")
        self._verify("model", body["manifest"], str(body["signature"]))
        return dict(body["manifest"])

    def model_path(self, digest: str) -> Path:
        if self.cache_dir is None:
            raise ValueError("this client has no cache directory")
        return self.cache_dir / "models" / f"{digest}.safetensors"

    def download_model(self, digest: str) -> Path:
        """Fetch the model with ``digest`` into the cache (resuming a partial download with
        Range) and return its path; the file is checked against the digest before use. The
        file is marked used now, so ``ModelCache.enforce`` evicts it last."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise IntegrityError(f"{digest!r} is not a sha256 digest")
        final = self.model_path(digest)
        if final.exists():
            if _file_sha256(final) == digest:
                touch_cached_model(final)
                return final
            final.unlink()
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_suffix(".part")
        url = f"{self.api}/models/{digest}"
        for attempt in range(self.retry.attempts):
            have = partial.stat().st_size if partial.exists() else 0
            if have and _file_sha256(partial) == digest:
                os.replace(partial, final)
                touch_cached_model(final)
                return final
            headers = {"Range": f"bytes={have}-", "If-Range": f'"{digest}"'} if have else {}
            try:
                response = self.request("GET", url, headers=headers, stream=True)
                with response:
                    # 206: the rest of what we have; 200: the server ignored Range, start over.
                    mode = "ab" if response.status_code == 206 else "wb"
                    with open(partial, mode) as out:
                        for chunk in response.iter_content(DOWNLOAD_CHUNK):
                            if self.cancel.is_set():
                                raise Cancelled("download cancelled")
                            out.write(chunk)
            except _CUT_SHORT as exc:
                # A body cut midway: what arrived stays in the .part file and the next try
                # asks only for the rest.
                log.info("download of %s interrupted: %s; resuming", digest[:12], exc)
                self._sleep(self.retry.delay(attempt))
                continue
            if _file_sha256(partial) != digest:
                partial.unlink(missing_ok=True)
                if attempt + 1 < self.retry.attempts:
                    continue
                raise IntegrityError(
                    f"the model the coordinator sent does not match its digest {digest[:12]}…; "
                    "it was discarded and will be fetched again"
                )
            os.replace(partial, final)
            touch_cached_model(final)
            return final
        raise UnavailableError(f"could not download model {digest[:12]}… from {self.server_url}")


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to ``path`` via a temp file and ``os.replace`` (readers never see half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, sort_keys=True, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def remove_quietly(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
