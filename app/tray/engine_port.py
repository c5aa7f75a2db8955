"""What the tray needs from the contributor engine, written down as a Protocol.

The tray is a thin shell: everything it shows comes from an ``EnginePort`` and everything
the volunteer does goes back through one. ``adapter.py`` fits the engine in
``app/contributor/`` to this port; the tests use a fake. No Qt here and no torch, so the
port can be implemented and tested without either.

Threads: ``subscribe`` callbacks run on the engine's threads (the tray re-emits them as Qt
signals); every other method is called from the tray's worker threads, never from the GUI
thread, because any of them may block (the network, a keychain prompt, a paused trainer).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from app.contributor.credential_choice import CredentialStorage
from app.contributor.events import EngineState, Event
from app.contributor.invites import JoinTarget
from app.contributor.settings import Settings

__all__ = [
    "DATA_BUILTIN",
    "DATA_LOCAL",
    "CredentialStorage",
    "DashboardView",
    "EnginePort",
    "ExistingIdentity",
    "JoinRequest",
    "JoinedProject",
    "KeyChangeNotice",
    "ProjectPreview",
]

DATA_BUILTIN = "builtin"  # the recipe brings its own data shard (public data)
DATA_LOCAL = "local"  # the recipe trains on a folder or CSV the volunteer chooses


@dataclass(frozen=True)
class ProjectPreview:
    """What the Join dialog shows before the volunteer consents: the coordinator's own
    description of the project (``GET /api/v1/projects/NAME``) and where it lives."""

    target: JoinTarget
    name: str
    description: str
    recipe: str
    data_mode: str  # DATA_BUILTIN or DATA_LOCAL
    key_fingerprint: str
    public_key: str
    invite_required: bool = False
    strategy: str = ""
    current_version: int | None = None
    data_columns: dict[str, Any] | None = None  # {"label": str, "features": [str]} (local)
    hparams: dict[str, Any] = field(default_factory=dict)
    privacy: dict[str, Any] | None = None  # the protocol's PrivacyTerms, pinned at join

    @property
    def page_url(self) -> str:
        return self.target.page_url

    @classmethod
    def from_project_view(cls, target: JoinTarget, view: dict[str, Any]) -> ProjectPreview:
        """Build from the protocol's ``Project`` object (docs/protocol.md)."""
        strategy = view.get("strategy") or {}
        return cls(
            target=target,
            name=str(view.get("name", target.project)),
            description=str(view.get("description") or ""),
            recipe=str(view.get("recipe", "")),
            data_mode=str(view.get("data_mode", DATA_BUILTIN)),
            key_fingerprint=str(view.get("key_fingerprint", "")),
            public_key=str(view.get("public_key", "")),
            invite_required=bool(view.get("invite_required", False)),
            strategy=str(strategy.get("name", "")) if isinstance(strategy, dict) else str(strategy),
            current_version=view.get("current_version"),
            data_columns=view.get("data_columns"),
            hparams=dict(view.get("hparams") or {}),
            privacy=dict(view["privacy"]) if isinstance(view.get("privacy"), dict) else None,
        )


@dataclass(frozen=True)
class ExistingIdentity:
    """This machine already joined the previewed project: who it is there. Joining again
    keeps this identity (the same key, so the same client and its credit)."""

    client_id: str
    # As the coordinator lists them now; None when it could not be asked (the join still
    # keeps the identity, the dialog just cannot say the name).
    display_name: str | None = None
    team: str | None = None


@dataclass(frozen=True)
class KeyChangeNotice:
    """A project's coordinator signs with another key than the one pinned at join (trust on
    first use): its tasks are refused until the volunteer accepts ``new_fingerprint``."""

    project: str
    pinned_fingerprint: str
    new_fingerprint: str
    server_url: str = ""


@dataclass(frozen=True)
class JoinRequest:
    """The volunteer's answers in the Join dialog; ``consented`` must be True to join."""

    preview: ProjectPreview
    display_name: str
    team: str | None = None
    data_path: Path | None = None  # required when preview.data_mode == DATA_LOCAL
    consented: bool = False


