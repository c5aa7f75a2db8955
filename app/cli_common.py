"""What every `barnraise` command shares: exit codes, the log, the folders and the
credential store chosen by the common options."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path
from typing import Any

__all__ = ["CREDENTIALS_ENV", "EXIT_FAILED", "EXIT_USAGE"]

CREDENTIALS_ENV = "BARNRAISE_CREDENTIALS"
EXIT_USAGE = 2
EXIT_FAILED = 1

log = logging.getLogger("barnraise")


def _apply_dirs(args: argparse.Namespace) -> None:
    # Environment variables so every module (settings, credentials index) sees the same folders.
    from app.contributor.paths import DATA_DIR_ENV
    from app.contributor.settings import CONFIG_DIR_ENV

    if args.data_dir is not None:
        os.environ[DATA_DIR_ENV] = str(args.data_dir)
    if args.config_dir is not None:
        os.environ[CONFIG_DIR_ENV] = str(args.config_dir)
    if args.credentials is None and os.environ.get(CREDENTIALS_ENV):
        args.credentials = Path(os.environ[CREDENTIALS_ENV])


def _paths() -> Any:
    from app.contributor.paths import EnginePaths

    return EnginePaths.default()


def _store(args: argparse.Namespace) -> Any:
    from app.contributor.credential_choice import open_chosen_store

    # --credentials FILE, else the file chosen in the tray (remembered), else the keychain.
    return open_chosen_store(args.credentials)
