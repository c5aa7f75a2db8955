"""One client's side of a SecAgg+ round, as a state machine of four steps.

    advertise() -> share_keys(bundle) -> masked_input(delivery, update) -> unmask(request)

Each step may be called once, in order; any error (a forged advertisement, too few
neighbours left, a refused request) leaves the client aborted, and every later call
raises ``StageError``: a round is never resumed, a new one starts with new keys.

What the client protects: its s secret and self-mask seed leave it only as Shamir shares
sealed to its neighbours, and in unmasking it reveals, for each neighbour, the share of
its self-mask seed (if it survived) or of its s secret (if it dropped), never both, and
answers one request only. Against a server that follows the protocol (semi-honest), that
is enough for the server to learn only the sum. A server that lies about who dropped can
still exclude a client's neighbours to unmask it; stopping that needs the signed
consistency round of Bonawitz et al. (2017), which this library does not implement.
"""

from __future__ import annotations

import base64
import enum
import os
from collections.abc import Mapping

import numpy as np
import torch

from federated.secagg import encoding, keys, prg, shamir
from federated.secagg.errors import RefusedRequest, SecAggAbort, SecAggError, StageError
from federated.secagg.messages import (
    MASK_KEY,
    SELF_MASK_SEED,
    Advertisement,
    AdvertisementBundle,
    MaskedInput,
    RevealedShare,
    RoundSetup,
    SealedShares,
    ShareDelivery,
    ShareUpload,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.signing import SigningKey

SHARE_VALUE_BYTES = 2 * shamir.ELEMENT_BYTES
"""Bytes of one share of a 32-byte secret (two field elements)."""


class ClientStage(enum.Enum):
    ADVERTISE = "advertise"
    SHARE_KEYS = "share_keys"
    MASKED_INPUT = "masked_input"
    UNMASK = "unmask"
    DONE = "done"
    ABORTED = "aborted"


class SecAggClient:
    """Client ``index`` of a round, holding its round keys and the shares it was sent.

    ``setup.roster`` must list exactly the identity keys of the client's neighbours in
    the round's graph; ``rounding_seed`` seeds the stochastic rounding (None: OS entropy).
    """

    def __init__(
        self,
        *,
        index: int,
        identity: SigningKey,
        setup: RoundSetup,
        rounding_seed: int | None = None,
    ) -> None:
        params = setup.params
        if not 0 <= index < params.num_clients:
            raise ValueError(f"index must be in [0, {params.num_clients}), got {index}")
        self.index = index
        self.params = params
        self._identity = identity
        self._neighbours = params.graph().neighbours(index)
        roster = dict(setup.roster)
        if len(roster) != len(setup.roster) or set(roster) != self._neighbours:
            raise StageError(
                f"the set-up's roster for client {index} does not list exactly its neighbours "
                "in the round's graph"
            )
        self._roster = {i: base64.b64encode(key).decode("ascii") for i, key in roster.items()}
        self._keys = keys.RoundKeys.generate()
        self._self_seed = os.urandom(prg.SEED_BYTES)
        self._rng = np.random.default_rng(rounding_seed)
        self._peers: dict[int, Advertisement] = {}
        self._shared: dict[int, bytes] = {}  # neighbour -> X25519 of the c keys
        self._held: dict[int, tuple[shamir.Share, shamir.Share]] = {}
        self.stage = ClientStage.ADVERTISE

    def _enter(self, expected: ClientStage) -> None:
        if self.stage is not expected:
            raise StageError(
                f"client {self.index} is at stage {self.stage.value!r}, not {expected.value!r}"
            )

    def _abort_on_error(self, error: SecAggError) -> SecAggError:
        self.stage = ClientStage.ABORTED
        return error

    def advertise(self) -> Advertisement:
        """Stage 1: the two public keys, signed with the identity key for this round."""
        self._enter(ClientStage.ADVERTISE)
        c_pub, s_pub = self._keys.c_public, self._keys.s_public
        signature = keys.sign_advertisement(
            self._identity, self.params.round_id, self.index, c_pub, s_pub
        )
        self.stage = ClientStage.SHARE_KEYS
        return Advertisement(self.index, c_pub, s_pub, signature)

    def share_keys(self, bundle: AdvertisementBundle) -> ShareUpload:
        """Stage 2: check the neighbours' advertisements, share both secrets among them.

        Raises ``ForgedAdvertisement`` if one is not signed by its roster key, and
        ``SecAggAbort`` (``too_few_neighbours``) if fewer than t neighbours advertised.
        """
        self._enter(ClientStage.SHARE_KEYS)
        try:
            return self._share_keys(bundle)
        except SecAggError as exc:
            raise self._abort_on_error(exc) from None

    def _share_keys(self, bundle: AdvertisementBundle) -> ShareUpload:
        params = self.params
        for advert in bundle.adverts:
            if advert.index not in self._neighbours or advert.index in self._peers:
                raise StageError(
                    f"client {self.index} was sent an advertisement of client {advert.index}, "
                    "which is not a neighbour, or twice"
                )
            keys.verify_advertisement(
                self._roster[advert.index],
                params.round_id,
                advert.index,
                advert.c_public,
                advert.s_public,
                advert.signature,
            )
            self._peers[advert.index] = advert
        if len(self._peers) < params.threshold:
            raise SecAggAbort(
                "too_few_neighbours",
                f"client {self.index} has {len(self._peers)} neighbours left, fewer than the "
                f"threshold {params.threshold}: the round cannot unmask it",
            )
        xs = [j + 1 for j in sorted(self._peers)]
        b_shares = shamir.split(self._self_seed, threshold=params.threshold, xs=xs)
        s_shares = shamir.split(self._keys.s_secret_bytes(), threshold=params.threshold, xs=xs)
        sealed = []
        for j in sorted(self._peers):
            plaintext = b_shares[j + 1].value_bytes() + s_shares[j + 1].value_bytes()
            self._shared[j] = keys.share_secret(self._keys.c_secret, self._peers[j].c_public)
            nonce, ciphertext = keys.seal_shares(
                self._shared[j], params.round_id, self.index, j, plaintext
            )
            sealed.append(SealedShares(self.index, j, nonce, ciphertext))
        self.stage = ClientStage.MASKED_INPUT
        return ShareUpload(self.index, tuple(sealed))

    def masked_input(
        self, delivery: ShareDelivery, update: Mapping[str, torch.Tensor]
    ) -> MaskedInput:
        """Stage 3: keep the shares sent to us, send the update under its masks.

        ``ValueError`` (the client may retry with a fixed update) if the update does not fit
        the round's layout or is not finite.

        y = x + PRG(b) + sum_{j > i} PRG(s_ij) - sum_{j < i} PRG(s_ij) mod 2^w, over the
        neighbours whose shares arrived (the server delivers them both ways or not at all).
        """
        self._enter(ClientStage.MASKED_INPUT)
        params = self.params
        layout = encoding.layout_of(update)
        if encoding.layout_digest(layout) != params.layout_digest:
            raise ValueError("the update's tensor names or shapes differ from the round's layout")
        values = params.codec.quantize(update, layout, self._rng)  # before any state changes
        try:
            self._open_delivery(delivery)
        except SecAggError as exc:
            raise self._abort_on_error(exc) from None
        masked = encoding.to_ring(values, params.ring_bits)
        prg.add_mask(masked, self._self_seed, params.ring_bits)
        for j in sorted(self._held):
            seed = keys.pairwise_seed(
                self._keys.s_secret, self._peers[j].s_public, params.round_id, self.index, j
            )
            prg.add_mask(masked, seed, params.ring_bits, sign=1 if j > self.index else -1)
        masked &= np.uint32((1 << params.ring_bits) - 1)
        self.stage = ClientStage.UNMASK
        return MaskedInput(self.index, encoding.pack(masked, params.ring_bits))

    def _open_delivery(self, delivery: ShareDelivery) -> None:
        if delivery.receiver != self.index:
            raise StageError(f"client {self.index} was sent shares for {delivery.receiver}")
        for item in delivery.sealed:
            if item.receiver != self.index or item.sender not in self._peers:
                raise StageError(
                    f"client {self.index} was sent shares from {item.sender} to {item.receiver}; "
                    "only its advertised neighbours' shares for it may come"
                )
            if item.sender in self._held:
                raise StageError(f"client {self.index} was sent {item.sender}'s shares twice")
            plaintext = keys.open_shares(
                self._shared[item.sender],
                self.params.round_id,
                item.sender,
                self.index,
                item.nonce,
                item.ciphertext,
            )
            if len(plaintext) != 2 * SHARE_VALUE_BYTES:
                raise StageError(f"the shares from client {item.sender} have the wrong size")
            x = self.index + 1
            self._held[item.sender] = (
                shamir.Share.from_value_bytes(x, plaintext[:SHARE_VALUE_BYTES]),
                shamir.Share.from_value_bytes(x, plaintext[SHARE_VALUE_BYTES:]),
            )
        if len(self._held) < self.params.threshold:
            raise SecAggAbort(
                "too_few_neighbours",
                f"client {self.index} holds shares of {len(self._held)} neighbours, fewer "
                f"than the threshold {self.params.threshold}",
            )

    def unmask(self, request: UnmaskRequest) -> UnmaskResponse:
        """Stage 4: the share of b_j for each survivor j, of s_sk_j for each dropped j.

        Raises ``RefusedRequest`` (and aborts) if one client is named both survived and
        dropped, if a name is not a neighbour whose shares we hold, or on a second request.
        """
        if self.stage is ClientStage.DONE:
            self.stage = ClientStage.ABORTED
            raise RefusedRequest(
                f"client {self.index} has already answered this round's unmask request; a "
                "second could reveal the other secret of a neighbour"
            )
        self._enter(ClientStage.UNMASK)
        survived, dropped = set(request.survived), set(request.dropped)
        if len(survived) != len(request.survived) or len(dropped) != len(request.dropped):
            raise self._abort_on_error(RefusedRequest("the unmask request names a client twice"))
        both = survived & dropped
        if both:
            raise self._abort_on_error(
                RefusedRequest(
                    f"client {self.index} refuses to reveal both secrets of {sorted(both)}: "
                    "with them the server could unmask those clients' inputs"
                )
            )
        unknown = (survived | dropped) - set(self._held)
        if unknown:
            raise self._abort_on_error(
                RefusedRequest(f"client {self.index} holds no shares of {sorted(unknown)}")
            )
        revealed = [
            RevealedShare(j, SELF_MASK_SEED, self._held[j][0].value_bytes())
            for j in sorted(survived)
        ] + [RevealedShare(j, MASK_KEY, self._held[j][1].value_bytes()) for j in sorted(dropped)]
        self.stage = ClientStage.DONE
        return UnmaskResponse(self.index, tuple(revealed))
