"""The server's checks: who may send at each stage, and what it accepts from them."""

from __future__ import annotations

from dataclasses import replace

import pytest
from secagg_helpers import SHAPES, HandRound, params_for, random_updates

from federated.secagg import SecAggAbort, SecAggServer, StageError
from federated.secagg.messages import MaskedInput, RevealedShare, ShareUpload, UnmaskResponse


def shared_round(n: int = 10) -> tuple[HandRound, dict[int, MaskedInput]]:
    """A round through stage 3, every client's masked input made but not yet received."""
    round_ = HandRound(params_for(n))
    bundles = round_.advertise()
    for i, client in round_.clients.items():
        round_.server.receive_shares(client.share_keys(bundles[i]))
    deliveries = round_.server.close_sharing()
    update = random_updates(1)[0]
    masked = {i: c.masked_input(deliveries[i], update) for i, c in round_.clients.items()}
    return round_, masked


def test_server_refuses_a_layout_or_roster_that_does_not_fit() -> None:
    params = params_for(10)
    with pytest.raises(ValueError, match="layout digest"):
        SecAggServer(params=params, roster={i: bytes(32) for i in range(10)}, shapes={"x": (3,)})
    with pytest.raises(ValueError, match="every client"):
        SecAggServer(params=params, roster={i: bytes(32) for i in range(9)}, shapes=SHAPES)


def test_shares_only_from_advertisers_for_their_neighbours() -> None:
    round_ = HandRound(params_for(10))
    bundles = {}
    for i, client in round_.clients.items():
        if i != 9:
            round_.server.receive_advertisement(client.advertise())
    bundles = round_.server.close_advertising()
    upload = round_.clients[0].share_keys(bundles[0])
    assert {s.receiver for s in upload.sealed} == set(range(1, 9))
    with pytest.raises(StageError, match="may not send"):
        round_.server.receive_shares(replace(upload, sender=9))
    misrouted = replace(upload, sealed=(replace(upload.sealed[0], receiver=9),))
    with pytest.raises(StageError, match="only its own"):
        round_.server.receive_shares(misrouted)
    doubled = ShareUpload(0, (upload.sealed[0], upload.sealed[0]))
    with pytest.raises(StageError, match="two sealings"):
        round_.server.receive_shares(doubled)
    round_.server.receive_shares(upload)
    with pytest.raises(StageError, match="twice"):
        round_.server.receive_shares(upload)


def test_masked_inputs_are_checked_before_they_are_summed() -> None:
    round_, masked = shared_round()
    with pytest.raises(StageError, match="bytes for"):
        round_.server.receive_masked_input(replace(masked[0], data=masked[0].data[:-1]))
    round_.server.receive_masked_input(masked[0])
    with pytest.raises(StageError, match="twice"):
        round_.server.receive_masked_input(masked[0])


def test_unmask_responses_must_answer_what_was_asked() -> None:
    round_, masked = shared_round()
    for i in range(9):
        round_.server.receive_masked_input(masked[i])
    requests = round_.server.close_masking()
    answer = round_.clients[0].unmask(requests[0])
    assert {s.owner for s in answer.revealed if s.kind == 1} == {9}  # 9 never sent an input
    with pytest.raises(StageError, match="not what was asked"):
        round_.server.receive_unmask(replace(answer, revealed=answer.revealed[1:]))
    with pytest.raises(StageError, match="may not send"):
        round_.server.receive_unmask(UnmaskResponse(9, ()))


def test_a_wrong_share_of_a_mask_key_is_caught() -> None:
    """The rebuilt s key must match the one advertised, or the sum would be garbage."""
    round_, masked = shared_round()
    for i in range(9):
        round_.server.receive_masked_input(masked[i])
    requests = round_.server.close_masking()
    for i in range(9):  # client 0 lies about 9's key; its share is among the first t used
        answer = round_.clients[i].unmask(requests[i])
        if i == 0:
            fixed = tuple(
                RevealedShare(s.owner, s.kind, bytes(len(s.values))) if s.kind == 1 else s
                for s in answer.revealed
            )
            answer = replace(answer, revealed=fixed)
        round_.server.receive_unmask(answer)
    # Either the rebuilt key is not the advertised one, or a chunk overflows 16 bytes.
    with pytest.raises(SecAggAbort, match="client 9's mask key") as caught:
        round_.server.finish()
    assert caught.value.reason == "inconsistent_shares"


def test_an_update_of_the_wrong_layout_is_refused_and_can_be_retried() -> None:
    round_ = HandRound(params_for(10))
    bundles = round_.advertise()
    for i, client in round_.clients.items():
        round_.server.receive_shares(client.share_keys(bundles[i]))
    deliveries = round_.server.close_sharing()
    client, update = round_.clients[0], random_updates(1)[0]
    with pytest.raises(ValueError, match="layout"):
        client.masked_input(deliveries[0], {"fc1.weight": update["fc1.weight"]})
    bad = {**update, "fc1.bias": update["fc1.bias"] * float("nan")}
    with pytest.raises(ValueError, match="NaN"):
        client.masked_input(deliveries[0], bad)
    assert client.masked_input(deliveries[0], update).sender == 0
