"""The contributors of ``bench.adversaries``: honest engines, and adversaries.

``HonestEngine`` wraps one real contributor engine (``app.contributor.controller.
Controller``, what ``barnraise --headless`` runs, with its own training child) and logs
every upload it reports (``TaskFinished``: accepted, or the coordinator's refusal code).
``gflop_counters`` reads the coordinator's ``/metrics`` as any scraper would.

Each adversary is a ``backend.demo_clients.DemoContributor`` (join, lease with the task
signature checked, model download checked against its digest, honest training with the
task's seed) whose ``upload`` step is replaced: the honest payload and manifest it is
handed are turned into the attack's, signed with the client's own key and sent. Every
upload attempt is logged in the client (task id, HTTP status, error code), whatever the
answer; nothing is retried.

Attacks (``ATTACKS``): ``noise``, ``sign_flip``, ``zero``, ``base_echo``, ``reuse``,
``takeover``, ``inflated_examples``, ``poisoned_metrics``; what each sends is in ``forge``.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import requests
import torch
from prometheus_client.parser import text_string_to_metric_families

from app.contributor.controller import Controller, EngineOptions, EnginePaths
from app.contributor.credentials import FileCredentialStore
from app.contributor.events import TaskFinished
from app.contributor.sensors import FakeSensors
from app.contributor.settings import default_settings
from backend.demo_clients import ClientError, DemoContributor
from backend.wsgi import App
from federated import protocol
from federated.codec import decode_model, decode_update, encode_update
from federated.protocol import limits
from federated.recipes import get_recipe
from federated.tensors import StateDict, l2_norm

ATTACKS = (
    "noise",
    "sign_flip",
    "zero",
    "base_echo",
    "reuse",
    "takeover",
    "inflated_examples",
    "poisoned_metrics",
)
ASYNC_ONLY = frozenset({"takeover"})

NORM_MARGIN = 0.99
"""Crafted deltas aim at this share of the task's ``max_update_norm`` (just under it)."""
FLIP_FACTOR = -10.0
LEASE_WAIT_S = 2.0
"""Adversaries long-poll briefly, so that they notice the end of a run quickly."""
TAKEOVER_WORKERS = 3
"""Threads of one takeover client, each leasing on the same identity."""


def inflated_examples(max_examples: int) -> int:
    """1e9 examples if the manifest's range allows it, else max_examples x 1000, clamped."""
    if limits.MAX_EXAMPLES >= 1_000_000_000:
        return 1_000_000_000
    return min(limits.MAX_EXAMPLES, max_examples * 1000)


def poisoned_metrics(honest: Mapping[str, float]) -> dict[str, float]:
    """Every metric the honest client reports, at the largest magnitude the manifest accepts
    (1.5e308 would be refused at parse: metrics are within +-``MAX_METRIC_ABS``)."""
    return {name: float(limits.MAX_METRIC_ABS) for name in honest}


@dataclass(frozen=True)
class UploadRecord:
    """One upload attempt as the client saw it."""

    task_id: str
    status: int  # HTTP status; 0 when no answer came (connection error)
    code: str  # the error code of a refusal, "" when accepted
    at: float  # time.monotonic()


def _scaled(delta: StateDict, factor: float) -> StateDict:
    return {k: v * factor for k, v in delta.items()}


def _under_norm(delta: StateDict, max_norm: float) -> StateDict:
    """``delta`` scaled down to NORM_MARGIN x max_norm if it is longer than that."""
    norm = l2_norm(delta)
    target = NORM_MARGIN * max_norm
    return delta if norm <= target or norm == 0 else _scaled(delta, target / norm)


