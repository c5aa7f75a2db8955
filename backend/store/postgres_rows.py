"""Records to and from PostgreSQL rows (dicts, psycopg's ``dict_row``).

JSON columns hold the same canonical text as on SQLite (``sqlite_rows.dump``), so a copy
between the two stores moves them unchanged; parsed project rows are memoised as
``sqlite_rows`` does it, for the same reason (every request reads its project).
"""

from __future__ import annotations

import json
from typing import Any

from backend.store.base import (
    ActionRecord,
    ClientRecord,
    ProjectRecord,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)
from backend.store.sqlite_rows import dump

__all__ = [
    "SELECT_PROJECTS",
    "Row",
    "action_from_row",
    "client_from_row",
    "dump",
    "project_from_row",
    "task_from_row",
    "update_from_row",
    "version_from_row",
]

Row = dict[str, Any]

SELECT_PROJECTS = """SELECT id, name, description, recipe, recipe_version, hparams, strategy,
    settings, status, current_version, public_key, created_at, shard_sizes FROM projects"""
"""What a ProjectRecord holds: not next_shard, which changes with every lease."""

_PROJECT_MEMO: dict[tuple[Any, ...], ProjectRecord] = {}
_PROJECT_MEMO_MAX = 256
"""Project rows seen, by their full contents (as ``sqlite_rows``): a row that changed in
any column is another key, so the memo never answers stale data. Records are shared:
callers treat them as read-only."""


def project_from_row(row: Row) -> ProjectRecord:
    key = tuple(row.values())
    record = _PROJECT_MEMO.get(key)
    if record is None:
        if len(_PROJECT_MEMO) >= _PROJECT_MEMO_MAX:
            _PROJECT_MEMO.clear()
        record = _PROJECT_MEMO[key] = ProjectRecord(
            id=row["id"],
            name=row["name"],
            description=row["description"],
            recipe=row["recipe"],
            recipe_version=row["recipe_version"],
            hparams=json.loads(row["hparams"]),
            strategy=json.loads(row["strategy"]),
            settings=json.loads(row["settings"]),
            status=row["status"],
            current_version=row["current_version"],
            public_key=row["public_key"],
            created_at=row["created_at"],
            shard_sizes=json.loads(row["shard_sizes"]) if row["shard_sizes"] else None,
        )
    return record


def version_from_row(row: Row) -> VersionRecord:
    return VersionRecord(
        project_id=row["project_id"],
        version=row["version"],
        digest=row["digest"],
        created_at=row["created_at"],
        signature=row["signature"],
        metrics=json.loads(row["metrics"]),
        updates=row["updates"],
        contributors=row["contributors"],
        strategy_state_digest=row["strategy_state_digest"],
        parent_digest=row["parent_digest"],
        parent_manifest_digest=row["parent_manifest_digest"],
        updates_root=row["updates_root"],
    )


_CLIENT_STORE_ONLY = frozenset({"name_key", "team_key", "rowid"})
"""Columns only the store's look-ups use (migration 8; the explicit rowid), not part of
``ClientRecord``."""


def client_from_row(row: Row) -> ClientRecord:
    return ClientRecord(**{k: v for k, v in row.items() if k not in _CLIENT_STORE_ONLY})


def task_from_row(row: Row) -> TaskRecord:
    values = dict(row)
    values["manifest"] = json.loads(values["manifest"])
    return TaskRecord(**values)


def update_from_row(row: Row) -> UpdateRecord:
    values = {k: v for k, v in row.items() if k != "seq"}
    values["metrics"] = json.loads(values["metrics"])
    return UpdateRecord(**values)


def action_from_row(row: Row) -> ActionRecord:
    return ActionRecord(**row)