@dataclass(frozen=True)
class JoinedProject:
    """One row of the Dashboard's project table."""

    name: str
    server_url: str
    page_url: str
    state: str = "waiting"
    credit: float = 0.0
    credit_unit: str = ""
    rank: int | None = None
    tasks: int = 0
    last_update: float | None = None  # epoch seconds of the last accepted update
    closed: bool = False  # its organiser closed it: it needs no work (asked again rarely)
    finished: bool = False  # it finished training (closed too): its model is final
    key_change: KeyChangeNotice | None = None  # stopped until the volunteer decides
    privacy: str | None = None  # its privacy terms, and the epsilon spent on this machine's data
    energy_joules: float = 0.0  # training's energy on this computer, its accepted tasks
    energy_measured_joules: float = 0.0  # of which measured (RAPL/NVML), not estimated
    share: int = 100  # its resource share: a relative weight (``app.contributor.shares``)
    mode: str = "active"  # active, suspended, no_new_tasks, finish_then_stop


@dataclass(frozen=True)
class DashboardView:
    """The engine's state at one moment, for a window that opens late (the tray's view of
    the engine's own ``app.contributor.snapshot.EngineSnapshot``; ``adapter.py`` maps it)."""

    state: EngineState
    project: str | None = None
    reasons: tuple[str, ...] = ()
    paused: bool = False
    snoozed_until: float | None = None  # epoch seconds
    projects: tuple[JoinedProject, ...] = ()


@runtime_checkable
class EnginePort(Protocol):
    """The engine as the tray uses it. Commands are thread-safe and may block."""

    def subscribe(self, callback: Callable[[Event], None]) -> Callable[[], None]:
        """Deliver every event to ``callback`` (on an engine thread); returns unsubscribe."""
        ...

    def snapshot(self) -> DashboardView: ...

    def settings(self) -> Settings: ...

    def start(self) -> None:
        """Start the engine's threads and return (idempotent)."""
        ...

    def stop(self) -> None:
        """Stop and release the current lease, checkpointing first (idempotent, thread-safe)."""
        ...

    def pause(self) -> None: ...

    def resume(self) -> None:
        """Clear a pause and a snooze."""
        ...

    def snooze(self, until: float) -> None:
        """Do not compute before ``until`` (epoch seconds)."""
        ...

    def retry_now(self) -> None:
        """The server could not be reached (``EngineState.OFFLINE``): try again now rather
        than at the end of the backoff. Harmless in any other state."""
        ...

    def apply_settings(self, settings: Settings) -> None:
        """Use these settings from now on (the caller has already saved them)."""
        ...

    def preview(self, target: JoinTarget) -> ProjectPreview:
        """Fetch the project's description from its coordinator (network)."""
        ...

    def validate_data(self, preview: ProjectPreview, path: Path) -> str:
        """Check a local-data folder/CSV without training; return a one-line summary
        ("412 rows, 8 features") or raise ValueError saying what is wrong and where."""
        ...

    def credential_storage(self) -> CredentialStorage:
        """Where a join would keep its key: the keychain, the chosen file, or nowhere yet
        (no keychain: the Join dialog offers a private file). May block (the keyring)."""
        ...

    def use_file_store(self) -> CredentialStorage:
        """Keep keys in the private file ``credential_storage()`` offered, remembered for
        later starts; raises CredentialsError saying why not."""
        ...

    def existing_identity(self, preview: ProjectPreview) -> ExistingIdentity | None:
        """This machine's identity in the previewed project if it joined it before, else
        None (keychain, then the coordinator for the current name: may block)."""
        ...

    def join(self, request: JoinRequest) -> JoinedProject:
        """Register with the coordinator, pin its key, store credentials. Idempotent: a
        project this machine already joined keeps its key, client id and credit (only the
        name and team change); otherwise a new key pair is made."""
        ...

    def leave(self, project: str) -> None:
        """Stop working for ``project`` and remove its keys from the keychain."""
        ...

    def set_project_share(self, project: str, share: int) -> None:
        """Give ``project`` this resource share (1–10000; 200 gets twice the compute of
        100). Persisted; raises ValueError for a share out of range."""
        ...

    def set_project_mode(self, project: str, mode: str) -> None:
        """Suspend (``"suspended"``), resume (``"active"``), stop taking new tasks
        (``"no_new_tasks"``) or finish the task in hand and then suspend
        (``"finish_then_stop"``) ``project``. Persisted; the engine announces the change
        (``ProjectScheduleChanged``)."""
        ...

    def accept_new_key(self, project: str, fingerprint: str) -> None:
        """Pin the key ``project``'s coordinator signs with now (``KeyChangeNotice``),
        keeping this machine's identity and credit. Only on the volunteer's explicit
        say-so; raises (and changes nothing) when ``fingerprint`` is not the new one."""
        ...
