"""The coordinator: the services of ``backend.services`` over one data folder.

``Coordinator`` is the composition root. It opens the data folder (database, blobs,
project keys), builds the shared ``ServiceContext`` and the services on it, and starts the
aggregation worker. The HTTP handlers in ``backend.api`` parse requests and call it (or
its services); the CLI calls it directly for organiser commands. Nothing here sees HTTP.

Data folder layout::

    DATA/                    0700 (an existing folder is tightened at start)
    DATA/barnraise.sqlite3   the store (WAL mode; 0600, and so its -wal and -shm files)
    DATA/blobs/ab/abcd...    models, updates and strategy state, by sha256
    DATA/blobs/tmp/          uploads being verified (what a crash left is removed at start)
    DATA/keys/NAME.ed25519   each project's signing key (0600)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.keys import KeyStore
from backend.metrics import METRICS, BackendMetrics
from backend.services import project_changes
from backend.services.admin import AdminService
from backend.services.aggregation import process_owner
from backend.services.aggregation_worker import AggregationWorker
from backend.services.context import ProjectRuntime, ServiceContext
from backend.services.exports import ExportService
from backend.services.leasing import LeasingService
from backend.services.membership import MembershipService, hash_token
from backend.services.models import ModelService
from backend.services.notifier import Notifier
from backend.services.profiles import ProfileService
from backend.services.projects import ProjectService
from backend.services.provenance import ProvenanceService
from backend.services.standings import StandingsService
from backend.services.uploads import UploadService
from backend.storage import private_file, private_folder
from backend.store import BlobStore, ClientRecord, ProjectRecord, Store
from backend.store.factory import DB_FILE, make_store
from federated import protocol


def default_data_dir() -> Path:
    """The data folder when none is given: the platform's per-user data folder."""
    import platformdirs

    return Path(platformdirs.user_data_dir("barnraise-backend"))


