"""Strict parsing and canonical encoding of the wire messages."""

from __future__ import annotations

import base64

import pytest

from federated.protocol import (
    ERROR_STATUS,
    JoinRequest,
    ProtocolError,
    SignedTask,
    UpdateManifest,
    decode,
    encode_canonical,
    is_project_name,
    is_server_id,
    parse_json,
)
from federated.signing import canonical_json


def manifest(**changes: object) -> dict[str, object]:
    fields: dict[str, object] = {
        "project": "digits",
        "task_id": "t" * 22,
        "client_id": "c" * 22,
        "base_digest": "0" * 64,
        "payload_digest": "1" * 64,
        "codec": "int8",
        "num_examples": 10,
        "metrics": {"loss_after": 0.5},
    }
    fields.update(changes)
    return fields


def refused(raw: bytes, **kw: object) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        decode(raw, UpdateManifest, what="manifest", canonical=True, **kw)  # type: ignore[arg-type]
    return info.value


def test_a_canonical_manifest_round_trips() -> None:
    raw = canonical_json(manifest())
    parsed = decode(raw, UpdateManifest, what="manifest", canonical=True)
    assert parsed.num_examples == 10
    assert encode_canonical(parsed) == raw


def test_a_duplicate_key_is_refused_by_name() -> None:
    raw = canonical_json(manifest()).replace(
        b'"num_examples":10', b'"num_examples":10,"num_examples":100000'
    )
    err = refused(raw)
    assert err.code == "bad_json" and "duplicate key 'num_examples'" in err.message


def test_a_non_canonical_encoding_is_refused() -> None:
    raw = canonical_json(manifest()).replace(b",", b", ")
    err = refused(raw)
    assert err.code == "bad_json" and "canonical" in err.message


def test_an_unknown_field_is_refused_by_name() -> None:
    err = refused(canonical_json(manifest(zz_extra=1)), code="manifest_mismatch")
    assert err.code == "manifest_mismatch" and "zz_extra" in err.message


@pytest.mark.parametrize(
    ("changes", "where"),
    [
        ({"num_examples": 0}, "$.num_examples"),
        ({"num_examples": True}, "$.num_examples"),
        ({"num_examples": "10"}, "$.num_examples"),
        ({"project": "digits\n"}, "$.project"),
        ({"project": "Digits"}, "$.project"),
        ({"task_id": "short"}, "$.task_id"),
        ({"payload_digest": "A" * 64}, "$.payload_digest"),
        ({"metrics": {f"m{i}": 1.0 for i in range(33)}}, "$.metrics"),
        ({"metrics": {"loss": "low"}}, "$.metrics"),
    ],
)
def test_wrong_types_and_ranges_name_the_field(changes: dict[str, object], where: str) -> None:
    err = refused(canonical_json(manifest(**changes)))
    assert err.code == "bad_request" and where in err.message


@pytest.mark.parametrize(
    "raw",
    [b"\xff\xfe", b"[1,2]", b"{", b'{"a":NaN}', b'{"a":1e999}', b'{"a":-Infinity}', b"[" * 100_000],
)
def test_what_two_parsers_could_read_differently_is_bad_json(raw: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_json(raw, what="body")
    assert info.value.code == "bad_json" and info.value.status == 400


def test_join_request_strips_and_bounds_names() -> None:
    key = base64.b64encode(b"k" * 32).decode()
    sig = base64.b64encode(b"s" * 64).decode()
    base = {"public_key": key, "challenge": "c", "signature": sig}
    ok = decode(canonical_json({**base, "display_name": "  Ada  "}), JoinRequest, what="join")
    assert ok.team is None and ok.invite is None
    for bad in (
        {"display_name": "   "},
        {"display_name": "x" * 65},
        {"display_name": "A", "team": "t" * 65},
    ):
        with pytest.raises(ProtocolError) as info:
            decode(canonical_json({**base, **bad}), JoinRequest, what="join")
        assert info.value.code == "bad_request"
    with pytest.raises(ProtocolError, match="unknown field `admin`"):
        decode(
            canonical_json({**base, "display_name": "A", "admin": True}), JoinRequest, what="join"
        )


def test_answers_ignore_fields_a_contributor_does_not_know() -> None:
    task = {
        "task_id": "t" * 22,
        "project": "digits",
        "client_id": "c" * 22,
        "base_version": 0,
        "base_digest": "0" * 64,
        "recipe": "digits-mlp",
        "recipe_version": 1,
        "hparams": {"lr": 0.1},
        "shard_index": 0,
        "max_examples": 10,
        "codec": "int8",
        "max_update_norm": 100.0,
        "max_payload_bytes": 1000,
        "issued_at": 1,
        "deadline": 2,
        "useful_until": 2,
        "added_later": {"anything": True},
    }
    signed = decode(
        canonical_json({"manifest": task, "signature": "A" * 86 + "=="}), SignedTask, what="task"
    )
    assert signed.manifest.max_examples == 10


def test_ids_refuse_a_trailing_newline() -> None:
    assert is_project_name("digits") and not is_project_name("digits\n")
    assert is_server_id("a" * 8) and not is_server_id("a" * 8 + "\n")


def test_protocol_errors_use_only_known_codes() -> None:
    with pytest.raises(ValueError):
        ProtocolError("made_up", "x")
    assert ProtocolError("bad_json", "x").status == ERROR_STATUS["bad_json"] == 400
