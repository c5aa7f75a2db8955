"""The Barnraise tray app: a thin PySide6 shell over the contributor engine.

``main(argv) -> int`` is the entry point (``barnraise`` with no arguments calls it). This
package ``__init__`` imports nothing from Qt, so ``import app.tray`` is free for the CLI.
Qt is imported only under ``app/tray/``; torch is never imported in the tray process.
"""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """Start the tray (or reach the running one); return the exit status."""
    from app.tray.application import main as run

    return run(argv)
