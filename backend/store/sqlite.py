"""The embedded store: SQLite in WAL mode, one writer connection, a reader per thread.

Split by concern, so that another database could reuse the shape of the queries:

    sqlite_writer   SQLiteStore: connections, the one writer, group commit, batched writes
    sqlite_reads    SQLiteReads: the SQL of ``ReadTx``
    sqlite_writes   SQLiteTx: SQLiteReads plus the SQL of ``WriteTx``
    sqlite_admin    the organiser's writes of ``WriteTx`` (bans, set-asides, actions)
    sqlite_retention  which update payloads may go, and their pruning (migration 7)
    sqlite_rows     records to and from rows (JSON columns, the project-row memo)
"""

from backend.store.batching import MAX_WRITE_BATCH
from backend.store.sqlite_writer import BUSY_TIMEOUT_MS, SQLiteStore
from backend.store.sqlite_writes import SQLiteTx

__all__ = ["BUSY_TIMEOUT_MS", "MAX_WRITE_BATCH", "SQLiteStore", "SQLiteTx"]
