"""PostgreSQL rows that read as ``sqlite3.Row`` does, so ``sqlite_rows``' converters serve both.

``sqlite_row`` is a psycopg row factory: each row answers by position and by column name
and has ``keys()``. JSON columns hold the same canonical text as on SQLite
(``sqlite_rows.dump``), so a copy between the two stores moves them unchanged; parsed
project rows share ``sqlite_rows``' memo (a row is keyed by its values, whichever store).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from psycopg.cursor import BaseCursor
from psycopg.rows import RowMaker

from backend.store.sqlite_rows import (
    SELECT_PROJECTS,
    action_from_row,
    client_from_row,
    dump,
    project_from_row,
    task_from_row,
    update_from_row,
    version_from_row,
)

__all__ = [
    "SELECT_PROJECTS",
    "PgRow",
    "action_from_row",
    "client_from_row",
    "dump",
    "project_from_row",
    "sqlite_row",
    "task_from_row",
    "update_from_row",
    "version_from_row",
]


class PgRow:
    """One row: its values by position or by column name, as ``sqlite3.Row``."""

    __slots__ = ("_index", "_values")

    def __init__(self, values: Sequence[Any], index: dict[str, int]) -> None:
        self._values = values
        self._index = index

    def __getitem__(self, key: int | str, /) -> Any:
        return self._values[self._index[key] if isinstance(key, str) else key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def keys(self) -> list[str]:
        return list(self._index)


def sqlite_row(cursor: BaseCursor[Any, Any]) -> RowMaker[PgRow]:
    """psycopg's row factory for ``PgRow``s."""
    description = cursor.description
    index = {} if description is None else {c.name: i for i, c in enumerate(description)}
    make: Callable[[Sequence[Any]], PgRow] = lambda values: PgRow(values, index)  # noqa: E731
    return make
