"""Uploads: verify one update and commit it, or count and record its refusal.

The HTTP handler owns the request: it checks the content type, reads the manifest and
signature headers and streams the body to a temp file. Everything from the first check
to the commit runs inside ``UploadService.attempt()``, so a coded refusal raised anywhere
in it (by the handler or here) is counted against the contributor, and a final one
(``FINAL_UPLOAD_CODES``) of an update for a task the caller holds ends the task for good,
in the same durable write that counts the rejection.

The verification order: manifest parse, signature over its exact bytes, the caller owns
the live lease (or this is a retry of an accepted update), manifest fields match the
task, payload digest, base version still acceptable, payload decodes and validates. Then
the blob is stored (durable) before the record that points at it.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from backend import credit as credit_math
from backend.errors import FINAL_UPLOAD_CODES, PAYLOAD_CODES, HTTPError, api_error, refusal
from backend.ids import check_server_id, new_id
from backend.services import privacy
from backend.services.context import ProjectRuntime, ServiceContext
from backend.services.finishing import FINISHED, finished_error
from backend.services.standings import receipt
from backend.services.tasks import check_live, check_not_banned, owned_task, record_pace
from backend.services.upload_resume import ResumableUploads, signed_manifest
from backend.settings import ProjectSettings
from backend.store import ClientRecord, ProjectRecord, TaskRecord, UpdateRecord
from federated import protocol
from federated.codec import decode_model, decode_update
from federated.errors import UpdateRejected
from federated.screening import free_ride_reason
from federated.tensors import StateDict, l2_norm

log = logging.getLogger(__name__)

_PAYLOAD_CODES = frozenset(PAYLOAD_CODES)

_LATE_CODES = frozenset({"wrong_base"})
"""Final refusals an honest contributor gets for being late, which do not make it suspect."""

_TRANSFER_CODES = frozenset({"incomplete_body", *protocol.RESUME_CODES})
"""Refusals of how the bytes travelled (a cut body, a resumed chunk that must be sent
again), not of the update: counted in the metrics, not against the contributor."""

_TYPICAL_NORM_UPDATES = 32
"""The typical norm a new update is compared with: the median of the project's last this
many aggregated updates."""


@dataclass
class UploadAttempt:
    """One upload in progress, and what it established before it may be refused: whether
    the caller owns the task (then a final refusal may end it) and the signed example
    count (then the turnaround is a pace sample, even for an update that came too late)."""

    project: ProjectRecord
    client: ClientRecord
    task_id: str
    task: TaskRecord | None = None
    num_examples: int | None = None
    source_net: str | None = None


class UploadService:
    """Verify and store updates; count and record refusals."""

    def __init__(self, ctx: ServiceContext) -> None:
        self._ctx = ctx
        self.resume = ResumableUploads(ctx)
        """Partial uploads: a cut upload's prefix kept, the rest sent in chunks."""

    @contextmanager
    def attempt(
        self, project: ProjectRecord, client: ClientRecord, task_id: str
    ) -> Iterator[UploadAttempt]:
        """The block of one upload: a coded refusal raised in it is counted (metrics and the
        contributor's rejections) and, if final, ends the task; then it propagates."""
        attempt = UploadAttempt(project, client, task_id)
        # Before the block: a banned caller's upload is neither counted nor final (the ban
        # ended its leases already).
        check_not_banned(project, client)
        try:
            yield attempt
        except HTTPError as exc:
            self.metrics_rejected(project.name, exc.code)
            if exc.status not in (401, 404) and exc.code not in _TRANSFER_CODES:
                self._record_rejection(attempt, exc.code)
            raise

    def admit(self, attempt: UploadAttempt) -> int:
        """The checks before the body is read; returns the project's payload size limit."""
        check_server_id(attempt.task_id, "task id")
        settings = self._ctx.runtime(attempt.project).settings
        if attempt.project.status == FINISHED:
            raise finished_error(attempt.project.name)
        if attempt.project.status == "closed":
            raise api_error("project_closed", f"project {attempt.project.name!r} is closed")
        return settings.max_payload_bytes

    def temp_file(self) -> tuple[int, Path]:
        """Where the body goes while it is verified: a new temp file on the blob filesystem."""
        return self._ctx.blobs.temp_file()

    def accept(
        self,
        attempt: UploadAttempt,
        manifest_header: str,
        signature: str,
        tmp: Path,
        digest: str,
        size: int,
    ) -> tuple[int, protocol.Receipt]:
        """Verify the update in ``tmp`` (``size`` bytes, sha256 ``digest``) against its
        base64 manifest and signature and commit it: (201, receipt), or (200, the first
        receipt) for a retry of an accepted update. ``tmp`` is moved into the blob store
        when the update is accepted; the caller removes it in any case."""
        ctx = self._ctx
        project, client, task_id = attempt.project, attempt.client, attempt.task_id
        settings = ctx.runtime(project).settings
        # 1. manifest parse: strict and canonical, so one update has one signed form;
        # 2. signature over the exact bytes
        fields = signed_manifest(client, manifest_header, signature)
        # 3. the client owns the live lease (or this is a retry of an accepted update)
        with ctx.store.read() as tx:
            task = owned_task(ctx, project, client, task_id)
            previous = tx.update_for_task(task_id)
        attempt.task = task
        if previous is not None:
            if previous.payload_digest == digest:
                ctx.store.wait_durable()  # the first upload may still be in its fsync
                return 200, receipt(previous)
            raise api_error(
                "task_already_answered", f"task {task_id!r} already has an accepted update"
            )
        now = ctx.clock()
        check_live(task, now)  # rejected, cancelled (wrong_base) or expired
        # 4. manifest fields match the task
        try:
            manifest = protocol.convert(
                fields,
                protocol.UpdateManifest,
                what="X-Barnraise-Manifest",
                code="manifest_mismatch",
            )
        except protocol.ProtocolError as exc:
            raise refusal(exc) from None
        _check_manifest(manifest, task, project, client, settings)
        attempt.num_examples = manifest.num_examples
        # 5. payload digest
        if manifest.payload_digest != digest:
            raise api_error(
                "digest_mismatch",
                "payload_digest in the manifest is not the sha256 of the body",
            )
        # 6. base version still acceptable
        current = ctx.project(project.name)
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
        rt = ctx.runtime(project)
        payload = tmp.read_bytes()
        try:
            delta = decode_update(
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
        # 8. the update carries work of its own
        norm = l2_norm(delta)
        self._screen(project, task, rt, delta, norm, digest)
        del delta
        # commit: the blob first (durable), then the record that points at it
        ctx.blobs.adopt(tmp, digest)
        return self._commit_update(
            attempt, task, rt, manifest, manifest_header, signature, digest, norm
        )

    def _screen(
        self,
        project: ProjectRecord,
        task: TaskRecord,
        rt: ProjectRuntime,
        delta: StateDict,
        norm: float,
        digest: str,
    ) -> None:
        """Refuse a free ride: a payload another task sent, an empty delta, the base model
        sent back (``federated.screening``)."""
        ctx = self._ctx
        with ctx.store.read() as tx:
            _check_not_duplicate(tx.update_with_payload(project.id, digest), task)
            norms = tx.recent_norms(project.id, _TYPICAL_NORM_UPDATES)
            base = tx.version(project.id, task.base_version)
        typical = statistics.median(norms) if len(norms) >= 3 else None
        base_state = None
        if base is not None:
            base_state = rt.model_state(
                base.digest, lambda: decode_model(ctx.blobs.read(base.digest), rt.spec)
            )
        finding = free_ride_reason(delta, norm, base_state, typical)
        if finding is not None:
            raise api_error(finding.code, finding.message)

    def metrics_rejected(self, project: str, reason: str) -> None:
        self._ctx.metrics.updates_rejected.labels(project=project, reason=reason).inc()

    def _record_rejection(self, attempt: UploadAttempt, code: str) -> None:
        ctx = self._ctx
        project, client, task_id = attempt.project, attempt.client, attempt.task_id
        final = code in FINAL_UPLOAD_CODES
        now = ctx.clock()
        ended = False
        try:
            # Durable when it ends the task: after a crash it must not be leased again.
            with ctx.store.write(durable=final) as tx:
                tx.count_rejection(client.id, now, in_a_row=final and code not in _LATE_CODES)
                if final:
                    ended = tx.reject_task(task_id, project.id, client.id, code, now)
                if ended and attempt.task is not None and attempt.num_examples is not None:
                    record_pace(tx, client.id, attempt.task, attempt.num_examples, now)
        except Exception:
            log.exception("could not record the rejection (%s) of task %s", code, task_id)
            return
        if ended:
            ctx.notifier.notify(project.name)  # its lease capacity is free again

    def _commit_update(
        self,
        attempt: UploadAttempt,
        task: TaskRecord,
        rt: ProjectRuntime,
        manifest: protocol.UpdateManifest,
        manifest_b64: str,
        signature: str,
        digest: str,
        norm: float,
    ) -> tuple[int, protocol.Receipt]:
        ctx = self._ctx
        project, client = attempt.project, attempt.client
        now = ctx.clock()
        hparams = task.manifest.get("hparams")
        gflop = credit_math.update_credit(
            manifest.num_examples,
            task.max_examples,
            rt.flops_per_example,
            hparams if isinstance(hparams, dict) else {},
        )
        update = UpdateRecord(
            id=new_id(),
            project_id=project.id,
            task_id=task.id,
            client_id=client.id,
            base_version=task.base_version,
            payload_digest=digest,
            num_examples=manifest.num_examples,
            max_examples=task.max_examples,
            credit=gflop,
            accepted_at=now,
            manifest_b64=manifest_b64,
            signature=signature,
            metrics=dict(manifest.metrics),
            norm=norm,
            source_net=attempt.source_net,
            # As reported (signed with the update, bounded by the protocol), never credited.
            energy_joules=manifest.energy_joules,
            energy_method=manifest.energy_method,
        )
        with ctx.store.write() as tx:
            # Re-checked under the writer lock: another request may have answered meanwhile.
            previous = tx.update_for_task(task.id)
            if previous is not None:
                if previous.payload_digest == digest:
                    return 200, receipt(previous)
                raise api_error(
                    "task_already_answered", f"task {task.id!r} already has an accepted update"
                )
            fresh = tx.task(task.id)
            assert fresh is not None
            if fresh.status == "cancelled":
                raise api_error(
                    "wrong_base", "the round of this task has been aggregated; lease a new task"
                )
            check_live(fresh, now)
            _check_not_duplicate(tx.update_with_payload(project.id, digest), task)
            latest = tx.project_by_id(project.id)
            assert latest is not None
            settings = rt.settings
            if settings.mode == "sync" and (
                latest.current_version != task.base_version or tx.aggregation_running(project.id)
            ):
                raise api_error("wrong_base", "the round of this task has closed; lease a new task")
            tx.insert_update(update)
            tx.set_task_status(task.id, "answered")
            tx.add_pending_credit(client.id, gflop, now)
            record_pace(tx, client.id, fresh, update.num_examples, now)
            batch = hparams.get("batch_size", 1) if isinstance(hparams, dict) else 1
            privacy.record_report(
                tx,
                project.id,
                settings,
                client.id,
                manifest.metrics,
                min(1.0, float(batch) / max(1, update.num_examples)),
                now,
            )
        ctx.metrics.updates_accepted.labels(project=project.name).inc()
        ctx.metrics.contributed_gflop.labels(project=project.name).inc(gflop)
        ctx.wake_worker()
        return 201, receipt(update)


def _check_manifest(
    manifest: protocol.UpdateManifest,
    task: TaskRecord,
    project: ProjectRecord,
    client: ClientRecord,
    settings: ProjectSettings,
) -> None:
    """The fields that must say what the task said (their shape is checked already)."""
    expected = {
        "project": project.name,
        "task_id": task.id,
        "client_id": client.id,
        "base_digest": task.manifest["base_digest"],
        "codec": settings.codec,
    }
    for key, value in expected.items():
        if getattr(manifest, key) != value:
            raise api_error(
                "manifest_mismatch",
                f"manifest field {key!r} does not match the task ({value!r})",
            )
    if manifest.num_examples > task.max_examples:
        raise api_error(
            "too_many_examples",
            f"num_examples {manifest.num_examples} is more than the task gave "
            f"(max_examples {task.max_examples})",
        )


def _check_not_duplicate(first: UpdateRecord | None, task: TaskRecord) -> None:
    """Refuse a payload that an update of another task already sent."""
    if first is not None and first.task_id != task.id:
        raise api_error(
            "duplicate_payload",
            "this payload was already sent as the update of another task; every task's "
            "update is its own training",
        )
