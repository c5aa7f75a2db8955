"""The SQL of membership writes on PostgreSQL: ``sqlite_clients``, statement for statement.

``PostgresClientWrites`` is a base of ``postgres_writes.PostgresTx``; it runs inside the
transaction ``postgres`` opened and never commits itself.
"""

from __future__ import annotations

from backend.store.base import ClientRecord, NameKeys
from backend.store.postgres_reads import PostgresReads


class PostgresClientWrites(PostgresReads):
    """Membership's part of ``WriteTx``."""

    def insert_client(self, client: ClientRecord, keys: NameKeys) -> None:
        self._run(
            """INSERT INTO clients (id, project_id, display_name, team, public_key, token_hash,
                 created_at, last_seen, name_key, team_key)
               VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)""",
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
            "UPDATE clients SET display_name = %s, team = %s, token_hash = %s, last_seen = %s,"
            " name_key = %s, team_key = %s WHERE id = %s",
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
            "UPDATE clients SET name_key = %s, team_key = %s WHERE id = %s",
            keys.name,
            keys.team,
            client_id,
        )

    def touch_client(self, client_id: str, now: float) -> None:
        self._run("UPDATE clients SET last_seen = %s WHERE id = %s", now, client_id)
