"""The engine's picture of itself at one moment: what `barnraise status` prints, what the
control channel's ``status`` (and ``pause``, ``resume``, ...) answer, what the tray loads.

Frozen dataclasses; ``to_json()`` is the control channel's JSON (the shape it always had)
and ``from_json()`` reads it back, tolerating missing fields (an older or newer engine).
Numbers are kept as they came (no rounding, no int→float), so ``from_json(x).to_json()``
gives ``x`` back. No engine imports here: the CLI reads a snapshot without loading the
engine.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.contributor.events import EngineState
from app.contributor.limits import Limits

__all__ = [
    "NOT_RUNNING",
    "DecisionSnapshot",
    "EngineSnapshot",
    "KeyChangeSnapshot",
    "ProjectSnapshot",
    "TaskSnapshot",
    "TrainerSnapshot",
]

NOT_RUNNING = "not running"  # the state `barnraise status` shows when no engine answers

Json = dict[str, Any]


@dataclass(frozen=True)
class TaskSnapshot:
    """The task being trained and how far it got."""

    key: str  # the project's key (server and name)
    project: str
    task_id: str
    useful_until: Any = None  # epoch seconds, as the task's manifest gave it
    issued_at: Any = None
    started_at: float = 0.0
    step: int = 0
    total_steps: int = 0
    paused_s: float = 0.0
    paused_at: float | None = None
    loss: float | None = None  # None until the first progress report
    compute_s: float | None = None

    def to_json(self) -> Json:
        data: Json = {
            "key": self.key,
            "project": self.project,
            "task_id": self.task_id,
            "step": self.step,
            "total_steps": self.total_steps,
            "useful_until": self.useful_until,
            "issued_at": self.issued_at,
            "started_at": self.started_at,
            "paused_s": self.paused_s,
            "paused_at": self.paused_at,
        }
        # Reported by the trainer: absent until its first progress message.
        if self.loss is not None:
            data["loss"] = self.loss
        if self.compute_s is not None:
            data["compute_s"] = self.compute_s
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TaskSnapshot:
        return cls(
            key=str(data.get("key", "")),
            project=str(data.get("project", "")),
            task_id=str(data.get("task_id", "")),
            useful_until=data.get("useful_until"),
            issued_at=data.get("issued_at"),
            started_at=data.get("started_at", 0.0),
            step=data.get("step", 0),
            total_steps=data.get("total_steps", 0),
            paused_s=data.get("paused_s", 0.0),
            paused_at=data.get("paused_at"),
            loss=data.get("loss"),
            compute_s=data.get("compute_s"),
        )


@dataclass(frozen=True)
class KeyChangeSnapshot:
    """A project's coordinator signs with another key than the pinned one."""

    project: str
    pinned_fingerprint: str
    new_fingerprint: str
    new_public_key_b64: str = ""

    def to_json(self) -> Json:
        return {
            "project": self.project,
            "pinned_fingerprint": self.pinned_fingerprint,
            "new_fingerprint": self.new_fingerprint,
            "new_public_key_b64": self.new_public_key_b64,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> KeyChangeSnapshot:
        return cls(
            project=str(data.get("project", "")),
            pinned_fingerprint=str(data.get("pinned_fingerprint", "")),
            new_fingerprint=str(data.get("new_fingerprint", "")),
            new_public_key_b64=str(data.get("new_public_key_b64", "")),
        )


@dataclass(frozen=True)
class ProjectSnapshot:
    """One joined project: the ledger's totals, and what the engine knows of it."""

    key: str
    project: str
    server_url: str
    tasks: int = 0
    examples: int = 0
    compute_seconds: float = 0.0
    credit: float = 0.0
    credit_unit: str = ""
    rank: int | None = None
    # What the engine knows (a project it has not loaded yet has the defaults).
    last_update: float | None = None
    disabled: str | None = None  # why the engine stopped working for it
    closed: bool = False  # its organiser closed it
    finished: bool = False  # it finished training: its model is final (closed too)
    offline: bool = False  # the last try could not reach its coordinator
    rejected: int = 0  # tasks that ended without an accepted update
    key_change: KeyChangeSnapshot | None = None
    # Its privacy terms in words and, for dp-sgd, the epsilon spent on this machine's data.
    privacy: str | None = None
    # The volunteer's say (``app.contributor.shares``): its resource share and its mode.
    share: int = 100
    mode: str = "active"  # active, suspended, no_new_tasks, finish_then_stop
    # Energy given (issue 16): the ledger's sum over accepted tasks, joules, and the part
    # measured (RAPL/NVML) rather than estimated (app.contributor.energy).
    energy_joules: float = 0.0
    energy_measured_joules: float = 0.0

    def ledger_json(self) -> Json:
        """The fields the ledger and the project's files tell (``barnraise status`` with
        no engine)."""
        return {
            "key": self.key,
            "project": self.project,
            "server_url": self.server_url,
            "tasks": self.tasks,
            "examples": self.examples,
            "compute_seconds": self.compute_seconds,
            "credit": self.credit,
            "credit_unit": self.credit_unit,
            "rank": self.rank,
            "privacy": self.privacy,
            "share": self.share,
            "mode": self.mode,
        }

    def to_json(self) -> Json:
        return {
            **self.ledger_json(),
            "last_update": self.last_update,
            "disabled": self.disabled,
            "closed": self.closed,
            "finished": self.finished,
            "offline": self.offline,
            "rejected": self.rejected,
            "key_change": self.key_change.to_json() if self.key_change else None,
            "energy_joules": self.energy_joules,
            "energy_measured_joules": self.energy_measured_joules,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProjectSnapshot:
        change = data.get("key_change")
        return cls(
            key=str(data.get("key", "")),
            project=str(data["project"]),
            server_url=str(data.get("server_url", "")),
            tasks=data.get("tasks", 0),
            examples=data.get("examples", 0),
            compute_seconds=data.get("compute_seconds", 0.0),
            credit=data.get("credit", 0.0),
            credit_unit=str(data.get("credit_unit") or ""),
            rank=data.get("rank"),
            last_update=data.get("last_update"),
            disabled=data.get("disabled"),
            closed=bool(data.get("closed")),
            finished=bool(data.get("finished")),
            offline=bool(data.get("offline")),
            rejected=data.get("rejected", 0),
            key_change=KeyChangeSnapshot.from_json(change) if isinstance(change, dict) else None,
            privacy=data.get("privacy"),
            share=data.get("share", 100),
            mode=str(data.get("mode") or "active"),
            energy_joules=float(data.get("energy_joules") or 0.0),
            energy_measured_joules=float(data.get("energy_measured_joules") or 0.0),
        )


@dataclass(frozen=True)
class DecisionSnapshot:
    """The policy's last decision (``policy.Decision``) in words."""

    action: str  # run, throttle, suspend
    reasons: tuple[str, ...] = ()
    summary: str = ""

    def to_json(self) -> Json:
        return {"action": self.action, "reasons": list(self.reasons), "summary": self.summary}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DecisionSnapshot:
        return cls(
            action=str(data.get("action", "")),
            reasons=tuple(str(r) for r in data.get("reasons") or ()),
            summary=str(data.get("summary", "")),
        )


@dataclass(frozen=True)
class TrainerSnapshot:
    """The training child process."""

    pid: int | None = None
    device: str = "cpu"
    starts: int = 0

    def to_json(self) -> Json:
        return {"pid": self.pid, "device": self.device, "starts": self.starts}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TrainerSnapshot:
        return cls(
            pid=data.get("pid"), device=str(data.get("device", "cpu")), starts=data.get("starts", 0)
        )


@dataclass(frozen=True)
class EngineSnapshot:
    """The whole engine. ``running`` is False for the picture `barnraise status` draws
    from the ledger when no engine answers (its JSON says ``"state": "not running"`` and
    lists the projects' ledger fields only)."""

    state: EngineState
    project: str | None = None
    task: TaskSnapshot | None = None
    paused: bool = False
    snoozed_until: datetime | None = None
    decision: DecisionSnapshot | None = None
    limits: Limits | None = None
    trainer: TrainerSnapshot | None = None
    projects: tuple[ProjectSnapshot, ...] = ()
    last_error: str | None = None
    failure: str | None = None  # why the engine stopped on its own, if it did
    running: bool = True

    @classmethod
    def not_running(cls, projects: tuple[ProjectSnapshot, ...]) -> EngineSnapshot:
        return cls(state=EngineState.STOPPED, projects=projects, running=False)

    @property
    def state_text(self) -> str:
        return self.state.value if self.running else NOT_RUNNING

    def to_json(self) -> Json:
        if not self.running:
            return {"state": NOT_RUNNING, "projects": [p.ledger_json() for p in self.projects]}
        return {
            "state": self.state.value,
            "project": self.project,
            "task": self.task.to_json() if self.task else None,
            "paused": self.paused,
            "snoozed_until": self.snoozed_until.isoformat() if self.snoozed_until else None,
            "decision": self.decision.to_json() if self.decision else None,
            "limits": self.limits.to_json() if self.limits else None,
            "trainer": self.trainer.to_json() if self.trainer else None,
            "projects": [p.to_json() for p in self.projects],
            "last_error": self.last_error,
            "failure": self.failure,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineSnapshot:
        projects = tuple(ProjectSnapshot.from_json(p) for p in data.get("projects") or ())
        if data.get("state") == NOT_RUNNING:
            return cls.not_running(projects)
        task, decision = data.get("task"), data.get("decision")
        limits, trainer = data.get("limits"), data.get("trainer")
        snoozed = data.get("snoozed_until")
        return cls(
            state=EngineState(data["state"]),
            project=data.get("project"),
            task=TaskSnapshot.from_json(task) if isinstance(task, dict) else None,
            paused=bool(data.get("paused")),
            snoozed_until=_parse_time(snoozed) if isinstance(snoozed, str) else None,
            decision=DecisionSnapshot.from_json(decision) if isinstance(decision, dict) else None,
            limits=Limits.from_json(limits) if isinstance(limits, dict) else None,
            trainer=TrainerSnapshot.from_json(trainer) if isinstance(trainer, dict) else None,
            projects=projects,
            last_error=data.get("last_error"),
            failure=data.get("failure"),
        )


def _parse_time(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None
