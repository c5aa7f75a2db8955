"""What the server cannot learn: single inputs, both secrets of a client, substituted keys."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from secagg_helpers import SHAPES, HandRound, params_for, random_updates

from federated.secagg import (
    ClientStage,
    Dropouts,
    ForgedAdvertisement,
    RefusedRequest,
    SecAggClient,
    StageError,
    encoding,
    keys,
    prg,
    run_round,
    shamir,
)
from federated.secagg.messages import (
    MASK_KEY,
    SELF_MASK_SEED,
    Advertisement,
    AdvertisementBundle,
    MaskedInput,
    UnmaskRequest,
    UnmaskResponse,
)
from federated.signing import SigningKey


def test_server_with_everything_it_saw_cannot_unmask_one_input() -> None:
    """Rebuild every secret the transcript allows, strip every mask it can: still noise."""
    n = 12
    params = params_for(n, entry_bound=0.05)
    updates = random_updates(n, std=0.01, seed=21)
    dropouts = Dropouts(after_sharing=frozenset({2, 7}), after_masking=frozenset({5}))
    report = run_round(params, updates, dropouts=dropouts, keep_transcript=True)
    seen, ring, t = report.transcript, params.ring_bits, params.threshold
    adverts = {i: Advertisement.decode(d) for i, d in seen.adverts.items()}

    # Every share revealed in unmasking, by owner and kind.
    revealed: dict[tuple[int, int], list[shamir.Share]] = {}
    for sender, data in seen.responses.items():
        for share in UnmaskResponse.decode(data).revealed:
            parsed = shamir.Share.from_value_bytes(sender + 1, share.values)
            revealed.setdefault((share.owner, share.kind), []).append(parsed)
    # It never holds both kinds for one client, so no s key of a survivor.
    owners_by_kind = {
        kind: {o for o, k in revealed if k == kind} for kind in (SELF_MASK_SEED, MASK_KEY)
    }
    assert not owners_by_kind[SELF_MASK_SEED] & owners_by_kind[MASK_KEY]
    self_seeds = {
        o: shamir.combine(s, threshold=t) for (o, k), s in revealed.items() if k == SELF_MASK_SEED
    }
    mask_keys = {
        o: X25519PrivateKey.from_private_bytes(shamir.combine(s, threshold=t))
        for (o, k), s in revealed.items()
        if k == MASK_KEY
    }
    assert set(mask_keys) == {2, 7} and set(self_seeds) == set(seen.masked)

    entries = params.num_entries
    peeled_sum = np.zeros(entries, dtype=np.uint32)
    for i, data in sorted(seen.masked.items()):
        y = encoding.unpack(MaskedInput.decode(data).data, ring, entries)
        candidates = [y.copy()]
        prg.add_mask(y, self_seeds[i], ring, sign=-1)
        candidates.append(y.copy())
        for j, secret in mask_keys.items():  # the pairwise masks with dropped clients
            seed = keys.pairwise_seed(secret, adverts[i].s_public, params.round_id, j, i)
            prg.add_mask(y, seed, ring, sign=-1 if j > i else 1)
        candidates.append(y.copy())
        peeled_sum += y
        truth = np.concatenate([updates[i][k].reshape(-1).numpy() for k in sorted(SHAPES)])
        for candidate in candidates:  # as sent, less its self-mask, less all it can remove
            guess = encoding.from_ring(candidate, ring) * params.codec.scale
            close = np.abs(guess - truth) <= params.codec.scale
            # Uniform noise over 2^w values lands within one step 3 / 2^w of the time.
            assert close.mean() < 0.02, f"client {i}'s input shows through its masks"
            # Its entries spread over the ring (a uniform's mean |entry| is 2^(w-2) steps),
            # where the input's stay within a few steps of zero.
            uniform_mean = 2 ** (ring - 2) * params.codec.scale
            assert np.abs(guess).mean() > 0.8 * uniform_mean > 20 * np.abs(truth).mean()

    # The same peeling over all survivors is exactly the result: the attack code is right,
    # it is the survivors' pairwise masks (whose s keys it never gets) that hide each input.
    total = encoding.from_ring(peeled_sum, ring) * params.codec.scale
    result = np.concatenate([report.result.total[k].reshape(-1).numpy() for k in sorted(SHAPES)])
    assert np.allclose(total, result, atol=1e-6)


def test_honest_client_refuses_to_reveal_both_secrets_of_one_neighbour() -> None:
    round_ = HandRound(params_for(10))
    bundles = round_.advertise()
    for i, client in round_.clients.items():
        round_.server.receive_shares(client.share_keys(bundles[i]))
    deliveries = round_.server.close_sharing()
    update = random_updates(1)[0]
    client = round_.clients[0]
    client.masked_input(deliveries[0], update)
    with pytest.raises(RefusedRequest, match=r"both secrets of \[4\]"):
        client.unmask(UnmaskRequest(survived=(1, 2, 3, 4), dropped=(4, 5)))
    assert client.stage is ClientStage.ABORTED
    with pytest.raises(StageError):
        client.unmask(UnmaskRequest(survived=(1, 2, 3, 4), dropped=(5,)))

    # One answer per round: asking again, the other way round, is refused.
    other = round_.clients[1]
    other.masked_input(deliveries[1], update)
    first = other.unmask(UnmaskRequest(survived=(0, 2, 3, 4, 5, 6), dropped=(7, 8, 9)))
    assert {(s.owner, s.kind) for s in first.revealed} >= {(0, SELF_MASK_SEED), (7, MASK_KEY)}
    with pytest.raises(RefusedRequest, match="already answered"):
        other.unmask(UnmaskRequest(survived=(7, 8, 9), dropped=(0, 2, 3, 4, 5, 6)))

    # Shares of a client it holds nothing of, or names twice: refused too.
    third = round_.clients[2]
    third.masked_input(deliveries[2], update)
    with pytest.raises(RefusedRequest, match="twice"):
        third.unmask(UnmaskRequest(survived=(0, 0), dropped=()))


def test_a_server_lying_to_different_neighbours_gets_at_most_one_secret() -> None:
    """Tell some of j's neighbours 'j survived' and the rest 'j dropped': 2t > k beats it."""
    params = params_for(10)
    round_ = HandRound(params)
    bundles = round_.advertise()
    for i, client in round_.clients.items():
        round_.server.receive_shares(client.share_keys(bundles[i]))
    deliveries = round_.server.close_sharing()
    update = random_updates(1)[0]
    target, counts = 0, {SELF_MASK_SEED: 0, MASK_KEY: 0}
    for i in range(1, 10):
        client = round_.clients[i]
        client.masked_input(deliveries[i], update)
        lie = UnmaskRequest(survived=(0,), dropped=()) if i % 2 else UnmaskRequest((), (0,))
        for share in client.unmask(lie).revealed:
            assert share.owner == target
            counts[share.kind] += 1
    assert params.degree == 9 and params.threshold == 5
    assert min(counts.values()) < params.threshold <= max(counts.values())