@dataclass(frozen=True)
class Services:
    """The coordinator's services, by job."""

    projects: ProjectService
    membership: MembershipService
    leasing: LeasingService
    uploads: UploadService
    models: ModelService
    standings: StandingsService
    provenance: ProvenanceService
    admin: AdminService
    profiles: ProfileService
    exports: ExportService


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
        database_url: str | None = None,
    ) -> None:
        """``database_url``: PostgreSQL instead of SQLite in the data folder (which still
        holds the blobs and the project keys); ``store``: an open store (tests)."""
        self.data_dir = Path(data_dir)
        private_folder(self.data_dir)
        if store is None and not database_url:
            for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm"):
                if name == DB_FILE or (self.data_dir / name).exists():
                    private_file(self.data_dir / name)  # before SQLite opens (or makes) it
        self.context = ServiceContext(
            self.data_dir,
            clock=clock,
            metrics=metrics or METRICS,
            store=store or make_store(self.data_dir, database_url),
            blobs=BlobStore(self.data_dir / "blobs"),
            keys=KeyStore(self.data_dir / "keys"),
        )
        ctx = self.context
        self.clock = ctx.clock
        self.metrics = ctx.metrics
        self.store = ctx.store
        self.blobs = ctx.blobs
        self.storage = ctx.storage
        self.keys = ctx.keys
        self.notifier = ctx.notifier
        projects = ProjectService(ctx)
        standings = StandingsService(ctx)
        self.services = Services(
            projects=projects,
            membership=MembershipService(ctx, projects),
            leasing=LeasingService(ctx),
            uploads=UploadService(ctx),
            models=ModelService(ctx),
            standings=standings,
            provenance=ProvenanceService(ctx),
            admin=AdminService(ctx),
            profiles=ProfileService(ctx, standings),
            exports=ExportService(ctx, standings),
        )
        # A serving process listens to the others and is marked alive for them; a command
        # only tells them what it changed.
        relay = ctx.store.connect_peers(
            process_owner(), self.notifier.wake if start_worker else None
        )
        if relay is not None:
            self.notifier.relay_to(relay)
        self.worker = AggregationWorker(ctx)
        if start_worker:
            self.worker.start()

    def close(self) -> None:
        """Stop the worker, wake every long poll, close the store. Idempotent."""
        self.notifier.close()
        self.worker.stop()
        with contextlib.suppress(Exception):
            self.store.close()

    def snapshot(self) -> contextlib.AbstractContextManager[object]:
        """A block whose reads share one snapshot (one read transaction instead of one each).

        Keep it short (never around a long poll or a body upload): an open snapshot holds
        back the WAL checkpoint."""
        return self.store.read()

    # --- the services' operations, by their old names ------------------------------------
    def runtime(self, project: ProjectRecord) -> ProjectRuntime:
        return self.context.runtime(project)

    def project(self, name: str) -> ProjectRecord:
        return self.context.project(name)

    def projects(self) -> list[ProjectRecord]:
        return self.context.projects()

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
        warn: Callable[[str], None] | None = None,
    ) -> ProjectRecord:
        return self.services.projects.create_project(
            name,
            recipe=recipe,
            strategy=strategy,
            strategy_params=strategy_params,
            hparams=hparams,
            settings=settings,
            description=description,
            warn=warn,
        )

    def set_status(self, name: str, status: str) -> ProjectRecord:
        return self.services.projects.set_status(name, status)

    def change_project(
        self,
        name: str,
        settings: Mapping[str, Any] | None = None,
        hparams: Mapping[str, Any] | None = None,
        reason: str = "",
    ) -> ProjectRecord:
        """Change a running project's settings and hyperparameters where it is safe."""
        return project_changes.change(
            self.context, self.project(name), dict(settings or {}), dict(hparams or {}), reason
        )

    def finish(self, name: str, reason: str = "") -> ProjectRecord:
        """Finish the project now, for good: its current version is its final model."""
        return self.services.projects.finish(name, reason)

    # The answers below are the services' protocol messages as plain JSON values
    # (``protocol.to_wire``): what the HTTP API sends, for the CLI and tests.
    def project_view(self, project: ProjectRecord) -> dict[str, Any]:
        return _wire(self.services.projects.project_view(project))

    def create_invite(self, name: str, *, max_uses: int = 1) -> str:
        return self.services.membership.create_invite(name, max_uses=max_uses)

    def new_challenge(self, name: str) -> dict[str, Any]:
        return _wire(self.services.membership.new_challenge(name))

    def join(self, name: str, body: protocol.JoinRequest) -> dict[str, Any]:
        return _wire(self.services.membership.join(name, body))

    def overdue_projects(self) -> list[str]:
        """Projects whose aggregation is late (``backend.services.aggregation``)."""
        return self.worker.overdue_projects()

    def authenticate(self, project: ProjectRecord, authorization: str | None) -> ClientRecord:
        return self.services.membership.authenticate(project, authorization)

    def lease(
        self, project: ProjectRecord, client: ClientRecord, wait: float
    ) -> dict[str, Any] | None:
        signed = self.services.leasing.lease(project, client, wait)
        return None if signed is None else _wire(signed)

    def heartbeat(
        self, project: ProjectRecord, client: ClientRecord, task_id: str
    ) -> dict[str, Any]:
        return _wire(self.services.leasing.heartbeat(project, client, task_id))

    def release(self, project: ProjectRecord, client: ClientRecord, task_id: str) -> None:
        self.services.leasing.release(project, client, task_id)

    def signed_model(self, project: ProjectRecord) -> dict[str, Any]:
        return _wire(self.services.models.signed_model(project))

    def model_known(self, project: ProjectRecord, digest: str) -> bool:
        return self.services.models.model_known(project, digest)

    def leaderboard(self, project: ProjectRecord) -> dict[str, Any]:
        return _wire(self.services.standings.leaderboard(project))

    def stats(self, project: ProjectRecord) -> dict[str, Any]:
        return _wire(self.services.standings.stats(project))

    def me(self, project: ProjectRecord, client: ClientRecord) -> dict[str, Any]:
        return _wire(self.services.standings.me(project, client))


def _wire(message: object) -> dict[str, Any]:
    wire: dict[str, Any] = protocol.to_wire(message)
    return wire


__all__ = [
    "DB_FILE",
    "Coordinator",
    "Notifier",
    "ProjectRuntime",
    "Services",
    "default_data_dir",
    "hash_token",
]
