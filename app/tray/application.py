"""``main(argv)``: start the tray, or hand the request to the tray already running.

    barnraise                      start the tray (or bring the running one's window forward)
    barnraise --join URL           open the Join dialog with URL (in the running tray if any)
    python -m app.tray [options]   the same, without the CLI

Options: ``--show`` opens the window at start; ``--minimized`` does not (autostart);
``--credentials FILE`` keeps keys in a private file instead of the OS keychain;
``--insecure`` allows http:// to a non-loopback coordinator; ``--ready-file PATH`` writes a
JSON line when the icon is on screen (the e2e test and bench/footprint.py wait for it);
``--stats-file PATH`` rewrites a JSON object there every second with what the window shows
(state, chart points and paints; the soak test and bench/footprint.py read it);
``--self-test`` prints whether a system tray is available, shows the icon, and quits after
``--quit-after`` seconds.

When the engine cannot be made (unreadable settings or credentials, a damaged ledger) the
tray never dies with a traceback: it prints the message, shows it in a window until the
volunteer closes it (the message names the file and says what to do), writes it to the
ready file as ``{"error": ...}``, and exits with ``EXIT_CANNOT_START``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["EXIT_CANNOT_START", "main"]

log = logging.getLogger("barnraise.tray")

# Python runs signal handlers only between bytecodes; Qt's event loop is C++, so a timer
# wakes the interpreter this often to notice Ctrl-C. Long enough to cost no CPU at idle.
SIGNAL_POLL_MS = 250
CREDENTIALS_ENV = "BARNRAISE_CREDENTIALS"  # the same variable app/cli.py reads
# --ready-file through the environment, for launches through `barnraise` (whose parser
# does not know the tray's test options): the e2e test and bench/footprint.py use it.
READY_FILE_ENV = "BARNRAISE_TRAY_READY_FILE"
STATS_FILE_ENV = "BARNRAISE_TRAY_STATS_FILE"  # --stats-file through the environment
STATS_INTERVAL_MS = 1000  # often enough for a soak test to see charts repaint, cheap at idle
# Exit status when the engine cannot be made: non-zero, so a launcher or service manager
# (and a test) sees that the tray did not start.
EXIT_CANNOT_START = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="barnraise", description="The Barnraise tray app.")
    parser.add_argument(
        "--join", metavar="URL", help="open the Join dialog with this page URL or invite"
    )
    parser.add_argument("--show", action="store_true", help="open the main window at start")
    parser.add_argument("--minimized", action="store_true", help="start in the tray only")
    parser.add_argument(
        "--credentials", type=Path, metavar="FILE", help="keep credentials in this private file"
    )
    parser.add_argument(
        "--insecure", action="store_true", help="allow http:// to a non-loopback coordinator"
    )
    parser.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="write a JSON line here when the icon is shown",
    )
    parser.add_argument(
        "--stats-file",
        type=Path,
        metavar="PATH",
        help="rewrite a JSON object here every second with what the window shows",
    )
    parser.add_argument(
        "--self-test",
        action="store_true",
        help="report tray availability, show the icon, then quit",
    )
    parser.add_argument(
        "--quit-after", type=float, metavar="SECONDS", help="quit after this many seconds"
    )
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the tray; returns the process exit status. The one entry point for app/cli.py."""
    started = time.monotonic()
    if argv is None:
        # Called by app/cli.py with the process's own arguments: take the options the tray
        # shares with the CLI (--credentials, --insecure, -v) and leave the CLI's to it
        # (--data-dir/--config-dir reach us as BARNRAISE_DATA_DIR/BARNRAISE_CONFIG_DIR).
        args, _ = _parser().parse_known_args(sys.argv[1:])
    else:
        args = _parser().parse_args(argv)
    if args.ready_file is None and os.environ.get(READY_FILE_ENV):
        args.ready_file = Path(os.environ[READY_FILE_ENV])
    if args.stats_file is None and os.environ.get(STATS_FILE_ENV):
        args.stats_file = Path(os.environ[STATS_FILE_ENV])
    if args.credentials is None and os.environ.get(CREDENTIALS_ENV):
        args.credentials = Path(os.environ[CREDENTIALS_ENV])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    # Qt is imported here, not at module level, so `barnraise --help` and the headless CLI
    # never load it.
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication, QSystemTrayIcon

    from app.contributor.credentials import CredentialsError
    from app.contributor.ledger import LedgerError
    from app.contributor.settings import SettingsError, config_dir, settings_path
    from app.tray.adapter import make_engine
    from app.tray.icons import app_icon
    from app.tray.instance import SingleInstance
    from app.tray.tray import TrayApp

    app = QApplication.instance() or QApplication([sys.argv[0] if sys.argv else "barnraise"])
    assert isinstance(app, QApplication)
    app.setApplicationName("Barnraise")
    app.setApplicationDisplayName("Barnraise")
    app.setOrganizationDomain("barnraise.org")
    app.setDesktopFileName("org.barnraise.Barnraise")
    app.setWindowIcon(app_icon())
    app.setQuitOnLastWindowClosed(False)

    instance = SingleInstance(config_dir())
    if not instance.acquire():
        request = {"command": "join", "url": args.join} if args.join else {"command": "show"}
        if instance.send(request):
            print("Barnraise is already running; its window was brought forward.")
            return 0
        print(
            "Another Barnraise is starting or not answering; wait a moment and try again.",
            file=sys.stderr,
        )
        return 1

    # Ctrl-C and SIGTERM quit from here on, also while a "cannot start" window is open.
    signal.signal(signal.SIGINT, lambda *_: app.quit())
    if hasattr(signal, "SIGTERM"):
        signal.signal(signal.SIGTERM, lambda *_: app.quit())
    wake = QTimer()
    wake.start(SIGNAL_POLL_MS)
    wake.timeout.connect(lambda: None)

    try:
        engine = make_engine(
            settings_path=settings_path(), credentials_file=args.credentials, insecure=args.insecure
        )
    except (SettingsError, CredentialsError, LedgerError) as exc:
        # Never fail invisibly: the volunteer started an app and must see why it stopped.
        instance.release()
        return _cannot_start(app, exc, args, started)

    tray_available = QSystemTrayIcon.isSystemTrayAvailable()
    log.info("system tray available: %s", tray_available)
    if args.self_test:
        print(f"system tray available: {tray_available}", flush=True)

    tray = TrayApp(engine, settings_path=settings_path(), tray_available=tray_available)
    instance.message.connect(tray.handle_request)
    tray.menu.aboutToShow.connect(lambda: log.info("tray menu opened"))

    def write_ready() -> None:
        if args.ready_file is None:
            return
        geometry = tray.tray.geometry()
        line = {
            "pid": os.getpid(),
            "tray_available": tray_available,
            "icon_visible": tray.tray.isVisible(),
            "window_visible": tray.dashboard.isVisible(),
            "seconds_to_icon": round(time.monotonic() - started, 3),
            "icon_geometry": [geometry.x(), geometry.y(), geometry.width(), geometry.height()],
            "menu": tray.menu_texts(),
        }
        args.ready_file.write_text(json.dumps(line) + "\n", encoding="utf-8")

    # Written after the event loop has run once, so the icon has really been mapped.
    tray.icon_shown.connect(lambda: QTimer.singleShot(0, write_ready))

    def write_stats(path: Path) -> None:
        line = {"pid": os.getpid(), "at": time.time(), **tray.stats()}
        partial = path.with_name(path.name + ".partial")
        try:
            partial.write_text(json.dumps(line) + "\n", encoding="utf-8")
            os.replace(partial, path)  # a reader never sees half a file
        except OSError as exc:  # a diagnostics file must never stop the tray
            log.warning("could not write %s: %s", path, exc)

    stats_timer = QTimer()
    if args.stats_file is not None:
        stats_file = args.stats_file
        stats_timer.timeout.connect(lambda: write_stats(stats_file))
        stats_timer.start(STATS_INTERVAL_MS)

    def clean_up() -> None:
        tray.shutdown()
        instance.release()

    app.aboutToQuit.connect(clean_up)

    tray.start(show_window=(args.show or bool(args.join)) and not args.minimized)
    if args.join:
        tray.open_join(args.join)
    if args.self_test or args.quit_after:
        QTimer.singleShot(int((args.quit_after or 3.0) * 1000), app.quit)
    try:
        return int(app.exec())
    finally:
        clean_up()