@dataclass
class Adversary(DemoContributor):
    """One cheating contributor; ``run(stop)`` leases, trains, forges and uploads."""

    attack: str = "noise"
    seed: int = 0
    log: list[UploadRecord] = field(default_factory=list)
    lease_errors: dict[str, int] = field(default_factory=dict)
    _task: dict[str, Any] | None = None
    _reused: tuple[bytes, protocol.UpdateManifest] | None = None
    _rng: torch.Generator | None = None

    def run(self, stop: threading.Event) -> None:
        """Until ``stop``: lease, train, forge, upload; refusals are logged, not raised."""
        try:
            if not self.token:
                self.join()
            while not stop.is_set():
                task = self._lease_once(stop)
                if task is not None and not stop.is_set():
                    self._work(task)
        except Exception as exc:
            if not stop.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")

    def _lease_once(self, stop: threading.Event) -> dict[str, Any] | None:
        try:
            return self.lease(wait=LEASE_WAIT_S)
        except (ClientError, requests.RequestException) as exc:
            key = _lease_error_code(exc)
            self.lease_errors[key] = self.lease_errors.get(key, 0) + 1
            stop.wait(0.5)  # a paused or closed project: ask again a little later
            return None

    def _work(self, task: dict[str, Any]) -> None:
        self._task = task
        try:
            self.train_and_upload(task)
        except ClientError as exc:  # the model download failed
            self.errors.append(str(exc))

    def upload(
        self, task_id: str, payload: bytes, manifest: protocol.UpdateManifest
    ) -> dict[str, Any]:
        """Called by ``train_and_upload`` with the honest update: send the forged one."""
        assert self._task is not None and self._task["task_id"] == task_id
        forged_payload, forged = self.forge(self._task, payload, manifest)
        return self.send(task_id, forged_payload, forged)

    def forge(
        self, task: dict[str, Any], payload: bytes, honest: protocol.UpdateManifest
    ) -> tuple[bytes, protocol.UpdateManifest]:
        """The attack's payload and manifest, from the honest ones of the same task."""
        kind = self.attack
        hp = task["hparams"]
        codec = str(task["codec"])
        max_norm = float(task["max_update_norm"])
        spec = get_recipe(task["recipe"]).tensor_spec(hp)
        if kind == "reuse":
            if self._reused is None:
                self._reused = (payload, honest)
            first_payload, first = self._reused  # this task's own claims, the old bytes
            return first_payload, msgspec.structs.replace(
                honest, payload_digest=first.payload_digest
            )
        if kind == "inflated_examples":
            claim = inflated_examples(int(task["max_examples"]))
            return payload, msgspec.structs.replace(honest, num_examples=claim)
        if kind == "poisoned_metrics":
            # Set past the type's own check: the coordinator is what is being tested.
            forged_metrics = msgspec.structs.replace(honest)
            forged_metrics.metrics = poisoned_metrics(honest.metrics)
            return payload, forged_metrics
        delta = decode_update(payload, spec, expected_codec=codec)
        num_examples = honest.num_examples
        if kind in ("sign_flip", "takeover"):
            delta = _under_norm(_scaled(delta, FLIP_FACTOR), max_norm)
        elif kind == "noise":
            delta = self._noise(delta, max_norm)
        elif kind == "zero":
            delta = {k: torch.zeros_like(v) for k, v in delta.items()}
            num_examples = int(task["max_examples"])
        elif kind == "base_echo":
            delta = dict(decode_model(self.model(task["base_digest"]), spec))
        else:
            raise ValueError(f"unknown attack {kind!r}")
        encoded = encode_update(delta, codec)
        return encoded.payload, msgspec.structs.replace(
            honest, payload_digest=encoded.digest, num_examples=num_examples
        )

    def _noise(self, like: StateDict, max_norm: float) -> StateDict:
        """Gaussian noise of global norm NORM_MARGIN x max_norm, seeded per client."""
        if self._rng is None:
            digest = hashlib.sha256(f"{self.seed}:{self.display_name}".encode()).digest()
            self._rng = torch.Generator().manual_seed(int.from_bytes(digest[:8], "big"))
        noise = {k: torch.randn(v.shape, generator=self._rng) for k, v in like.items()}
        return _scaled(noise, NORM_MARGIN * max_norm / l2_norm(noise))

    def send(
        self, task_id: str, payload: bytes, manifest: protocol.UpdateManifest
    ) -> dict[str, Any]:
        """PUT the update as the protocol says (signed canonical manifest); log the answer."""
        raw = protocol.encode_canonical(manifest)
        headers = {
            **self._auth(),
            "Content-Type": "application/octet-stream",
            "X-Barnraise-Manifest": base64.b64encode(raw).decode("ascii"),
            "X-Barnraise-Signature": self.key.sign_bytes(raw),
        }
        try:
            r = self.session.put(
                f"{self.api}/tasks/{task_id}/update", data=payload, headers=headers, timeout=120
            )
        except requests.RequestException as exc:
            self.log.append(UploadRecord(task_id, 0, type(exc).__name__, time.monotonic()))
            return {}
        body = _json_or_empty(r)
        code = "" if r.status_code in (200, 201) else _error_code(body, r.status_code)
        self.log.append(UploadRecord(task_id, r.status_code, code, time.monotonic()))
        if not code:
            self.uploads += 1
            self.receipts.append(body)
        return body


