"""Every command the control channel takes, in one table.

``barnraise pause|resume|snooze|retry|status|trust|leave|project`` (``app/cli.py``) and the tray's
single-instance hand-over (``show``, ``open_join``) send these to the running engine over
``control.py``, which only carries them; ``COMMANDS`` says what each one does there.
``handler(controller)`` is the ``ControlServer`` handler of a headless engine;
``handler(controller, ui=...)`` that of the tray, which also takes the GUI commands.

A command's reply is JSON: most answer with the engine's snapshot (``EngineSnapshot``'s
JSON), so the CLI can print the state the command left the engine in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from app.contributor.client import ClientError
from app.contributor.control import ControlError, Handler

if TYPE_CHECKING:
    from app.contributor.controller import Controller

__all__ = ["COMMANDS", "Command", "CommandContext", "UiHandler", "dispatch", "handler"]

# The tray's GUI: ``ui(command, args)`` on the control channel's thread (it re-emits them
# as Qt signals). None until the tray's windows exist.
UiHandler = Callable[[str, dict[str, object]], None]


@dataclass(frozen=True)
class CommandContext:
    """Who a command runs against: the engine, and the tray's GUI where there is one
    (``ui`` returns the GUI's handler, None while it is not ready; no ``ui``: headless)."""

    engine: Controller
    ui: Callable[[], UiHandler | None] | None = None


@dataclass(frozen=True)
class Command:
    run: Callable[[CommandContext, Mapping[str, Any]], Any]
    summary: str
    args: str = ""  # the arguments it reads, as `name: type` (for the reader)
    gui: bool = False  # only where there is a GUI (the tray)


def _ping(context: CommandContext, args: Mapping[str, Any]) -> Any:
    return {"pid": os.getpid()}


def _status(context: CommandContext, args: Mapping[str, Any]) -> Any:
    return context.engine.snapshot()


def _pause(context: CommandContext, args: Mapping[str, Any]) -> Any:
    context.engine.pause()
    return context.engine.snapshot()


def _resume(context: CommandContext, args: Mapping[str, Any]) -> Any:
    context.engine.resume()
    return context.engine.snapshot()


def _snooze(context: CommandContext, args: Mapping[str, Any]) -> Any:
    end = context.engine.snooze(float(args.get("seconds", 3600)))
    return {"until": end.isoformat()}


def _retry(context: CommandContext, args: Mapping[str, Any]) -> Any:
    context.engine.retry_now()
    return context.engine.snapshot()


def _trust(context: CommandContext, args: Mapping[str, Any]) -> Any:
    try:
        context.engine.accept_new_key(str(args.get("key", "")), str(args.get("fingerprint", "")))
    except ClientError as exc:
        raise ControlError(str(exc)) from None
    return context.engine.snapshot()


def _leave(context: CommandContext, args: Mapping[str, Any]) -> Any:
    context.engine.leave(str(args["key"]))
    return {"left": args["key"]}


def _project_share(context: CommandContext, args: Mapping[str, Any]) -> Any:
    try:
        context.engine.set_project_share(str(args.get("key", "")), args.get("share"))
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    return context.engine.snapshot()


def _project_mode(context: CommandContext, args: Mapping[str, Any]) -> Any:
    try:
        context.engine.set_project_mode(str(args.get("key", "")), str(args.get("mode", "")))
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    return context.engine.snapshot()


def _stop(context: CommandContext, args: Mapping[str, Any]) -> Any:
    context.engine.stop()
    return {"stopping": True}


def _to_gui(command: str) -> Callable[[CommandContext, Mapping[str, Any]], Any]:
    def run(context: CommandContext, args: Mapping[str, Any]) -> Any:
        ui = context.ui() if context.ui is not None else None
        if ui is None:
            raise ControlError("the tray is not ready yet; try again in a moment")
        ui(command, dict(args))
        return {"shown": True}

    return run


COMMANDS: Mapping[str, Command] = {
    "ping": Command(_ping, "is an engine running here? (its pid)"),
    "status": Command(_status, "the engine's snapshot"),
    "pause": Command(_pause, "pause computing until resumed"),
    "resume": Command(_resume, "undo pause and snooze"),
    "snooze": Command(_snooze, "pause for a while; answers when it ends", "seconds: float"),
    "retry": Command(_retry, "ask every waiting project for work now"),
    "trust": Command(
        _trust, "pin a project's new key (after checking it)", "key: str, fingerprint: str"
    ),
    "leave": Command(_leave, "forget a project, its keys and its task", "key: str"),
    "project_share": Command(
        _project_share, "set a project's resource share (a weight)", "key: str, share: int"
    ),
    "project_mode": Command(
        _project_mode,
        "suspend or resume a project, or let it finish its task (then stop)",
        "key: str, mode: active|suspended|no_new_tasks|finish_then_stop",
    ),
    "stop": Command(_stop, "stop the engine (checkpoint, give the task back)"),
    "show": Command(_to_gui("show"), "bring the tray's window up", gui=True),
    "open_join": Command(
        _to_gui("open_join"), "open the Join dialog for an invite link", "url: str", gui=True
    ),
}


def dispatch(context: CommandContext, command: str, args: Mapping[str, Any]) -> Any:
    """Run ``command``; ControlError for a command this engine does not take."""
    entry = COMMANDS.get(command)
    if entry is None or (entry.gui and context.ui is None):
        raise ControlError(f"unknown command {command!r}")
    return entry.run(context, args)


def handler(engine: Controller, *, ui: Callable[[], UiHandler | None] | None = None) -> Handler:
    """The control channel's handler for ``engine`` (and the tray's GUI, given ``ui``)."""
    context = CommandContext(engine, ui)

    def handle(command: str, args: Mapping[str, Any]) -> Any:
        return dispatch(context, command, args)

    return handle
