"""The coordinator's state and operations, independent of HTTP.

``Coordinator`` owns the data folder (database, blobs, project keys), the per-project
wake-ups for long polls, and the aggregation worker. The HTTP handlers in ``backend.api``
parse requests and call it; the CLI calls it directly for organiser commands.

Data folder layout::

    DATA/barnraise.sqlite3   the store (WAL mode)
    DATA/blobs/ab/abcd...    models, updates and strategy state, by sha256
    DATA/keys/NAME.ed25519   each project's signing key (0600)
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import math
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from backend import credit as credit_math
from backend import pacing
from backend.errors import (
    FINAL_UPLOAD_CODES,
    PAYLOAD_CODES,
    BadRequest,
    HTTPError,
    NotFound,
    Unauthorized,
    UnsupportedMediaType,
    api_error,
)
from backend.http import Request
from backend.ids import check_project_name, check_server_id, new_id
from backend.keys import KeyStore
from backend.metrics import METRICS, BackendMetrics
from backend.settings import (
    CHALLENGE_TTL_S,
    CREDIT_UNIT,
    LONG_POLL_MAX_S,
    LONG_POLL_RECHECK_S,
    ProjectSettings,
)
from backend.store import (
    BlobStore,
    ClientRecord,
    ProjectRecord,
    SQLiteStore,
    Store,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
    WriteTx,
)
from federated.codec import decode_model, decode_update, encode_model
from federated.errors import RecipeError, SignatureError, UpdateRejected
from federated.recipes import Dataset, Recipe, get_recipe
from federated.signing import fingerprint, verify, verify_bytes
from federated.strategies import build_strategy
from federated.tensors import TensorSpec

log = logging.getLogger(__name__)

DB_FILE = "barnraise.sqlite3"


@dataclass
class ProjectRuntime:
    """What a project's recipe implies, computed once per process."""

    recipe: Recipe
    hparams: dict[str, Any]
    spec: TensorSpec
    flops_per_example: float
    settings: ProjectSettings
    _test: Dataset | None = None
    _test_loaded: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def test_data(self) -> Dataset | None:
        with self._lock:
            if not self._test_loaded:
                self._test = self.recipe.load_test(self.hparams)
                self._test_loaded = True
            return self._test


@dataclass
class _UploadAttempt:
    """What an upload established before it was refused: whether the caller owns the task
    (then a final refusal may end it) and the signed example count (then the turnaround
    is a pace sample, even for an update that came too late)."""

    task: TaskRecord | None = None
    num_examples: int | None = None


