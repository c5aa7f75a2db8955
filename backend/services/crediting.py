"""Settling pending credit: an accepted update's credit counts only once its fate is known.

At upload an update's credit is pending (``ClientRecord.credit_pending``). It is granted
(added to the contributor's total and recent average) when the update goes into a version,
or is dropped as too stale through no fault of its own; it is withheld when the update is
kept out of its aggregate or quarantined. Each update settles once. Granted credit can be
revoked (``revoke_since``): a contributor caught by a spot check loses the credit of every
update since its last clean check.
"""

from __future__ import annotations

from collections import defaultdict

from backend import credit as credit_math
from backend.store import UpdateRecord, WriteTx


def settle(tx: WriteTx, update_ids: list[str], *, grant: bool, now: float) -> None:
    """Grant or withhold the pending credit of these updates, in ``tx``."""
    if not update_ids:
        return
    settled = tx.settle_credit(update_ids, "granted" if grant else "withheld")
    if not grant:
        return
    per_client: dict[str, float] = defaultdict(float)
    for client_id, credit in settled:
        per_client[client_id] += credit
    for client_id, credit in per_client.items():
        client = tx.client(client_id)
        if client is None:
            continue
        recent = credit_math.add_credit(client.recent_sum, client.recent_time, credit, now)
        tx.grant_credit(client_id, credit, recent, now)


def revoke_since(tx: WriteTx, client_id: str, since: float, now: float) -> float:
    """Revoke the granted credit of the client's updates accepted after ``since``; returns
    the GFLOP taken back. Its recent average loses what those updates still weigh in it."""
    return revoke(tx, client_id, tx.granted_updates_since(client_id, since), now)


def revoke(tx: WriteTx, client_id: str, updates: list[UpdateRecord], now: float) -> float:
    """Revoke the granted credit of these updates of the client (an organiser's revoke, a
    ban with ``--revoke``); returns the GFLOP taken back."""
    client = tx.client(client_id)
    updates = [u for u in updates if u.client_id == client_id and u.credit_state == "granted"]
    if client is None or not updates:
        return 0.0
    total = sum(u.credit for u in updates)
    still_counted = sum(credit_math.decayed(u.credit, u.accepted_at, now) for u in updates)
    recent = credit_math.decayed(client.recent_sum, client.recent_time, now) - still_counted
    tx.revoke_credit(client_id, [u.id for u in updates], total, max(0.0, recent), now)
    return total