@dataclass
class Takeover(Adversary):
    """One identity, ``workers`` threads, each leasing and uploading (sign-flipped deltas)
    as fast as it can: how many leases at once the coordinator lets one client hold, and
    how much of each buffer one client can fill."""

    workers: int = TAKEOVER_WORKERS
    max_in_hand: int = 0
    _in_hand: set[str] = field(default_factory=set)
    _cond: threading.Condition = field(default_factory=threading.Condition)

    def run(self, stop: threading.Event) -> None:
        try:
            if not self.token:
                self.join()
        except Exception as exc:
            self.errors.append(f"{type(exc).__name__}: {exc}")
            return
        threads = [
            threading.Thread(target=self._worker, args=(self._clone(), stop), daemon=True)
            for _ in range(self.workers)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _clone(self) -> Adversary:
        """The same identity (key, token) with its own HTTP session and log."""
        return Adversary(
            base_url=self.base_url,
            project=self.project,
            display_name=self.display_name,
            key=self.key,
            client_id=self.client_id,
            token=self.token,
            project_key=self.project_key,
            attack="takeover",
            seed=self.seed,
            log=self.log,  # one shared log: list.append is atomic
            lease_errors=self.lease_errors,
        )

    def _released(self, task_id: str, stop: threading.Event) -> bool:
        return task_id not in self._in_hand or stop.is_set()

    def _worker(self, client: Adversary, stop: threading.Event) -> None:
        try:
            while not stop.is_set():
                task = client._lease_once(stop)
                if task is None or stop.is_set():
                    continue
                task_id = task["task_id"]
                with self._cond:
                    if task_id in self._in_hand:  # the server handed out the same lease again
                        self._cond.wait_for(functools.partial(self._released, task_id, stop))
                        continue
                    self._in_hand.add(task_id)
                    self.max_in_hand = max(self.max_in_hand, len(self._in_hand))
                try:
                    client._work(task)
                finally:
                    with self._cond:
                        self._in_hand.discard(task_id)
                        self._cond.notify_all()
        except Exception as exc:
            if not stop.is_set():
                self.errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._cond:
                self._cond.notify_all()


GFLOP_COUNTERS = ("barnraise_verification_gflop_total", "barnraise_contributed_gflop_total")


def gflop_counters(url: str, project: str) -> tuple[float, float] | None:
    """(verification, contributed) GFLOP of the project from the coordinator's ``/metrics``;
    None if it does not export both counters."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    families, found = set(), dict.fromkeys(GFLOP_COUNTERS, 0.0)
    for family in text_string_to_metric_families(text):
        families.add(family.name if family.name.endswith("_total") else f"{family.name}_total")
        for sample in family.samples:
            if sample.name in found and sample.labels.get("project") == project:
                found[sample.name] += float(sample.value)
    if not families.issuperset(GFLOP_COUNTERS):
        return None
    return found[GFLOP_COUNTERS[0]], found[GFLOP_COUNTERS[1]]


def make_adversary(attack: str, base_url: str, project: str, index: int, seed: int) -> Adversary:
    name = f"adversary-{attack}-{index}"
    if attack == "takeover":
        return Takeover(
            base_url=base_url, project=project, display_name=name, attack=attack, seed=seed
        )
    return Adversary(
        base_url=base_url, project=project, display_name=name, attack=attack, seed=seed
    )


def _json_or_empty(r: requests.Response) -> dict[str, Any]:
    try:
        body = r.json()
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _error_code(body: Mapping[str, Any], status: int) -> str:
    error = body.get("error")
    if isinstance(error, dict) and isinstance(error.get("code"), str):
        return str(error["code"])
    return f"http_{status}"


def _lease_error_code(exc: Exception) -> str:
    """The error code in a ClientError's text (``... -> 503: {"error": {"code": ...``)."""
    text = str(exc)
    marker = '"code":'
    if marker in text:
        rest = text.split(marker, 1)[1].strip().lstrip('"')
        return rest.split('"', 1)[0] or type(exc).__name__
    return type(exc).__name__


# --- honest contributors: real engines ----------------------------------------------------

WARMUP_LIMIT_S = 240.0
"""Seconds at most for every engine to start its training child and have an update accepted."""


@dataclass(frozen=True)
class EngineUpload:
    """One task an engine finished (``TaskFinished``), as the engine reported it."""

    project: str
    task_id: str
    accepted: bool
    reason: str  # the coordinator's refusal code, or a local one (e.g. gave_back_late)
    at: float

    @property
    def uploaded(self) -> bool:
        """Whether the coordinator answered an upload (a local give-back is not one)."""
        return self.accepted or self.reason in protocol.ERROR_STATUS


@dataclass
class HonestEngine:
    """One contributor engine, started once, joining and leaving each run's project."""

    engine: Controller
    index: int
    log: list[EngineUpload] = field(default_factory=list)
    client_ids: dict[str, str] = field(default_factory=dict)  # project -> client id
    _keys: dict[str, str] = field(default_factory=dict)  # project -> credentials key

    def __call__(self, event: object) -> None:  # engine threads
        if isinstance(event, TaskFinished):
            self.log.append(
                EngineUpload(
                    event.project, event.task_id, event.accepted, event.reason, time.monotonic()
                )
            )

    def join(self, page_url: str, project: str) -> None:
        creds = self.engine.join(page_url, display_name=f"honest-{self.index}")
        self.client_ids[project], self._keys[project] = creds.client_id, creds.key

    def leave(self, project: str) -> None:
        """Give back the task in hand and forget the project (never paused under an
        engine: a 503 project_paused makes it wait out Retry-After on that project)."""
        self.engine.leave(self._keys.pop(project))

    def uploads(self, project: str) -> list[EngineUpload]:
        return [u for u in list(self.log) if u.project == project]


def make_engines(root: Path, n: int) -> list[HonestEngine]:
    """``n`` engines on a plugged-in, idle machine: one full core each, other load ignored."""
    settings = default_settings().updated(
        {
            "idle_minutes_before_start": 0,
            "idle.cpu_cores": 1,
            "idle.cpu_percent": 100,
            "other_cpu_suspend_percent": 100,
            "other_cpu_resume_percent": 99,
        }
    )
    engines = []
    for i in range(n):
        folder = root / f"honest-{i}"
        engine = Controller(
            credentials=FileCredentialStore(folder / "credentials.json"),
            paths=EnginePaths(folder),
            settings=settings,
            sensors=FakeSensors(
                idle_seconds=1e6, on_battery=False, other_cpu_percent=0.0, cpu_count=2
            ),
            options=EngineOptions(lease_wait_s=3, sensor_interval_s=1.0),
        )
        honest = HonestEngine(engine, i)
        engine.subscribe(honest)
        engines.append(honest)
    return engines


def warm_up(app: App, url: str, engines: list[HonestEngine], hparams: Mapping[str, Any]) -> float:
    """Start the engines on a throwaway sync project until each had an update accepted
    (training child started, data loaded); returns the seconds it took (not measured)."""
    co, name = app.coordinator, "adv-warmup"
    co.create_project(
        name,
        recipe="digits-mlp",
        hparams=dict(hparams),
        settings={"mode": "sync", "clients_per_round": len(engines), "min_updates": 1},
    )
    began = time.monotonic()
    for e in engines:
        e.join(f"{url}/p/{name}", name)
        e.engine.start()
    while time.monotonic() - began < WARMUP_LIMIT_S:
        if all(any(u.accepted for u in e.uploads(name)) for e in engines):
            break
        time.sleep(0.2)
    for e in engines:
        e.leave(name)
    return time.monotonic() - began


def stop_engines(engines: list[HonestEngine]) -> None:
    for e in engines:
        e.engine.stop()
    for e in engines:
        e.engine.wait(60)
