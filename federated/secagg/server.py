"""The server's side of a SecAgg+ round: relay, collect, and remove the masks of the sum.

    receive_advertisement* -> close_advertising() -> receive_shares* -> close_sharing()
    -> receive_masked_input* -> close_masking() -> receive_unmask* -> finish()

Each ``close_*`` ends a stage: whoever has not sent by then has dropped. The sets shrink
U1 (advertised) ⊇ U2 (shared keys) ⊇ U3 (sent a masked input) ⊇ U4 (answered unmask);
the result is the sum over U3. The server never holds a single input: masked inputs are
added to a running sum as they arrive, and only the masks of that sum are removed.

It aborts (``SecAggAbort``, nothing returned) when fewer than ``min_survivors`` inputs
are left, when a client whose secret must be reconstructed has fewer than t neighbours
left to hold its shares, or when fewer than t of them answer.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from federated.secagg import encoding, keys, prg, shamir
from federated.secagg.errors import SecAggAbort, StageError
from federated.secagg.messages import (
    MASK_KEY,
    SELF_MASK_SEED,
    Advertisement,
    AdvertisementBundle,
    MaskedInput,
    RoundSetup,
    SealedShares,
    ShareDelivery,
    ShareUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.secagg.params import RoundParameters
from federated.tensors import StateDict


class ServerStage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"


@dataclass(frozen=True)
class SecAggResult:
    """The sum of the survivors' clipped updates, within ``error_bound`` per entry."""

    total: StateDict
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]
    error_bound: float


