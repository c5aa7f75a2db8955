"""An async claim reads one buffer of pending updates at a time, never the whole backlog."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from backend.services.aggregation import _oldest_fresh_updates
from backend.settings import ProjectSettings


class _PendingUpdates:
    """Just the two WriteTx methods the claim uses, over a list in upload order."""

    def __init__(self, base_versions: list[int]) -> None:
        self.pending = [
            SimpleNamespace(id=f"u{i}", base_version=b) for i, b in enumerate(base_versions)
        ]
        self.dropped: list[str] = []
        self.limits: list[int | None] = []

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[Any]:
        self.limits.append(limit)
        return self.pending[:limit]

    def drop_updates(self, update_ids: list[str]) -> None:
        self.dropped += update_ids
        self.pending = [u for u in self.pending if u.id not in update_ids]


def test_claim_takes_the_oldest_fresh_updates_and_drops_stale_ones_it_meets() -> None:
    settings = ProjectSettings.from_dict({"mode": "async", "buffer_size": 3, "max_staleness": 2})
    # current version 10: base 7 is 3 behind (stale), base 8 is 2 behind (fresh)
    tx = _PendingUpdates([7, 9, 7, 8, 10, 10, 7, 9])
    taken = _oldest_fresh_updates(tx, 1, 10, settings)  # type: ignore[arg-type]
    assert [u.id for u in taken] == ["u1", "u3", "u4"]
    assert tx.dropped == ["u0", "u2"]  # met before the buffer filled; u6 waits for a later claim
    assert set(tx.limits) == {3}  # never an unbounded read


def test_claim_with_too_few_fresh_updates_returns_what_there_is() -> None:
    settings = ProjectSettings.from_dict({"mode": "async", "buffer_size": 4, "max_staleness": 0})
    tx = _PendingUpdates([4, 5, 5])
    taken = _oldest_fresh_updates(tx, 1, 5, settings)  # type: ignore[arg-type]
    assert [u.id for u in taken] == ["u1", "u2"] and tx.dropped == ["u0"]