class Notifier:
    """Per-project wake-ups for long polls: a generation counter under a Condition.

    A waiter reads ``generation`` before looking for work and waits only while it is
    unchanged, so a notification between the look and the wait is never lost.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._generations: dict[str, int] = {}
        self.closed = False

    def generation(self, project: str) -> int:
        with self._cond:
            return self._generations.get(project, 0)

    def notify(self, project: str) -> None:
        with self._cond:
            self._generations[project] = self._generations.get(project, 0) + 1
            self._cond.notify_all()

    def wait(self, project: str, seen: int, timeout: float) -> None:
        with self._cond:
            self._cond.wait_for(
                lambda: self.closed or self._generations.get(project, 0) != seen, timeout
            )

    def close(self) -> None:
        with self._cond:
            self.closed = True
            self._cond.notify_all()


def hash_token(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def _b64decode(value: Any, what: str, *, length: int | None = None) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{what} must be a base64 string")
    try:
        raw = base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise BadRequest(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise BadRequest(f"{what} must be {length} bytes, got {len(raw)}")
    return raw


class Coordinator:
    """Everything the backend does, over one data folder. Thread-safe."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        clock: Callable[[], float] = time.time,
        start_worker: bool = True,
        metrics: BackendMetrics | None = None,
        store: Store | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self.metrics = metrics or METRICS
        self.store: Store = store or SQLiteStore(self.data_dir / DB_FILE)
        self.blobs = BlobStore(self.data_dir / "blobs")
        self.keys = KeyStore(self.data_dir / "keys")
        self.notifier = Notifier()
        self._runtimes: dict[str, ProjectRuntime] = {}
        self._runtimes_lock = threading.Lock()
        from backend.rounds import AggregationWorker  # rounds imports this module's types

        self.worker = AggregationWorker(self)
        if start_worker:
            self.worker.start()

    def close(self) -> None:
        """Stop the worker, wake every long poll, close the store. Idempotent."""
        self.notifier.close()
        self.worker.stop()
        with contextlib.suppress(Exception):
            self.store.close()

    # --- projects --------------------------------------------------------------------------
    def runtime(self, project: ProjectRecord) -> ProjectRuntime:
        with self._runtimes_lock:
            rt = self._runtimes.get(project.name)
            if rt is None:
                recipe = get_recipe(project.recipe)
                rt = ProjectRuntime(
                    recipe=recipe,
                    hparams=dict(project.hparams),
                    spec=recipe.tensor_spec(project.hparams),
                    flops_per_example=float(recipe.flops_per_example(project.hparams)),
                    settings=ProjectSettings.from_dict(project.settings),
                )
                self._runtimes[project.name] = rt
            return rt

    def create_project(
        self,
        name: str,
        *,
        recipe: str,
        strategy: str = "fedavg",
        strategy_params: Mapping[str, Any] | None = None,
        hparams: Mapping[str, Any] | None = None,
        settings: Mapping[str, Any] | None = None,
        description: str = "",
    ) -> ProjectRecord:
        """Create a project with its seeded version 0 and its signing key.

        Raises ValueError (RecipeError included) naming what is wrong.
        """
        if not check_name_ok(name):
            raise ValueError(f"{name!r} is not a project name: use a-z, 0-9 and '-', at most 63")
        recipe_obj = get_recipe(recipe)
        resolved = recipe_obj.resolve_hparams(hparams)
        project_settings = ProjectSettings.from_dict(dict(settings or {}))
        strategy_obj = build_strategy(strategy, dict(strategy_params or {}))
        strategy_desc = {"name": strategy, "params": dict(strategy_params or {})}
        with self.store.read() as tx:
            if tx.project_by_name(name) is not None:
                raise ValueError(f"project {name!r} already exists")
        shard_sizes: list[int] | None = None
        if recipe_obj.data_mode == "builtin":
            shard_sizes = [
                len(recipe_obj.load_shard(resolved, i)) for i in range(int(resolved["num_shards"]))
            ]
        state = recipe_obj.initial_state(resolved)
        digest = self.blobs.put(encode_model(state))
        state_tensors = strategy_obj.state_tensors()
        state_digest = self.blobs.put(_save_tensors(state_tensors)) if state_tensors else None
        key = self.keys.create(name)
        now = self.clock()
        record = ProjectRecord(
            id=0,
            name=name,
            description=description or recipe_obj.description,
            recipe=recipe,
            recipe_version=int(recipe_obj.version),
            hparams=dict(resolved),
            strategy=strategy_desc,
            settings=project_settings.to_dict(),
            status="open",
            current_version=0,
            public_key=key.public_key_b64,
            created_at=now,
            shard_sizes=shard_sizes,
        )
        manifest = {"project": name, "version": 0, "digest": digest, "created_at": int(now)}
        with self.store.write() as wtx:
            project_id = wtx.insert_project(record)
            wtx.insert_version(
                VersionRecord(
                    project_id=project_id,
                    version=0,
                    digest=digest,
                    created_at=now,
                    signature=key.sign(manifest),
                    metrics=self._evaluate_initial(recipe_obj, resolved, state),
                    strategy_state_digest=state_digest,
                )
            )
        return self.project(name)

    def _evaluate_initial(
        self, recipe: Recipe, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor]
    ) -> dict[str, float]:
        test = recipe.load_test(hparams)
        if test is None:
            return {}
        return evaluate_state(recipe, hparams, state, test)

    def snapshot(self) -> contextlib.AbstractContextManager[object]:
        """A block whose reads share one snapshot (one read transaction instead of one each).

        Keep it short (never around a long poll or a body upload): an open snapshot holds
        back the WAL checkpoint."""
        return self.store.read()

    def project(self, name: str) -> ProjectRecord:
        check_project_name(name)
        with self.store.read() as tx:
            project = tx.project_by_name(name)
        if project is None:
            raise NotFound(f"there is no project {name!r}", code="unknown_project")
        return project

    def projects(self) -> list[ProjectRecord]:
        with self.store.read() as tx:
            return tx.projects()

    def set_status(self, name: str, status: str) -> ProjectRecord:
        if status not in ("open", "paused", "closed"):
            raise ValueError(f"status must be open, paused or closed, got {status!r}")
        project = self.project(name)
        with self.store.write() as tx:
            tx.set_project_status(project.id, status)
        self.notifier.notify(name)
        self.worker.wake()
        return self.project(name)

    def create_invite(self, name: str, *, max_uses: int = 1) -> str:
        """A new invite code for ``name``; only its hash is stored."""
        if max_uses < 1:
            raise ValueError("max_uses must be at least 1")
        project = self.project(name)
        code = secrets.token_urlsafe(16)
        with self.store.write() as tx:
            tx.insert_invite(project.id, hash_token(code), self.clock(), max_uses)
        return code

    def project_view(self, project: ProjectRecord) -> dict[str, Any]:
        """The protocol's ``Project`` object."""
        settings = ProjectSettings.from_dict(project.settings)
        with self.store.read() as tx:
            version = tx.version(project.id, project.current_version)
        data_columns = None
        if project.recipe == "tabular-csv":
            data_columns = {
                "label": project.hparams.get("label_column"),
                "features": [
                    c for c in str(project.hparams.get("feature_columns", "")).split(",") if c
                ],
            }
        return {
            "name": project.name,
            "description": project.description,
            "recipe": project.recipe,
            "recipe_version": project.recipe_version,
            "hparams": project.hparams,
            "data_mode": get_recipe(project.recipe).data_mode,
            "data_columns": data_columns,
            "strategy": {"name": project.strategy["name"], **project.strategy.get("params", {})},
            "mode": settings.mode,
            "status": project.status,
            "current_version": project.current_version,
            "model_digest": version.digest if version else None,
            "public_key": project.public_key,
            "key_fingerprint": fingerprint(project.public_key),
            "invite_required": settings.invite_required,
            "codec": settings.codec,
            "page_url": f"/p/{project.name}",
        }

    # --- join ------------------------------------------------------------------------------
    def new_challenge(self, name: str) -> dict[str, Any]:
        project = self.project(name)
        if project.status == "closed":
            raise api_error(
                "project_closed", f"project {name!r} is closed and takes no new members"
            )
        challenge = base64.b64encode(secrets.token_bytes(32)).decode("ascii")
        expires_at = int(self.clock() + CHALLENGE_TTL_S)
        with self.store.write(durable=False) as tx:
            tx.insert_challenge(project.id, challenge, expires_at)
        return {"challenge": challenge, "expires_at": expires_at}

    def join(self, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Register a contributor (proof of possession of its key); returns id and token."""
        project = self.project(name)
        if project.status == "closed":
            raise api_error(
                "project_closed", f"project {name!r} is closed and takes no new members"
            )
        settings = ProjectSettings.from_dict(project.settings)
        display_name = body.get("display_name")
        if not isinstance(display_name, str) or not (1 <= len(display_name.strip()) <= 64):
            raise BadRequest("display_name must be 1 to 64 characters")
        display_name = display_name.strip()
        team = body.get("team")
        if team is not None and (not isinstance(team, str) or len(team.strip()) > 64):
            raise BadRequest("team must be null or at most 64 characters")
        team = team.strip() or None if isinstance(team, str) else None
        public_key = body.get("public_key")
        _b64decode(public_key, "public_key", length=32)
        assert isinstance(public_key, str)
        challenge = body.get("challenge")
        if not isinstance(challenge, str) or len(challenge) > 100:
            raise BadRequest(
                "challenge must be the string from POST .../challenge", code="bad_challenge"
            )
        signature = body.get("signature")
        _b64decode(signature, "signature", length=64)
        assert isinstance(signature, str)
        invite = body.get("invite")
        if invite is not None and not isinstance(invite, str):
            raise BadRequest("invite must be a string or null")
        now = self.clock()
        invite_hash = hash_token(invite) if invite else None
        with self.store.read() as rtx:
            if not rtx.challenge_valid(project.id, challenge, now):
                raise api_error(
                    "bad_challenge",
                    "the challenge is unknown, used or expired; ask for a new one and sign it",
                )
        statement = {
            "challenge": challenge,
            "project": name,
            "public_key": public_key,
            "purpose": "join",
        }
        try:
            verify(public_key, statement, signature)
        except SignatureError as exc:
            raise api_error("bad_signature", f"the join signature does not verify: {exc}") from None
        token_secret = secrets.token_urlsafe(32)
        with self.store.write() as tx:
            # A key that already joined (a retry whose answer was lost, a rename) proved
            # possession above and keeps its identity; its invite was used the first time.
            existing = tx.client_by_key(project.id, public_key)
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
                tx.rejoin_client(client_id, display_name, team, hash_token(token_secret), now)
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
                    )
                )
        return {
            "client_id": client_id,
            "token": f"{client_id}.{token_secret}",
            "project": self.project_view(self.project(name)),
        }

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
        with self.store.read() as tx:
            client = tx.client(client_id)
        expected = client.token_hash if client else hash_token("")
        if not hmac.compare_digest(expected, hash_token(secret)) or client is None:
            raise bad
        if client.project_id != project.id:
            raise bad
        return client

    # --- tasks -----------------------------------------------------------------------------
    def lease(
        self, project: ProjectRecord, client: ClientRecord, wait: float
    ) -> dict[str, Any] | None:
        """A signed task, waiting up to ``wait`` seconds for one; None if there is none."""
        from backend.rounds import try_lease

        wait = min(max(0.0, wait), LONG_POLL_MAX_S)
        give_up = time.monotonic() + wait
        while True:
            seen = self.notifier.generation(project.name)
            signed = try_lease(self, project.name, client.id)
            if signed is not None:
                self.metrics.leases.labels(project=project.name, outcome="granted").inc()
                return signed
            remaining = give_up - time.monotonic()
            if remaining <= 0 or self.notifier.closed:
                self.metrics.leases.labels(project=project.name, outcome="no_work").inc()
                return None
            self.notifier.wait(project.name, seen, min(remaining, LONG_POLL_RECHECK_S))

    def _owned_task(self, project: ProjectRecord, client: ClientRecord, task_id: str) -> TaskRecord:
        check_server_id(task_id, "task id")
        with self.store.read() as tx:
            task = tx.task(task_id)
        if task is None or task.project_id != project.id:
            raise api_error(
                "unknown_task", f"there is no task {task_id!r} in project {project.name!r}"
            )
        if task.client_id != client.id:
            raise api_error("not_your_task", f"task {task_id!r} is leased to another contributor")
        return task

    def heartbeat(
        self, project: ProjectRecord, client: ClientRecord, task_id: str
    ) -> dict[str, Any]:
        from backend.rounds import sign_task_manifest

        self._owned_task(project, client, task_id)
        settings = self.runtime(project).settings
        now = self.clock()
        with self.store.write(durable=False) as tx:
            task = tx.task(task_id)
            assert task is not None
            _check_live(task, now)
            deadline = int(now + settings.lease_s)
            manifest = dict(task.manifest, deadline=deadline)
            tx.set_task_lease(
                task_id, deadline, manifest, sign_task_manifest(self, project.name, manifest)
            )
            tx.touch_client(client.id, now)
        return {"deadline": deadline}

    def release(self, project: ProjectRecord, client: ClientRecord, task_id: str) -> None:
        self._owned_task(project, client, task_id)
        now = self.clock()

        def release_in_tx(tx: WriteTx) -> bool:
            task = tx.task(task_id)
            assert task is not None
            if task.status in ("released", "rejected"):
                return False  # already over: giving it back again changes nothing
            _check_live(task, now)
            tx.set_task_status(task_id, "released")
            return True

        # Batched: releases come as often as leases and, like them, are a few statements.
        if self.store.write_batched(release_in_tx):
            self.notifier.notify(project.name)

    # --- updates ---------------------------------------------------------------------------
    def upload(
        self, project: ProjectRecord, client: ClientRecord, task_id: str, request: Request
    ) -> tuple[int, dict[str, Any]]:
        """Verify and store one update; (201, receipt) or (200, the first receipt) on retry.

        A final refusal (``FINAL_UPLOAD_CODES``) of an update for a task the caller holds
        ends the task for good, in the same durable write that counts the rejection."""
        attempt = _UploadAttempt()
        try:
            return self._upload(project, client, task_id, request, attempt)
        except HTTPError as exc:
            self.metrics_rejected(project.name, exc.code)
            if exc.status not in (401, 404):
                self._record_rejection(project, client, task_id, exc.code, attempt)
            raise

    def _record_rejection(
        self,
        project: ProjectRecord,
        client: ClientRecord,
        task_id: str,
        code: str,
        attempt: _UploadAttempt,
    ) -> None:
        final = code in FINAL_UPLOAD_CODES
        now = self.clock()
        ended = False
        try:
            # Durable when it ends the task: after a crash it must not be leased again.
            with self.store.write(durable=final) as tx:
                tx.count_rejection(client.id, now)
                if final:
                    ended = tx.reject_task(task_id, project.id, client.id, code, now)
                if ended and attempt.task is not None and attempt.num_examples is not None:
                    _record_pace(tx, client.id, attempt.task, attempt.num_examples, now)
        except Exception:
            log.exception("could not record the rejection (%s) of task %s", code, task_id)
            return
        if ended:
            self.notifier.notify(project.name)  # its lease capacity is free again

    def _upload(
        self,
        project: ProjectRecord,
        client: ClientRecord,
        task_id: str,
        request: Request,
        attempt: _UploadAttempt,
    ) -> tuple[int, dict[str, Any]]:
        check_server_id(task_id, "task id")
        settings = self.runtime(project).settings
        if project.status == "closed":
            raise api_error("project_closed", f"project {project.name!r} is closed")
        ctype = (request.header("content-type") or "").split(";")[0].strip().lower()
        if ctype != "application/octet-stream":
            raise UnsupportedMediaType(
                f"send the update payload as application/octet-stream, not {ctype or 'no content type'!r}"
            )
        manifest_header = request.header("X-Barnraise-Manifest")
        signature = request.header("X-Barnraise-Signature")
        if not manifest_header or not signature:
            raise BadRequest("send the X-Barnraise-Manifest and X-Barnraise-Signature headers")
        fd, tmp = self.blobs.temp_file()
        try:
            digest, _size = request.stream_to_file(fd, settings.max_payload_bytes)
            # 1. manifest parse
            manifest_bytes = _b64decode(manifest_header, "X-Barnraise-Manifest")
            try:
                manifest = json.loads(manifest_bytes.decode("utf-8"), parse_constant=_no_constant)
            except (UnicodeDecodeError, ValueError):
                raise BadRequest(
                    "X-Barnraise-Manifest is not base64 of a JSON object", code="bad_json"
                ) from None
            if not isinstance(manifest, dict):
                raise BadRequest(
                    "X-Barnraise-Manifest is not base64 of a JSON object", code="bad_json"
                )
            # 2. signature over the exact bytes
            try:
                verify_bytes(client.public_key, manifest_bytes, signature)
            except SignatureError as exc:
                raise api_error(
                    "bad_signature", f"the update signature does not verify: {exc}"
                ) from None
            # 3. the client owns the live lease (or this is a retry of an accepted update)
            with self.store.read() as tx:
                task = self._owned_task(project, client, task_id)
                previous = tx.update_for_task(task_id)
            attempt.task = task
            if previous is not None:
                if previous.payload_digest == digest:
                    self.store.wait_durable()  # the first upload may still be in its fsync
                    return 200, self.receipt(previous)
                raise api_error(
                    "task_already_answered", f"task {task_id!r} already has an accepted update"
                )
            now = self.clock()
            _check_live(task, now)  # rejected, cancelled (wrong_base) or expired
            # 4. manifest fields match the task
            self._check_manifest(manifest, task, project, client, settings)
            attempt.num_examples = int(manifest["num_examples"])
            # 5. payload digest
            if manifest["payload_digest"] != digest:
                raise api_error(
                    "digest_mismatch",
                    "payload_digest in the manifest is not the sha256 of the body",
                )
            # 6. base version still acceptable
            current = self.project(project.name)
            staleness = current.current_version - task.base_version
            if settings.mode == "sync" and staleness != 0:
                raise api_error(
                    "wrong_base",
                    f"version {current.current_version} is current; this task was for {task.base_version}",
                )
            if settings.mode == "async" and staleness > settings.max_staleness:
                raise api_error(
                    "wrong_base",
                    f"the update is {staleness} versions behind; the limit is {settings.max_staleness}",
                )
            # 7. payload decodes and validates
            rt = self.runtime(project)
            payload = tmp.read_bytes()
            try:
                decode_update(
                    payload,
                    rt.spec,
                    max_norm=settings.max_update_norm,
                    expected_codec=settings.codec,
                )
            except UpdateRejected as exc:
                raise api_error(
                    exc.code if exc.code in _PAYLOAD_CODES else "bad_payload", str(exc)
                ) from None
            del payload
            # commit: the blob first (durable), then the record that points at it
            self.blobs.adopt(tmp, digest)
            return self._commit_update(
                project, client, task, rt, manifest, manifest_header, signature, digest
            )
        finally:
            tmp.unlink(missing_ok=True)

    def _check_manifest(
        self,
        manifest: Mapping[str, Any],
        task: TaskRecord,
        project: ProjectRecord,
        client: ClientRecord,
        settings: ProjectSettings,
    ) -> None:
        expected = {
            "project": project.name,
            "task_id": task.id,
            "client_id": client.id,
            "base_digest": task.manifest["base_digest"],
            "codec": settings.codec,
        }
        for key, value in expected.items():
            if manifest.get(key) != value:
                raise api_error(
                    "manifest_mismatch",
                    f"manifest field {key!r} does not match the task ({value!r})",
                )
        num = manifest.get("num_examples")
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise api_error("manifest_mismatch", "num_examples must be a positive integer")
        if not isinstance(manifest.get("payload_digest"), str):
            raise api_error(
                "manifest_mismatch", "payload_digest must be the sha256 hex of the body"
            )
        metrics = manifest.get("metrics", {})
        if (
            not isinstance(metrics, dict)
            or len(metrics) > 32
            or not all(
                isinstance(k, str) and isinstance(v, int | float) and math.isfinite(v)
                for k, v in metrics.items()
            )
        ):
            raise api_error(
                "manifest_mismatch", "metrics must be an object of at most 32 finite numbers"
            )

    def _commit_update(
        self,
        project: ProjectRecord,
        client: ClientRecord,
        task: TaskRecord,
        rt: ProjectRuntime,
        manifest: Mapping[str, Any],
        manifest_b64: str,
        signature: str,
        digest: str,
    ) -> tuple[int, dict[str, Any]]:
        now = self.clock()
        gflop = credit_math.update_credit(
            int(manifest["num_examples"]), task.max_examples, rt.flops_per_example
        )
        update = UpdateRecord(
            id=new_id(),
            project_id=project.id,
            task_id=task.id,
            client_id=client.id,
            base_version=task.base_version,
            payload_digest=digest,
            num_examples=int(manifest["num_examples"]),
            max_examples=task.max_examples,
            credit=gflop,
            accepted_at=now,
            manifest_b64=manifest_b64,
            signature=signature,
            metrics={k: float(v) for k, v in dict(manifest.get("metrics", {})).items()},
        )
        with self.store.write() as tx:
            # Re-checked under the writer lock: another request may have answered meanwhile.
            previous = tx.update_for_task(task.id)
            if previous is not None:
                if previous.payload_digest == digest:
                    return 200, self.receipt(previous)
                raise api_error(
                    "task_already_answered", f"task {task.id!r} already has an accepted update"
                )
            fresh = tx.task(task.id)
            assert fresh is not None
            if fresh.status == "cancelled":
                raise api_error(
                    "wrong_base", "the round of this task has been aggregated; lease a new task"
                )
            _check_live(fresh, now)
            latest = tx.project_by_id(project.id)
            assert latest is not None
            settings = rt.settings
            if settings.mode == "sync" and (
                latest.current_version != task.base_version or tx.aggregation_running(project.id)
            ):
                raise api_error("wrong_base", "the round of this task has closed; lease a new task")
            tx.insert_update(update)
            tx.set_task_status(task.id, "answered")
            fresh_client = tx.client(client.id)
            assert fresh_client is not None
            recent = credit_math.add_credit(
                fresh_client.recent_sum, fresh_client.recent_time, gflop, now
            )
            tx.credit_client(client.id, gflop, recent, now)
            _record_pace(tx, client.id, fresh, update.num_examples, now, fresh_client)
        self.metrics.updates_accepted.labels(project=project.name).inc()
        self.worker.wake()
        return 201, self.receipt(update)

    def receipt(self, update: UpdateRecord) -> dict[str, Any]:
        return {
            "update_id": update.id,
            "task_id": update.task_id,
            "payload_digest": update.payload_digest,
            "accepted_at": int(update.accepted_at),
            "credit": update.credit,
            "credit_unit": CREDIT_UNIT,
        }

    # --- models ----------------------------------------------------------------------------
    def signed_model(self, project: ProjectRecord) -> dict[str, Any]:
        with self.store.read() as tx:
            version = tx.version(project.id, project.current_version)
        assert version is not None
        return {
            "manifest": {
                "project": project.name,
                "version": version.version,
                "digest": version.digest,
                "created_at": int(version.created_at),
            },
            "signature": version.signature,
        }

    def model_known(self, project: ProjectRecord, digest: str) -> bool:
        with self.store.read() as tx:
            return any(v.digest == digest for v in tx.versions(project.id))

    # --- leaderboard and stats -------------------------------------------------------------
    def leaderboard(self, project: ProjectRecord) -> dict[str, Any]:
        now = self.clock()
        with self.store.read() as tx:
            clients = tx.clients(project.id)
        rows: list[dict[str, Any]] = [
            {
                "client_id": c.id,
                "name": c.display_name,
                "display_name": c.display_name,
                "team": c.team,
                "credit": c.credit,
                "recent_credit": credit_math.recent_average(c.recent_sum, c.recent_time, now),
                "updates_accepted": c.accepted,
                "updates_rejected": c.rejected,
                "last_seen": int(c.last_seen),
            }
            for c in clients
        ]
        rows.sort(key=lambda r: (-r["credit"], -r["updates_accepted"], r["display_name"]))
        for rank, row in enumerate(rows, start=1):
            row["rank"] = rank
        teams: dict[str, dict[str, Any]] = {}
        for row in rows:
            if not row["team"]:
                continue
            team = teams.setdefault(
                row["team"],
                {
                    "name": row["team"],
                    "team": row["team"],
                    "members": 0,
                    "credit": 0.0,
                    "recent_credit": 0.0,
                    "updates_accepted": 0,
                },
            )
            team["members"] += 1
            team["credit"] += row["credit"]
            team["recent_credit"] += row["recent_credit"]
            team["updates_accepted"] += row["updates_accepted"]
        team_rows = sorted(teams.values(), key=lambda t: (-t["credit"], t["team"]))
        for rank, team in enumerate(team_rows, start=1):
            team["rank"] = rank
        return {"contributors": rows, "teams": team_rows, "credit_unit": CREDIT_UNIT}

    def stats(self, project: ProjectRecord) -> dict[str, Any]:
        now = self.clock()
        with self.store.read() as tx:
            versions = tx.versions(project.id)
            clients = tx.clients(project.id)
            live = tx.live_leases(project.id, now)
            pending = tx.pending_updates(project.id)
            rejected_tasks = tx.rejected_tasks(project.id)
            aggregated = tx.updates_with_status(project.id, "aggregated")
            dropped = tx.updates_with_status(project.id, "dropped")
        return {
            "project": project.name,
            "current_version": project.current_version,
            "versions": [
                {
                    "version": v.version,
                    "digest": v.digest,
                    "created_at": int(v.created_at),
                    "metrics": v.metrics,
                    "updates": v.updates,
                    "contributors": v.contributors,
                }
                for v in versions
            ],
            "contributors": len(clients),
            "updates_accepted": sum(c.accepted for c in clients),
            "updates_rejected": sum(c.rejected for c in clients),
            "total_credit": sum(c.credit for c in clients),
            "credit_unit": CREDIT_UNIT,
            "live_leases": live,
            "pending_updates": pending,
            "updates_aggregated": aggregated,
            "updates_dropped": dropped,
            "tasks_rejected": rejected_tasks,
        }

    def me(self, project: ProjectRecord, client: ClientRecord) -> dict[str, Any]:
        board = self.leaderboard(project)
        row = next(r for r in board["contributors"] if r["client_id"] == client.id)
        return {**row, "credit_unit": CREDIT_UNIT}

    # --- metrics -------------------------------------------------------------------------
    def metrics_rejected(self, project: str, reason: str) -> None:
        self.metrics.updates_rejected.labels(project=project, reason=reason).inc()


_PAYLOAD_CODES = frozenset(PAYLOAD_CODES)


def check_name_ok(name: str) -> bool:
    try:
        check_project_name(name)
    except HTTPError:
        return False
    return True


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


def _record_pace(
    tx: WriteTx,
    client_id: str,
    task: TaskRecord,
    num_examples: int,
    now: float,
    client: ClientRecord | None = None,
) -> None:
    """Add this upload's turnaround (lease to now) to the client's pace (``backend.pacing``)."""
    from backend.rounds import full_task_steps

    hparams = task.manifest.get("hparams")
    steps = full_task_steps(hparams, num_examples) if isinstance(hparams, dict) else None
    client = client or tx.client(client_id)
    if steps is None or client is None:
        return
    pace = pacing.next_pace(
        pacing.pace_of(client),
        seconds=now - task.issued_at,
        steps=steps,
        examples=num_examples,
        now=now,
    )
    tx.set_client_pace(client_id, pace.s_per_step, pace.dev, pace.samples, pace.at, pace.examples)


def _check_live(task: TaskRecord, now: float) -> None:
    if task.status == "rejected":
        raise api_error(
            "task_rejected",
            f"task {task.id!r} was refused for good ({task.rejected_code}); its update cannot "
            "be used, lease a new task",
        )
    if task.status == "cancelled":
        raise api_error(
            "wrong_base", "the round of this task has been aggregated; lease a new task"
        )
    if task.status != "leased" or task.deadline < now:
        raise api_error(
            "lease_expired", f"the lease on task {task.id!r} has ended; lease a new task"
        )


def _save_tensors(tensors: Mapping[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def load_tensors(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return dict(load(data))


def evaluate_state(
    recipe: Recipe, hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor], data: Dataset
) -> dict[str, float]:
    from federated.training import load_state_into

    model = recipe.build_model(hparams)
    load_state_into(model, state)
    return {k: float(v) for k, v in recipe.evaluate(model, data).items()}


__all__ = [
    "Coordinator",
    "Notifier",
    "ProjectRuntime",
    "RecipeError",
    "WriteTx",
    "decode_model",
    "hash_token",
]
