"""The SQL of membership writes: a client joining, joining again, its look-alike keys
(migration 8) and its last contact.

``SQLiteClientWrites`` is a base of ``sqlite_writes.SQLiteTx``; like it, it runs inside the
transaction ``sqlite_writer`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.base import ClientRecord, NameKeys
from backend.store.sqlite_reads import SQLiteReads


class SQLiteClientWrites(SQLiteReads):
    """Membership's part of ``WriteTx``."""

    def insert_client(self, client: ClientRecord, keys: NameKeys) -> None:
        self._run(
            """INSERT INTO clients (id, project_id, display_name, team, public_key, token_hash,
                 created_at, last_seen, name_key, team_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            client.id,
            client.project_id,
            client.display_name,
            client.team,
            client.public_key,
            client.token_hash,
            client.created_at,
            client.last_seen,
            keys.name,
            keys.team,
        )

    def rejoin_client(
        self,
        client_id: str,
        display_name: str,
        team: str | None,
        token_hash: str,
        now: float,
        keys: NameKeys,
    ) -> None:
        self._run(
            "UPDATE clients SET display_name = ?, team = ?, token_hash = ?, last_seen = ?,"
            " name_key = ?, team_key = ? WHERE id = ?",
            display_name,
            team,
            token_hash,
            now,
            keys.name,
            keys.team,
            client_id,
        )

    def set_name_keys(self, client_id: str, keys: NameKeys) -> None:
        self._run(
            "UPDATE clients SET name_key = ?, team_key = ? WHERE id = ?",
            keys.name,
            keys.team,
            client_id,
        )

    def touch_client(self, client_id: str, now: float) -> None:
        self._run("UPDATE clients SET last_seen = ? WHERE id = ?", now, client_id)
