"""HTTP client for the coordinator's contributor API (docs/protocol.md).

Exceptions::

    ClientError                    anything this module raises
    ├── InsecureTransportError     http:// to a host that is not loopback, without insecure=True
    ├── ServerError                the coordinator answered with a JSON error (.status, .code)
    │   ├── AuthError              401/403: the token or key is not (or no longer) accepted
    │   └── LeaseLostError         the task is gone: expired, answered, not ours (409/410/404)
    ├── UnavailableError           no usable answer after the retries (connection, 5xx, 429)
    ├── IntegrityError             a download does not match its digest
    └── UntrustedError             a task or model is not signed by the pinned project key

Every request has a timeout. Connection errors, 5xx and 429 are retried with exponential
backoff and full jitter, honouring ``Retry-After``; other errors are not retried. A
``cancel`` event cuts backoff sleeps and long polls short (``Cancelled``).

The client never imports torch: model bytes go to the cache, the trainer child decodes them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
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
from typing import Any
from urllib.parse import urlsplit

import requests

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
_CUT_SHORT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
)
_TASK_ID_LOST = {"lease_expired", "unknown_task", "not_your_task", "task_already_answered"}


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


def _error_of(response: requests.Response) -> ServerError:
    code, message = "http_error", response.reason or "error"
    try:
        body = response.json()
        code = str(body["error"]["code"])
        message = str(body["error"]["message"])
    except (ValueError, KeyError, TypeError):
        pass
    status = response.status_code
    if status in (401, 403) and code not in _TASK_ID_LOST:
        return AuthError(status, code, message)
    if code in _TASK_ID_LOST or status == 410:
        return LeaseLostError(status, code, message)
    return ServerError(status, code, message)


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
        fresh body per attempt (a streamed body cannot be replayed)."""
        all_headers = {**self._headers(auth), **(headers or {})}
        timeout = (self.timeout[0], read_timeout or self.timeout[1])
        last: Exception | None = None
        for attempt in range(self.retry.attempts):
            if self.cancel.is_set():
                raise Cancelled("cancelled")
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
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = exc
                log.info("%s %s: %s (attempt %d)", method, url, exc, attempt + 1)
                self._sleep(self.retry.delay(attempt))
                continue
            if response.status_code == 429 or response.status_code >= 500:
                last = _error_of(response)
                delay = self.retry.delay(attempt, _retry_after(response))
                response.close()
                log.info("%s %s: %s; retrying in %.2fs", method, url, last, delay)
                self._sleep(delay)
                continue
            if response.status_code >= 400:
                error = _error_of(response)
                response.close()
                raise error
            return response
        raise UnavailableError(
            f"the coordinator at {self.server_url} did not answer usefully after "
            f"{self.retry.attempts} tries ({last}); check the network, it will be retried later"
        )

    # --- projects and joining --------------------------------------------------------------
    def get_project(self) -> dict[str, Any]:
        return dict(self.request("GET", self.api).json())

    def join(
        self,
        signing_key: SigningKey,
        *,
        display_name: str,
        team: str | None = None,
        invite: str | None = None,
    ) -> JoinResult:
        """Prove possession of ``signing_key`` with a fresh challenge and register it."""
        challenge = self.request("POST", f"{self.api}/challenge").json()["challenge"]
        public_key = signing_key.public_key_b64
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
        answer = self.request("POST", f"{self.api}/join", json_body=body).json()
        return JoinResult(
            client_id=str(answer["client_id"]),
            token=str(answer["token"]),
            project=answer["project"],
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
        response = self.request(
            "POST",
            f"{self.api}/tasks/lease",
            auth=True,
            params={"wait": int(wait)},
            read_timeout=wait + self.timeout[1],
        )
        if response.status_code == 204:
            return None
        body = response.json()
        manifest, signature = body["manifest"], str(body["signature"])
        self._verify("task", manifest, signature)
        return LeasedTask(manifest=dict(manifest), signature=signature)

    def heartbeat(self, task_id: str) -> float:
        response = self.request("POST", f"{self.api}/tasks/{task_id}/heartbeat", auth=True)
        return float(response.json()["deadline"])

    def release(self, task_id: str) -> None:
        self.request("POST", f"{self.api}/tasks/{task_id}/release", auth=True).close()

    def upload_update(
        self, task_id: str, payload: bytes, manifest: Mapping[str, Any], signing_key: SigningKey
    ) -> dict[str, Any]:
        """PUT the update; the same payload again returns the first receipt (idempotent)."""
        canonical = canonical_json(manifest)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(canonical).decode("ascii"),
            "X-Barnraise-Signature": signing_key.sign_bytes(canonical),
        }
        response = self.request(
            "PUT",
            f"{self.api}/tasks/{task_id}/update",
            auth=True,
            headers=headers,
            body_factory=lambda: ThrottledBody(payload, self.upload_kbps_cap, cancel=self.cancel),
        )
        return dict(response.json())

    def me(self) -> dict[str, Any]:
        return dict(self.request("GET", f"{self.api}/me", auth=True).json())

    def leaderboard(self) -> dict[str, Any]:
        return dict(self.request("GET", f"{self.api}/leaderboard").json())

    # --- models ----------------------------------------------------------------------------
    def current_model(self) -> dict[str, Any]:
        """The verified manifest of the current model (project, version, digest, created_at)."""
        body = self.request("GET", f"{self.api}/models/current").json()
        self._verify("model", body["manifest"], str(body["signature"]))
        return dict(body["manifest"])

    def model_path(self, digest: str) -> Path:
        if self.cache_dir is None:
            raise ValueError("this client has no cache directory")
        return self.cache_dir / "models" / f"{digest}.safetensors"

    def download_model(self, digest: str) -> Path:
        """Fetch the model with ``digest`` into the cache (resuming a partial download with
        Range) and return its path; the file is checked against the digest before use."""
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise IntegrityError(f"{digest!r} is not a sha256 digest")
        final = self.model_path(digest)
        if final.exists():
            if _file_sha256(final) == digest:
                return final
            final.unlink()
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.with_suffix(".part")
        url = f"{self.api}/models/{digest}"
        for attempt in range(self.retry.attempts):
            have = partial.stat().st_size if partial.exists() else 0
            if have and _file_sha256(partial) == digest:
                os.replace(partial, final)
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
