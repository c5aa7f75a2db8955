"""Entry point of the frozen Barnraise bundle (PyInstaller runs this file as ``__main__``).

A frozen program has no Python interpreter to start its children with: multiprocessing's
``spawn`` re-runs *this* executable with ``--multiprocessing-fork`` arguments. The training
child must therefore be recognised and dispatched before anything else happens here: before
argument parsing (those arguments are not ours), before Qt, before logging set-up. That is
what ``freeze_support()`` does, and why it is the first call. In a normal (non-frozen) run it
does nothing, so this file is also safe to run from the source tree.
"""

from __future__ import annotations

import multiprocessing
import sys


def _run() -> int:
    multiprocessing.freeze_support()  # in a spawned child this runs the child and exits
    from app.cli import main

    return main()


if __name__ == "__main__":
    sys.exit(_run())
