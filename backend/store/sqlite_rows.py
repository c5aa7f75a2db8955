"""Records to and from rows: JSON columns, and a memo of parsed project rows.

The SQL of ``sqlite_reads``/``sqlite_writes`` stores dicts as canonical JSON text
(``dump``) and turns each row back into its ``backend.store.base`` record here. A row is
anything with ``sqlite3.Row``'s access (by position and by name, ``keys()``): SQLite's own,
or ``postgres_rows``' for the PostgreSQL store, which shares these converters.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Protocol

from backend.store.base import (
    ActionRecord,
    ClientRecord,
    ProjectRecord,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
)


class Row(Protocol):
    """What the converters read: ``sqlite3.Row``'s access by position and by name."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __iter__(self) -> Iterator[Any]: ...

    def keys(self) -> list[str]: ...


def dump(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)


SELECT_PROJECTS = """SELECT id, name, description, recipe, recipe_version, hparams, strategy,
    settings, status, current_version, public_key, created_at, shard_sizes FROM projects"""
"""What a ProjectRecord holds: not next_shard, which changes with every lease
(``SQLiteTx.next_shard``)."""

_PROJECT_MEMO: dict[tuple[Any, ...], ProjectRecord] = {}
_PROJECT_MEMO_MAX = 256
"""Project rows seen, by their full contents: every request reads its project, and parsing
its JSON columns each time was the largest CPU cost of a lease after SQLite itself. A row
that changed in any column is another key, so the memo can never answer stale data. The
records (and their dicts) are shared: callers treat them as read-only."""


def project_from_row(row: Row) -> ProjectRecord:
    key = tuple(row)
    record = _PROJECT_MEMO.get(key)
    if record is None:
        if len(_PROJECT_MEMO) >= _PROJECT_MEMO_MAX:
            _PROJECT_MEMO.clear()
        record = _PROJECT_MEMO[key] = _parse_project(row)
    return record


def _parse_project(row: Row) -> ProjectRecord:
    return ProjectRecord(
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


CLIENT_STORE_ONLY = frozenset({"name_key", "team_key", "rowid"})
"""Columns only the store's look-ups use (migration 8; PostgreSQL's explicit rowid), not part
of ``ClientRecord``."""


def client_from_row(row: Row) -> ClientRecord:
    keys = [k for k in row.keys() if k not in CLIENT_STORE_ONLY]  # noqa: SIM118 - Row has no iteration of keys
    return ClientRecord(**{k: row[k] for k in keys})


def task_from_row(row: Row) -> TaskRecord:
    values = {k: row[k] for k in row.keys()}  # noqa: SIM118
    values["manifest"] = json.loads(values["manifest"])
    return TaskRecord(**values)


def update_from_row(row: Row) -> UpdateRecord:
    values = {k: row[k] for k in row.keys() if k != "seq"}  # noqa: SIM118
    values["metrics"] = json.loads(values["metrics"])
    return UpdateRecord(**values)


def action_from_row(row: Row) -> ActionRecord:
    return ActionRecord(**{k: row[k] for k in row.keys()})  # noqa: SIM118
