"""`barnraise --headless`: the engine without the tray, until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType
from typing import Any, TextIO

from app.cli_common import EXIT_FAILED, _paths, _store, log

__all__ = ["run_headless"]


class _Printer:
    """Shows engine events: one updating line in a terminal, log lines otherwise."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self._lock = threading.Lock()
        self._line = ""

    def __call__(self, event: Any) -> None:
        from app.contributor import events as ev

        with self._lock:
            if isinstance(event, ev.Progress):
                if self.tty:
                    width = 24
                    filled = int(width * event.fraction)
                    bar = "█" * filled + "·" * (width - filled)
                    self._show(
                        f"[{event.project}] {bar} {100 * event.fraction:3.0f}% step {event.step}/{event.total_steps} "
                        f"loss {event.loss:.3f} {event.examples_per_second:.0f} ex/s"
                    )
                return
            if isinstance(event, ev.StateChanged):
                text = f"{event.state.value}" + (f" [{event.project}]" if event.project else "")
                if event.reasons:
                    text += ": " + ", ".join(event.reasons)
            elif isinstance(event, ev.TaskFinished):
                verdict = "accepted" if event.accepted else "rejected"
                text = (
                    f"[{event.project}] task {event.task_id} {verdict}: {event.num_examples} examples, "
                    f"{event.compute_seconds:.2f}s, credit {event.credit:.2f}"
                )
            elif isinstance(event, ev.CreditUpdated):
                text = f"[{event.project}] total credit {event.credit:.2f} {event.credit_unit} over {event.tasks} tasks"
            elif isinstance(event, ev.PolicyChanged):
                text = f"policy: {event.action}" + (
                    " (" + ", ".join(event.reasons) + ")" if event.reasons else ""
                )
            elif isinstance(event, ev.Error):
                text = f"error: {event.message}"
            elif isinstance(event, ev.ProjectScheduleChanged):
                from app.cli_project import describe

                text = f"[{event.project}] {describe(event.share, event.mode)}"
            else:  # pragma: no cover - future events
                text = str(event)
            self._log(text)

    def _show(self, text: str) -> None:
        pad = max(0, len(self._line) - len(text))
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()
        self._line = text

    def _log(self, text: str) -> None:
        if self.tty:
            if self._line:
                self.stream.write("\r" + " " * len(self._line) + "\r")
                self._line = ""
            self.stream.write(text + "\n")
            self.stream.flush()
        else:
            log.info("%s", text)


def run_headless(args: argparse.Namespace, out: TextIO) -> int:
    from app.contributor import commands
    from app.contributor.control import ControlError, ControlServer
    from app.contributor.controller import Controller, EngineOptions
    from app.contributor.settings import load_settings

    paths = _paths()
    settings = load_settings()
    store = _store(args)
    options = EngineOptions(
        insecure=args.insecure,
        lease_wait_s=args.lease_wait,
        checkpoint_interval_s=args.checkpoint_interval,
    )
    controller = Controller(credentials=store, paths=paths, settings=settings, options=options)

    control = ControlServer(paths.runtime_dir, commands.handler(controller))
    try:
        control.start()
    except ControlError as exc:
        print(f"barnraise: {exc}", file=sys.stderr)
        return EXIT_FAILED
    unsubscribe = controller.subscribe(_Printer(out))

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        log.info(
            "received %s; stopping (checkpoint, give the task back)", signal.Signals(signum).name
        )
        controller.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not store.list_projects():
            log.info(
                "no project joined yet: run `barnraise join URL` (this keeps running and picks it up)"
            )
        controller.start()
        while not controller.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        unsubscribe()
        control.close()
    if controller.failure is not None:
        # Stopped by an error, not asked to: non-zero, so a service manager restarts us.
        print(f"barnraise: the engine stopped: {controller.failure}", file=sys.stderr)
        return EXIT_FAILED
    return 0
