"""Exceptions of the SecAgg+ round.

    FederatedError
    └── SecAggError              anything the round refuses on purpose
        ├── SecAggAbort          the round cannot finish; ``reason`` is a stable code
        │   └── ForgedAdvertisement   a neighbour's keys do not verify under its identity key
        ├── RefusedRequest       an honest client will not answer a request that could unmask
        └── StageError           a call out of order, or a message that does not fit the round

An abort is never a partial result: the server returns a sum over the survivors or nothing.
"""

from __future__ import annotations

from federated.errors import FederatedError

ABORT_REASONS: tuple[str, ...] = (
    "too_few_neighbours",
    "too_few_survivors",
    "too_few_shares",
    "inconsistent_shares",
    "forged_advertisement",
)
"""Every ``SecAggAbort.reason``; a caller may retry the round with fewer clients lost."""


class SecAggError(FederatedError):
    """Base class of every error the SecAgg+ round raises on purpose."""


class SecAggAbort(SecAggError):
    """The round cannot finish safely; start a new round (new keys) rather than resume it."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in ABORT_REASONS:
            raise ValueError(f"unknown abort reason {reason!r}")
        super().__init__(message)
        self.reason = reason


class ForgedAdvertisement(SecAggAbort):
    """A forwarded advertisement is not signed by the identity key the roster gives."""

    def __init__(self, message: str) -> None:
        super().__init__("forged_advertisement", message)


class RefusedRequest(SecAggError):
    """An unmask request that would hand the server both secrets of one client, or repeat."""


class StageError(SecAggError):
    """A step called out of order, or a message whose sender, size or content does not fit."""