def fresh_client(round_: HandRound, index: int) -> SecAggClient:
    """Client ``index`` of the round again, advertised and about to share (one per attempt)."""
    client = SecAggClient(
        index=index, identity=round_.identities[index], setup=round_.server.setup(index)
    )
    client.advertise()
    return client


@pytest.mark.parametrize("field", ["c_public", "s_public"])
def test_a_key_swapped_by_the_server_is_detected(field: str) -> None:
    round_ = HandRound(params_for(10))
    real = round_.advertise()[0].adverts
    server_key = X25519PrivateKey.generate().public_key().public_bytes_raw()
    swapped = (
        replace(real[3], c_public=server_key)
        if field == "c_public"
        else replace(real[3], s_public=server_key)
    )
    tampered = AdvertisementBundle((*real[:3], swapped, *real[4:]))
    client = fresh_client(round_, 0)
    with pytest.raises(ForgedAdvertisement, match=f"client {real[3].index}'s advertised keys"):
        client.share_keys(tampered)
    assert client.stage is ClientStage.ABORTED
    assert fresh_client(round_, 0).share_keys(AdvertisementBundle(real)).sender == 0


def test_an_advertisement_signed_by_another_key_is_detected() -> None:
    round_ = HandRound(params_for(10))
    real = round_.advertise()[0].adverts
    impostor = SigningKey.generate()  # the server's own identity, posing as client 1
    c_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
    s_pub = X25519PrivateKey.generate().public_key().public_bytes_raw()
    signature = keys.sign_advertisement(impostor, round_.params.round_id, 1, c_pub, s_pub)
    fake = Advertisement(1, c_pub, s_pub, signature)
    bundle = AdvertisementBundle((fake, *(a for a in real if a.index != 1)))
    with pytest.raises(ForgedAdvertisement) as caught:
        fresh_client(round_, 0).share_keys(bundle)
    assert caught.value.reason == "forged_advertisement"


