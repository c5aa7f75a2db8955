"""A minimal contributor speaking the HTTP API with ``requests``, for the demo and tests.

The real contributor (``app/contributor/``, headless or tray) replaces this in the demo
once it has landed; this one has no policy, limits or checkpoints. It verifies what the
protocol says a client must verify: the project key is pinned at join, every task and
model manifest signature is checked, the model bytes must match their digest.
"""

from __future__ import annotations

import base64
import hashlib
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from federated import protocol
from federated.codec import decode_model, encode_update
from federated.recipes import get_recipe
from federated.signing import SigningKey, verify
from federated.training import task_seed, train_locally

LEASE_WAIT_S = 10
"""Seconds each lease request long-polls for work."""


class ClientError(RuntimeError):
    pass


@dataclass
class DemoContributor:
    """One contributor. ``run(stop)`` leases, trains and uploads until ``stop`` is set."""

    base_url: str  # http://host:port (no /api/v1)
    project: str
    display_name: str
    team: str | None = None
    invite: str | None = None
    session: requests.Session = field(default_factory=requests.Session)
    key: SigningKey = field(default_factory=SigningKey.generate)
    client_id: str = ""
    token: str = ""
    project_key: str = ""
    uploads: int = 0
    receipts: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    on_receipt: Callable[[dict[str, Any]], None] | None = None
    _models: dict[str, bytes] = field(default_factory=dict)

    @property
    def api(self) -> str:
        return f"{self.base_url}/api/v1/projects/{self.project}"

    def _auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    def join(self) -> None:
        r = self.session.post(f"{self.api}/challenge", timeout=30)
        _check(r, 200)
        challenge = r.json()["challenge"]
        statement = protocol.JoinStatement(
            challenge=challenge, project=self.project, public_key=self.key.public_key_b64
        )
        body = protocol.JoinRequest(
            display_name=self.display_name,
            team=self.team,
            public_key=self.key.public_key_b64,
            challenge=challenge,
            signature=self.key.sign(protocol.to_wire(statement)),
            invite=self.invite,
        )
        r = self.session.post(f"{self.api}/join", json=protocol.to_wire(body), timeout=30)
        _check(r, 201)
        data = r.json()
        self.client_id, self.token = data["client_id"], data["token"]
        self.project_key = data["project"]["public_key"]

    def lease(self, wait: float = LEASE_WAIT_S) -> dict[str, Any] | None:
        r = self.session.post(
            f"{self.api}/tasks/lease",
            params={"wait": wait},
            headers=self._auth(),
            timeout=wait + 30,
        )
        if r.status_code == 204:
            return None
        _check(r, 200)
        signed: dict[str, Any] = r.json()
        verify(self.project_key, signed["manifest"], signed["signature"])
        return signed["manifest"]

    def model(self, digest: str) -> bytes:
        if digest not in self._models:
            r = self.session.get(f"{self.api}/models/{digest}", timeout=60)
            _check(r, 200)
            if hashlib.sha256(r.content).hexdigest() != digest:
                raise ClientError(f"model {digest} arrived corrupted")
            self._models = {digest: r.content}  # keep only the latest
        return self._models[digest]

    def train_and_upload(self, task: dict[str, Any]) -> dict[str, Any]:
        recipe = get_recipe(task["recipe"])
        hp = task["hparams"]
        base = decode_model(self.model(task["base_digest"]), recipe.tensor_spec(hp))
        data = recipe.load_shard(hp, int(task["shard_index"]))
        result = train_locally(
            recipe,
            hp,
            base,
            data,
            max_examples=int(task["max_examples"]),
            seed=task_seed(task["task_id"]),
        )
        encoded = encode_update(result.delta, task["codec"])
        manifest = protocol.UpdateManifest(
            project=self.project,
            task_id=task["task_id"],
            client_id=self.client_id,
            base_digest=task["base_digest"],
            payload_digest=encoded.digest,
            codec=task["codec"],
            num_examples=int(result.num_examples),
            metrics=protocol.limits.reportable_metrics(result.metrics()),
        )
        return self.upload(task["task_id"], encoded.payload, manifest)

    def upload(
        self, task_id: str, payload: bytes, manifest: protocol.UpdateManifest
    ) -> dict[str, Any]:
        raw = protocol.encode_canonical(manifest)
        headers = {
            **self._auth(),
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(raw).decode("ascii"),
            "X-Barnraise-Signature": self.key.sign_bytes(raw),
        }
        r = self.session.put(
            f"{self.api}/tasks/{task_id}/update", data=payload, headers=headers, timeout=120
        )
        _check(r, (200, 201))
        receipt: dict[str, Any] = r.json()
        self.uploads += 1
        self.receipts.append(receipt)
        if self.on_receipt is not None:
            self.on_receipt(receipt)
        return receipt

    def run(self, stop: threading.Event) -> None:
        """Lease, train, upload until ``stop``; a refused upload is recorded and skipped."""
        try:
            if not self.token:
                self.join()
            while not stop.is_set():
                task = self.lease()
                if task is None:
                    continue
                try:
                    self.train_and_upload(task)
                except ClientError as exc:
                    if "wrong_base" not in str(exc) and "lease_expired" not in str(exc):
                        raise
                    self.errors.append(str(exc))
        except Exception as exc:
            if not stop.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
                raise


def _check(r: requests.Response, expected: int | tuple[int, ...]) -> None:
    ok = expected if isinstance(expected, tuple) else (expected,)
    if r.status_code not in ok:
        raise ClientError(f"{r.request.method} {r.url} -> {r.status_code}: {r.text[:300]}")