def _cannot_start(app: Any, exc: Exception, args: argparse.Namespace, started: float) -> int:
    """Say why the tray cannot start, in a window the volunteer closes, and return
    EXIT_CANNOT_START. The message already names the file and what to do about it."""
    from PySide6.QtCore import Qt, QTimer
    from PySide6.QtWidgets import QMessageBox

    message = str(exc)
    text = message[:1].upper() + message[1:]
    print(f"barnraise: {message}", file=sys.stderr, flush=True)
    if args.self_test:
        _write_ready(args.ready_file, {"error": message, "dialog": None})
        return EXIT_CANNOT_START
    box = QMessageBox(QMessageBox.Icon.Critical, "Barnraise cannot start", text)
    box.setObjectName("cannotStart")
    box.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)  # copy the path
    box.setStandardButtons(QMessageBox.StandardButton.Close)
    box.finished.connect(lambda _: app.quit())

    def shown() -> None:
        _write_ready(
            args.ready_file,
            {
                "error": message,
                "seconds_to_error": round(time.monotonic() - started, 3),
                "dialog": {
                    "title": box.windowTitle(),
                    "text": box.text(),
                    "visible": box.isVisible(),
                },
            },
        )

    box.show()
    QTimer.singleShot(0, shown)  # after the event loop has run once: the box is mapped
    if args.quit_after:
        QTimer.singleShot(int(args.quit_after * 1000), app.quit)
    app.exec()
    return EXIT_CANNOT_START


def _write_ready(path: Path | None, line: dict[str, Any]) -> None:
    if path is None:
        return
    partial = path.with_name(path.name + ".partial")
    try:
        partial.write_text(json.dumps({"pid": os.getpid(), **line}) + "\n", encoding="utf-8")
        os.replace(partial, path)  # a reader never sees half a line
    except OSError as exc:  # a diagnostics file must never hide the real problem
        log.warning("could not write %s: %s", path, exc)
