"""What the services share: the store, blobs, keys, clock, metrics and per-project runtime.

One ``ServiceContext`` per coordinator. It holds state, not operations: each service in
``backend.services`` takes it and does one job. Reads every service needs (a project by
name, the list of projects) live here too, so that no service has to import another for
them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from backend.errors import NotFound
from backend.ids import check_project_name
from backend.keys import KeyStore
from backend.metrics import BackendMetrics
from backend.services.notifier import Notifier
from backend.settings import ProjectSettings
from backend.storage import StorageHealth
from backend.store import BlobStore, ProjectRecord, Store
from federated.recipes import Dataset, Recipe, get_recipe
from federated.tensors import StateDict, TensorSpec

_MODELS_KEPT = 3
"""Decoded model versions a project keeps in memory for screening uploads."""


@dataclass
class ProjectRuntime:
    """What a project's recipe implies, computed once per process."""

    recipe: Recipe
    hparams: dict[str, Any]
    spec: TensorSpec
    flops_per_example: float
    settings: ProjectSettings
    stored_settings: dict[str, Any] = field(default_factory=dict)  # what ``settings`` parsed
    _test: Dataset | None = None
    _test_loaded: bool = False
    _models: dict[str, StateDict] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def model_state(self, digest: str, load: Callable[[], StateDict]) -> StateDict:
        """The decoded model ``digest`` (``load()`` decodes it), kept for the few latest
        versions: every upload's screening compares its delta with its base."""
        with self._lock:
            state = self._models.get(digest)
        if state is None:
            state = load()
            with self._lock:
                self._models[digest] = state
                while len(self._models) > _MODELS_KEPT:
                    self._models.pop(next(iter(self._models)))
        return state

    def test_data(self) -> Dataset | None:
        with self._lock:
            if not self._test_loaded:
                self._test = self.recipe.load_test(self.hparams)
                self._test_loaded = True
            return self._test


class ServiceContext:
    """The runtime state the services share. Thread-safe."""

    def __init__(
        self,
        data_dir: Path,
        *,
        clock: Callable[[], float],
        metrics: BackendMetrics,
        store: Store,
        blobs: BlobStore,
        keys: KeyStore,
    ) -> None:
        self.data_dir = data_dir
        self.clock = clock
        self.metrics = metrics
        self.store = store
        self.blobs = blobs
        self.keys = keys
        self.notifier = Notifier()
        self.storage = StorageHealth(blobs.tmp_dir)
        """Whether writes fail for want of space (``/healthz``; a full disk answers 507)."""
        self.worker_wakeup = threading.Event()
        """Set when the aggregation worker should look again (an update arrived, a status
        changed); the worker waits on it."""
        self._runtimes: dict[str, ProjectRuntime] = {}
        self._runtimes_lock = threading.Lock()

    def runtime(self, project: ProjectRecord) -> ProjectRuntime:
        """The project's recipe, tensor spec and parsed settings, parsed again when the
        organiser changed them (``project_changes``; in any process: ``project`` is a row
        just read)."""
        with self._runtimes_lock:
            rt = self._runtimes.get(project.name)
            if rt is not None and (
                rt.stored_settings != project.settings or rt.hparams != project.hparams
            ):
                rt = None
            if rt is None:
                recipe = get_recipe(project.recipe)
                rt = ProjectRuntime(
                    recipe=recipe,
                    hparams=dict(project.hparams),
                    spec=recipe.tensor_spec(project.hparams),
                    flops_per_example=float(recipe.flops_per_example(project.hparams)),
                    settings=ProjectSettings.from_dict(project.settings),
                    stored_settings=dict(project.settings),
                )
                self._runtimes[project.name] = rt
            return rt

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

    def wake_worker(self) -> None:
        self.worker_wakeup.set()
