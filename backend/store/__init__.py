"""Storage behind a small interface: ``Store`` (SQLite by default) and the blob folder."""

from backend.store.base import (
    ActionRecord,
    AggregationClaim,
    ClaimConflict,
    ClientRecord,
    NameKeys,
    ProjectRecord,
    ReadTx,
    RoundCounts,
    Store,
    StoreOpenError,
    TaskRecord,
    UpdateRecord,
    VersionRecord,
    WriteTx,
)
from backend.store.blobs import BlobStore
from backend.store.factory import make_store
from backend.store.sqlite import SQLiteStore

__all__ = [
    "ActionRecord",
    "AggregationClaim",
    "BlobStore",
    "ClaimConflict",
    "ClientRecord",
    "NameKeys",
    "ProjectRecord",
    "ReadTx",
    "RoundCounts",
    "SQLiteStore",
    "Store",
    "StoreOpenError",
    "TaskRecord",
    "UpdateRecord",
    "VersionRecord",
    "WriteTx",
    "make_store",
]
