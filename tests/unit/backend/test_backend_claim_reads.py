"""An async claim reads a bounded scan of pending updates, never the whole backlog, and
fills its buffer within the share limits."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from backend.services.aggregation import _SHARE_SCAN, _oldest_fresh_updates
from backend.settings import ProjectSettings


class _PendingUpdates:
    """Just the WriteTx methods the claim uses, over a list in upload order."""

    def __init__(self, base_versions: list[int], clients: list[str] | None = None) -> None:
        clients = clients or [f"c{i}" for i in range(len(base_versions))]
        self.pending = [
            SimpleNamespace(id=f"u{i}", base_version=b, client_id=c, source_net=None)
            for i, (b, c) in enumerate(zip(base_versions, clients, strict=True))
        ]
        self.dropped: list[str] = []
        self.settled: list[tuple[list[str], str]] = []
        self.limits: list[int | None] = []

    def pending_update_records(
        self, project_id: int, base_version: int | None, limit: int | None
    ) -> list[Any]:
        self.limits.append(limit)
        return self.pending[:limit]

    def drop_updates(self, update_ids: list[str]) -> None:
        self.dropped += update_ids
        self.pending = [u for u in self.pending if u.id not in update_ids]

    def settle_credit(self, update_ids: list[str], state: str) -> list[tuple[str, float]]:
        self.settled.append((list(update_ids), state))
        return []


def test_claim_takes_the_oldest_fresh_updates_and_drops_stale_ones_it_meets() -> None:
    settings = ProjectSettings.from_dict({"mode": "async", "buffer_size": 3, "max_staleness": 2})
    # current version 10: base 7 is 3 behind (stale), base 8 is 2 behind (fresh)
    tx = _PendingUpdates([7, 9, 7, 8, 10, 10, 7, 9])
    taken = _oldest_fresh_updates(tx, 1, 10, settings, 0.0)  # type: ignore[arg-type]
    assert [u.id for u in taken] == ["u1", "u3", "u4"]
    assert tx.dropped == ["u0", "u2", "u6"]  # every stale one the scan met
    assert tx.settled == [(["u0", "u2", "u6"], "granted")]  # late through no fault of theirs
    assert set(tx.limits) == {_SHARE_SCAN}  # never an unbounded read


def test_claim_with_too_few_fresh_updates_returns_what_there_is() -> None:
    settings = ProjectSettings.from_dict({"mode": "async", "buffer_size": 4, "max_staleness": 0})
    tx = _PendingUpdates([4, 5, 5])
    taken = _oldest_fresh_updates(tx, 1, 5, settings, 0.0)  # type: ignore[arg-type]
    assert [u.id for u in taken] == ["u1", "u2"] and tx.dropped == ["u0"]


def test_one_contributor_fills_at_most_its_share_of_a_buffer() -> None:
    settings = ProjectSettings.from_dict({"mode": "async", "buffer_size": 4})  # share 0.5
    tx = _PendingUpdates([3] * 6, ["mallory"] * 5 + ["alice"])
    taken = _oldest_fresh_updates(tx, 1, 3, settings, 0.0)  # type: ignore[arg-type]
    assert [u.id for u in taken] == ["u0", "u1", "u5"]  # two of four, then nobody else yet
    assert tx.dropped == []  # the rest wait for a later buffer