class SecAggServer:
    """The relay and aggregator of one round of ``params.num_clients`` clients.

    ``roster`` maps every client index to its raw 32-byte Ed25519 identity key;
    ``shapes`` is the update's layout (its digest must match the parameters').
    """

    def __init__(
        self,
        *,
        params: RoundParameters,
        roster: Mapping[int, bytes],
        shapes: encoding.Shapes,
    ) -> None:
        if set(roster) != set(range(params.num_clients)):
            raise ValueError("the roster must give an identity key for every client index")
        if encoding.layout_digest(shapes) != params.layout_digest:
            raise ValueError("shapes do not match the round parameters' layout digest")
        self.params = params
        self._roster = dict(roster)
        self._shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self._graph = params.graph()
        self.stage = ServerStage.ADVERTISE
        self._adverts: dict[int, Advertisement] = {}
        self._sealed: dict[int, dict[int, SealedShares]] = {}  # sender -> receiver -> sealed
        self._partners: dict[int, frozenset[int]] = {}  # who exchanged shares with whom
        self._masked: set[int] = set()
        self._sum = np.zeros(params.num_entries, dtype=np.uint32)
        self._asked: dict[int, UnmaskRequest] = {}
        self._answered: set[int] = set()
        # (owner, kind) -> the shares revealed of that owner's secret
        self._revealed: dict[tuple[int, int], list[shamir.Share]] = {}

    def _enter(self, expected: ServerStage) -> None:
        if self.stage is not expected:
            raise StageError(f"the server is at stage {self.stage.value!r}, not {expected.value!r}")

    def _check_sender(self, index: int, allowed: Collection[int], seen: Collection[int]) -> None:
        if index not in allowed:
            raise StageError(f"client {index} may not send at this stage of the round")
        if index in seen:
            raise StageError(f"client {index} sent twice in one stage")

    def setup(self, index: int) -> RoundSetup:
        """What client ``index`` is sent first: the parameters and its neighbours' keys."""
        roster = tuple((j, self._roster[j]) for j in sorted(self._graph.neighbours(index)))
        return RoundSetup(self.params, roster)

    # --- stage 1 ------------------------------------------------------------------------

    def receive_advertisement(self, advert: Advertisement) -> None:
        self._enter(ServerStage.ADVERTISE)
        self._check_sender(advert.index, set(range(self.params.num_clients)), self._adverts)
        self._adverts[advert.index] = advert

    def close_advertising(self) -> dict[int, AdvertisementBundle]:
        """End stage 1: each advertiser gets its advertising neighbours' advertisements."""
        self._enter(ServerStage.ADVERTISE)
        advertised = set(self._adverts)
        self._require_survivors(advertised, "advertised keys")
        bundles = {}
        for i in sorted(advertised):
            around = sorted(self._graph.neighbours(i) & advertised)
            self._require_neighbours(i, len(around), "advertised keys")
            bundles[i] = AdvertisementBundle(tuple(self._adverts[j] for j in around))
        self.stage = ServerStage.SHARE_KEYS
        return bundles

    # --- stage 2 ------------------------------------------------------------------------

    def receive_shares(self, upload: ShareUpload) -> None:
        self._enter(ServerStage.SHARE_KEYS)
        self._check_sender(upload.sender, set(self._adverts), self._sealed)
        allowed = self._graph.neighbours(upload.sender) & set(self._adverts)
        by_receiver: dict[int, SealedShares] = {}
        for item in upload.sealed:
            if item.sender != upload.sender or item.receiver not in allowed:
                raise StageError(
                    f"client {upload.sender} sent shares from {item.sender} to {item.receiver}; "
                    "only its own, for its advertised neighbours, are relayed"
                )
            if item.receiver in by_receiver:
                raise StageError(f"client {upload.sender} sent two sealings for {item.receiver}")
            by_receiver[item.receiver] = item
        self._sealed[upload.sender] = by_receiver

    def close_sharing(self) -> dict[int, ShareDelivery]:
        """End stage 2: each sharer gets the shares sealed for it, by pairs that both shared.

        A pair that did not seal to each other (one of them dropped) masks with neither.
        """
        self._enter(ServerStage.SHARE_KEYS)
        shared = set(self._sealed)
        self._require_survivors(shared, "shared their keys")
        deliveries = {}
        for i in sorted(shared):
            partners = frozenset(j for j in self._sealed[i] if j in shared and i in self._sealed[j])
            self._require_neighbours(i, len(partners), "shared keys with it")
            self._partners[i] = partners
            deliveries[i] = ShareDelivery(i, tuple(self._sealed[j][i] for j in sorted(partners)))
        self.stage = ServerStage.MASKED_INPUT
        return deliveries

    # --- stage 3 ------------------------------------------------------------------------

    def receive_masked_input(self, message: MaskedInput) -> None:
        """Add a masked input to the running sum (the input itself is not kept)."""
        self._enter(ServerStage.MASKED_INPUT)
        self._check_sender(message.sender, set(self._partners), self._masked)
        try:
            values = encoding.unpack(message.data, self.params.ring_bits, self.params.num_entries)
        except ValueError as exc:
            raise StageError(f"client {message.sender}'s masked input: {exc}") from None
        np.add(self._sum, values, out=self._sum)
        self._masked.add(message.sender)

    def close_masking(self) -> dict[int, UnmaskRequest]:
        """End stage 3: ask each survivor for the shares that remove the sum's masks."""
        self._enter(ServerStage.MASKED_INPUT)
        survivors = self._masked
        self._require_survivors(survivors, "sent a masked input")
        for j, partners in sorted(self._partners.items()):
            holders = len(partners & survivors)
            if j in survivors or partners & survivors:
                self._require_neighbours(j, holders, "sent a masked input and hold its shares")
        requests = {}
        for i in sorted(survivors):
            partners = self._partners[i]
            requests[i] = UnmaskRequest(
                survived=tuple(sorted(partners & survivors)),
                dropped=tuple(sorted(partners - survivors)),
            )
        self._asked = requests
        self.stage = ServerStage.UNMASK
        return requests

    # --- stage 4 ------------------------------------------------------------------------

    def receive_unmask(self, response: UnmaskResponse) -> None:
        self._enter(ServerStage.UNMASK)
        self._check_sender(response.sender, set(self._asked), self._answered)
        asked = self._asked[response.sender]
        expected = {(j, SELF_MASK_SEED) for j in asked.survived}
        expected |= {(j, MASK_KEY) for j in asked.dropped}
        got = [(share.owner, share.kind) for share in response.revealed]
        if len(set(got)) != len(got) or set(got) != expected:
            raise StageError(f"client {response.sender}'s unmask response is not what was asked")
        x = response.sender + 1
        for share in response.revealed:
            try:
                parsed = shamir.Share.from_value_bytes(x, share.values)
            except ValueError as exc:
                raise StageError(f"client {response.sender}'s share: {exc}") from None
            self._revealed.setdefault((share.owner, share.kind), []).append(parsed)
        self._answered.add(response.sender)

    def finish(self) -> SecAggResult:
        """End stage 4: reconstruct the secrets, remove every mask, decode the sum."""
        self._enter(ServerStage.UNMASK)
        params, ring = self.params, self.params.ring_bits
        total = self._sum.copy()
        survivors = sorted(self._masked)
        for j in survivors:
            seed = self._reconstruct(j, SELF_MASK_SEED)
            prg.add_mask(total, seed, ring, sign=-1)
        for j in sorted(set(self._partners) - self._masked):
            lost_with = sorted(self._partners[j] & self._masked)
            if not lost_with:
                continue
            secret = X25519PrivateKey.from_private_bytes(self._reconstruct(j, MASK_KEY))
            if secret.public_key().public_bytes_raw() != self._adverts[j].s_public:
                raise SecAggAbort(
                    "inconsistent_shares",
                    f"the shares of client {j}'s mask key do not reconstruct its advertised key: "
                    "a client answered with a wrong share",
                )
            for i in lost_with:
                seed = keys.pairwise_seed(secret, self._adverts[i].s_public, params.round_id, j, i)
                # i added +PRG(s_ij) when j > i and -PRG(s_ij) when j < i: undo that.
                prg.add_mask(total, seed, ring, sign=-1 if j > i else 1)
        signed = encoding.from_ring(total, ring)
        self.stage = ServerStage.DONE
        return SecAggResult(
            total=params.codec.dequantize(signed, self._shapes),
            survivors=tuple(survivors),
            dropped=tuple(i for i in range(params.num_clients) if i not in self._masked),
            error_bound=params.codec.error_bound(len(survivors)),
        )

    def _reconstruct(self, owner: int, kind: int) -> bytes:
        shares = self._revealed.get((owner, kind), [])
        what = "self-mask seed" if kind == SELF_MASK_SEED else "mask key"
        if len(shares) < self.params.threshold:
            raise SecAggAbort(
                "too_few_shares",
                f"{len(shares)} shares of client {owner}'s {what} came back, fewer than the "
                f"threshold {self.params.threshold}: too many clients left during unmasking",
            )
        try:
            return shamir.combine(shares, threshold=self.params.threshold)
        except ValueError as exc:
            raise SecAggAbort(
                "inconsistent_shares",
                f"client {owner}'s {what}: {exc}; a client sent a wrong share",
            ) from None

    # --- checks -------------------------------------------------------------------------

    def _require_survivors(self, clients: set[int], doing: str) -> None:
        if len(clients) < self.params.min_survivors:
            raise SecAggAbort(
                "too_few_survivors",
                f"only {len(clients)} clients {doing}, fewer than the round's minimum of "
                f"{self.params.min_survivors}",
            )

    def _require_neighbours(self, client: int, count: int, doing: str) -> None:
        if count < self.params.threshold:
            raise SecAggAbort(
                "too_few_neighbours",
                f"client {client} has {count} neighbours that {doing}, fewer than the "
                f"threshold {self.params.threshold}: its masks could not be removed",
            )