def test_an_advertisement_replayed_from_another_round_is_detected() -> None:
    round_ = HandRound(params_for(10))
    real = round_.advertise()[0].adverts
    old_round = bytes(16)
    old = real[0]
    signature = keys.sign_advertisement(
        round_.identities[old.index], old_round, old.index, old.c_public, old.s_public
    )
    replayed = AdvertisementBundle((replace(old, signature=signature), *real[1:]))
    with pytest.raises(ForgedAdvertisement):
        fresh_client(round_, 0).share_keys(replayed)


def test_only_neighbours_advertisements_and_roster_are_accepted() -> None:
    params = params_for(40, dropout_tolerance=0.1)  # k = 32 of 39
    round_ = HandRound(params)
    bundles = round_.advertise()
    graph = params.graph()
    stranger = next(j for j in range(1, 40) if j not in graph.neighbours(0))
    outsider = next(a for b in bundles.values() for a in b.adverts if a.index == stranger)
    with pytest.raises(StageError, match=f"advertisement of client {stranger}"):
        fresh_client(round_, 0).share_keys(AdvertisementBundle((*bundles[0].adverts, outsider)))
    setup = round_.server.setup(0)
    wrong = replace(setup, roster=((*setup.roster[1:], (stranger, setup.roster[0][1]))))
    with pytest.raises(StageError, match="roster"):
        SecAggClient(index=0, identity=round_.identities[0], setup=wrong)


def test_tampered_or_misaddressed_shares_are_detected() -> None:
    round_ = HandRound(params_for(10))
    bundles = round_.advertise()
    for i, client in round_.clients.items():
        round_.server.receive_shares(client.share_keys(bundles[i]))
    deliveries = round_.server.close_sharing()
    update = random_updates(1)[0]
    first = deliveries[0].sealed[0]
    flipped = replace(first, ciphertext=bytes([first.ciphertext[0] ^ 1]) + first.ciphertext[1:])
    with pytest.raises(StageError, match="do not decrypt"):
        round_.clients[0].masked_input(
            replace(deliveries[0], sealed=(flipped, *deliveries[0].sealed[1:])), update
        )
    # The share for client 1, handed to client 2 as if for it: sealed to another pair.
    for_one = deliveries[1].sealed[-1]
    moved = replace(for_one, receiver=2)
    others = tuple(s for s in deliveries[2].sealed if s.sender != for_one.sender)
    with pytest.raises(StageError, match="do not decrypt"):
        round_.clients[2].masked_input(replace(deliveries[2], sealed=(*others, moved)), update)


def test_stages_run_in_order_once() -> None:
    round_ = HandRound(params_for(10))
    client = round_.clients[0]
    with pytest.raises(StageError, match="not 'share_keys'"):
        client.share_keys(AdvertisementBundle(()))
    advert = client.advertise()
    with pytest.raises(StageError):
        client.advertise()
    round_.server.receive_advertisement(advert)
    with pytest.raises(StageError, match="twice"):
        round_.server.receive_advertisement(advert)
    with pytest.raises(StageError, match="not 'unmask'"):
        round_.server.finish()
