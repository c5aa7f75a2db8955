"""The CLI's one way to open a coordinator's data: the data folder, and PostgreSQL when
``--database-url`` (or BARNRAISE_DATABASE_URL) names one (issue 15)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from backend.store.factory import DB_FILE

if TYPE_CHECKING:
    from backend.coordinator import Coordinator

DATABASE_URL_ENV = "BARNRAISE_DATABASE_URL"


def add_database_url(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV) or None,
        help=f"PostgreSQL (postgresql://USER@HOST/DB; default ${DATABASE_URL_ENV}) instead of "
        "SQLite in the data folder, which still holds the blobs and project keys",
    )


def existing_coordinator(args: argparse.Namespace, data_dir: Path) -> Coordinator:
    """The coordinator over data that must exist already (no worker: a command, not a server)."""
    from backend.coordinator import Coordinator

    url = getattr(args, "database_url", None)
    if not url and not (data_dir / DB_FILE).is_file():
        raise ValueError(
            f"{data_dir} holds no coordinator data ({DB_FILE} is missing): check --data (a "
            "typo?), or pass --database-url for PostgreSQL; `barnraise-backend project create` "
            "starts a new coordinator"
        )
    return Coordinator(data_dir, start_worker=False, database_url=url)
