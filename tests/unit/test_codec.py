"""Round trips, error bounds, determinism and every rejection of federated.codec."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from federated.codec import (
    INT8_BLOCK_SIZE,
    MODEL_FORMAT,
    UPDATE_FORMAT,
    ErrorFeedback,
    canonical_codec,
    decode_model,
    decode_update,
    encode_model,
    encode_update,
    sha256_hex,
    topk_count,
)
from federated.errors import UpdateRejected
from federated.tensors import l2_norm, spec_of

REPO = Path(__file__).resolve().parents[2]

# ----------------------------------------------------------------------------- helpers

shapes = st.sampled_from([(), (1,), (7,), (3, 5), (2, 3, 4), (300,), (2, 257), (0, 3)])
finite_f32 = st.floats(
    min_value=-1e4, max_value=1e4, width=32, allow_nan=False, allow_subnormal=False
)


@st.composite
def states(draw: st.DrawFn) -> dict[str, torch.Tensor]:
    names = draw(
        st.lists(
            st.sampled_from(["w", "b", "fc.weight", "fc.bias"]), min_size=1, max_size=3, unique=True
        )
    )
    state = {}
    for name in names:
        arr = draw(hnp.arrays(np.float32, draw(shapes), elements=finite_f32))
        state[name] = torch.from_numpy(arr.copy())
    return state


def stored_parts(payload: bytes) -> dict[str, torch.Tensor]:
    """The payload's parts as safetensors itself reads them (an independent reader)."""
    return safetensors.torch.load(payload)


def craft(parts: dict[str, torch.Tensor], codec: str, shapes_: dict[str, tuple[int, ...]]) -> bytes:
    """A payload written by hand, to reach checks the encoder never fails."""
    meta = {name: {"shape": list(shape)} for name, shape in shapes_.items()}
    return safetensors.torch.save(
        parts, metadata={"format": UPDATE_FORMAT, "codec": codec, "tensors": json.dumps(meta)}
    )


def rejected(payload: bytes, spec: dict, **kwargs: object) -> UpdateRejected:
    with pytest.raises(UpdateRejected) as info:
        decode_update(payload, spec, **kwargs)  # type: ignore[arg-type]
    return info.value


MODEL = {"fc1.weight": torch.randn(64, 32), "fc1.bias": torch.randn(64)}
SPEC = spec_of(MODEL)

# ----------------------------------------------------------------------------- round trips


@settings(max_examples=60, deadline=None)
@given(states())
def test_f32_round_trip_is_exact(state: dict[str, torch.Tensor]) -> None:
    decoded = decode_update(encode_update(state, "f32").payload, spec_of(state))
    for name, tensor in state.items():
        assert decoded[name].dtype == torch.float32
        assert torch.equal(decoded[name], tensor)


@settings(max_examples=60, deadline=None)
@given(states())
def test_f16_round_trip_is_f16_rounding(state: dict[str, torch.Tensor]) -> None:
    decoded = decode_update(encode_update(state, "f16").payload, spec_of(state))
    for name, tensor in state.items():
        assert torch.equal(decoded[name], tensor.half().float())
        # f16 has 11 significant bits: relative error <= 2**-11 above its normal range
        assert torch.all((decoded[name] - tensor).abs() <= tensor.abs() * 2**-11 + 2**-24)


@settings(max_examples=60, deadline=None)
@given(states())
def test_int8_error_is_at_most_half_a_step(state: dict[str, torch.Tensor]) -> None:
    decoded = decode_update(encode_update(state, "int8").payload, spec_of(state))
    for name, tensor in state.items():
        if tensor.numel() == 0:
            continue
        scale = float(tensor.abs().max()) / 127
        error = (decoded[name] - tensor).abs()
        assert float(error.max()) <= scale / 2 * (1 + 1e-5) + 1e-30


@settings(max_examples=60, deadline=None)
@given(states())
def test_int8_block_error_is_at_most_half_its_blocks_step(state: dict[str, torch.Tensor]) -> None:
    decoded = decode_update(encode_update(state, "int8-block").payload, spec_of(state))
    for name, tensor in state.items():
        flat, error = tensor.reshape(-1), (decoded[name] - tensor).reshape(-1).abs()
        for start in range(0, flat.numel(), INT8_BLOCK_SIZE):
            block = slice(start, start + INT8_BLOCK_SIZE)
            scale = float(flat[block].abs().max()) / 127
            assert float(error[block].max()) <= scale / 2 * (1 + 1e-5) + 1e-30


@settings(max_examples=60, deadline=None)
@given(states(), st.sampled_from([0.01, 0.1, 0.5, 1.0]))
def test_topk_keeps_the_largest_exactly_and_zeroes_the_rest(
    state: dict[str, torch.Tensor], fraction: float
) -> None:
    encoded = encode_update(state, f"topk:{fraction}")
    decoded = decode_update(encoded.payload, spec_of(state))
    parts = stored_parts(encoded.payload)
    for name, tensor in state.items():
        flat, out = tensor.reshape(-1), decoded[name].reshape(-1)
        kept = parts[f"{name}::indices"].long()
        assert kept.numel() == topk_count(flat.numel(), fraction)
        assert torch.equal(out[kept], flat[kept])
        dropped = torch.ones(flat.numel(), dtype=torch.bool)
        dropped[kept] = False
        assert torch.all(out[dropped] == 0)
        if kept.numel() and dropped.any():
            assert float(flat[kept].abs().min()) >= float(flat[dropped].abs().max())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["int8", "int8-block", "topk:0.1", "topk:0.3", "f16", "f32"]),
    st.integers(2, 6),
    st.integers(0, 2**31 - 1),
)
def test_error_feedback_loses_nothing_over_rounds(codec: str, rounds: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    feedback = ErrorFeedback()
    sent = {"w": torch.zeros(40, 13, dtype=torch.float64), "b": torch.zeros(9, dtype=torch.float64)}
    total = {name: torch.zeros_like(t) for name, t in sent.items()}
    for _ in range(rounds):
        delta = {name: torch.randn(t.shape, generator=generator) for name, t in sent.items()}
        payload = encode_update(delta, codec, feedback=feedback).payload
        decoded = decode_update(payload, spec_of(delta))
        for name in sent:
            sent[name] += decoded[name].double()
            total[name] += delta[name].double()
    residual = feedback.residuals
    for name in sent:
        left = residual[name].double() if name in residual else 0.0
        assert torch.allclose(sent[name] + left, total[name], atol=1e-4, rtol=0)


def test_error_feedback_carries_what_topk_dropped_into_the_next_update() -> None:
    feedback = ErrorFeedback()
    first = {"w": torch.tensor([4.0, 1.0, 0.5, 0.25])}
    decoded = decode_update(
        encode_update(first, "topk:0.25", feedback=feedback).payload, spec_of(first)
    )
    assert decoded["w"].tolist() == [4.0, 0.0, 0.0, 0.0]
    assert feedback.residuals["w"].tolist() == [0.0, 1.0, 0.5, 0.25]
    second = {"w": torch.tensor([0.0, 0.0, 0.0, 0.0])}
    decoded = decode_update(
        encode_update(second, "topk:0.25", feedback=feedback).payload, spec_of(second)
    )
    assert decoded["w"].tolist() == [0.0, 1.0, 0.0, 0.0]


def test_error_feedback_survives_a_restart_and_is_untouched_by_a_failed_encode() -> None:
    feedback = ErrorFeedback()
    encode_update({"w": torch.randn(100)}, "int8", feedback=feedback)
    restored = ErrorFeedback.from_bytes(feedback.to_bytes())
    assert torch.equal(restored.residuals["w"], feedback.residuals["w"])
    before = feedback.residuals["w"].clone()
    with pytest.raises(ValueError, match="NaN"):
        encode_update(
            {"w": torch.randn(100), "x": torch.tensor([math.nan])}, "int8", feedback=feedback
        )
    assert torch.equal(feedback.residuals["w"], before)
    with pytest.raises(ValueError, match="reset"):
        encode_update({"w": torch.randn(3)}, "int8", feedback=feedback)


# ----------------------------------------------------------------------------- format


def test_payload_records_format_codec_and_shapes_and_digest() -> None:
    encoded = encode_update(MODEL, "topk:0.10")
    assert encoded.codec == "topk:0.1" == canonical_codec("topk:1e-1")
    assert encoded.digest == sha256_hex(encoded.payload)
    header_len = int.from_bytes(encoded.payload[:8], "little")
    header = json.loads(encoded.payload[8 : 8 + header_len])
    meta = header["__metadata__"]
    assert meta["format"] == UPDATE_FORMAT and meta["codec"] == "topk:0.1"
    assert json.loads(meta["tensors"]) == {
        "fc1.bias": {"shape": [64]},
        "fc1.weight": {"shape": [64, 32]},
    }
    assert set(header) - {"__metadata__"} == {
        "fc1.bias::indices",
        "fc1.bias::values",
        "fc1.weight::indices",
        "fc1.weight::values",
    }


def test_own_reader_agrees_with_safetensors() -> None:
    for codec in ["f32", "f16", "int8", "int8-block", "topk:0.2"]:
        payload = encode_update(MODEL, codec).payload
        parts = stored_parts(payload)
        assert all(t.is_contiguous() for t in parts.values())
    decoded = decode_update(encode_update(MODEL, "f32").payload, SPEC)
    for name, tensor in stored_parts(encode_update(MODEL, "f32").payload).items():
        assert torch.equal(decoded[name.removesuffix("::values")], tensor)


def test_decoded_tensors_are_writable_and_independent_of_the_payload() -> None:
    payload = encode_update(MODEL, "f32").payload
    decoded = decode_update(payload, SPEC)
    decoded["fc1.bias"].add_(1.0)
    assert torch.equal(decode_update(payload, SPEC)["fc1.bias"], MODEL["fc1.bias"])


def test_encoding_is_deterministic_across_processes() -> None:
    # safetensors orders its metadata by a per-process hash; the codec must not.
    script = (
        "import torch; from federated.codec import encode_update, encode_model;"
        "g = torch.Generator().manual_seed(3);"
        "s = {'b': torch.randn(5, generator=g), 'a': torch.randn(4, 3, generator=g)};"
        "print(encode_update(s, 'int8').digest, encode_update(s, 'topk:0.5').digest,"
        " __import__('hashlib').sha256(encode_model(s)).hexdigest())"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout
        for _ in range(4)
    }
    assert len(outputs) == 1


def test_int8_payload_is_about_a_quarter_of_f32() -> None:
    model = {
        "fc1.weight": torch.randn(128, 640),
        "fc1.bias": torch.randn(128),
        "fc2.weight": torch.randn(144, 128),
        "fc2.bias": torch.randn(144),
    }
    assert 99_000 < sum(t.numel() for t in model.values()) < 101_000
    f32 = len(encode_update(model, "f32").payload)
    assert len(encode_update(model, "int8").payload) <= 0.26 * f32
    assert len(encode_update(model, "int8-block").payload) <= 0.26 * f32


def test_encode_refuses_what_it_cannot_encode_faithfully() -> None:
    with pytest.raises(ValueError, match="unknown codec"):
        encode_update(MODEL, "zip")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        encode_update(MODEL, "topk:0")
    with pytest.raises(ValueError, match="reserves"):
        encode_update({"a::scale": torch.ones(2)}, "f32")
    with pytest.raises(ValueError, match="NaN"):
        encode_update({"a": torch.tensor([1.0, math.inf])}, "f32")
    with pytest.raises(ValueError, match="float16"):
        encode_update({"a": torch.tensor([1e6])}, "f16")


def test_model_round_trip_is_exact_and_deterministic() -> None:
    state = {"z": torch.randn(3, 4), "a": torch.randn(2).double(), "m": torch.arange(3)}
    payload = encode_model(state)
    assert payload == encode_model(dict(reversed(list(state.items()))))
    decoded = decode_model(payload, spec_of({k: v.float() for k, v in state.items()}))
    assert list(decoded) == ["a", "m", "z"]
    for name, tensor in state.items():
        assert torch.equal(decoded[name], tensor.float())


def test_decode_model_rejects_what_does_not_fit() -> None:
    payload = encode_model(MODEL)
    with pytest.raises(UpdateRejected) as info:
        decode_model(payload, spec_of({"fc1.weight": torch.zeros(64, 32)}))
    assert info.value.code == "unknown_tensor"
    with pytest.raises(UpdateRejected) as info:
        decode_model(payload, spec_of({**MODEL, "fc1.weight": torch.zeros(10, 3)}))
    assert info.value.code == "shape_mismatch"
    half = safetensors.torch.save({"w": torch.ones(2).half()}, metadata={"format": MODEL_FORMAT})
    with pytest.raises(UpdateRejected) as info:
        decode_model(half)
    assert info.value.code == "dtype_mismatch"
    nan = safetensors.torch.save({"w": torch.tensor([math.nan])}, metadata={"format": MODEL_FORMAT})
    with pytest.raises(UpdateRejected) as info:
        decode_model(nan)
    assert info.value.code == "non_finite"
    with pytest.raises(UpdateRejected) as info:
        decode_model(encode_update(MODEL, "f32").payload)
    assert info.value.code == "bad_payload"


# ----------------------------------------------------------------------------- rejections


def test_rejects_garbage_as_bad_payload() -> None:
    error = rejected(b"not a safetensors file at all", SPEC)
    assert error.code == "bad_payload"


def test_rejects_an_impossible_header_length_without_reading_it() -> None:
    payload = (2**62).to_bytes(8, "little") + b"{}"
    assert rejected(payload, SPEC).code == "bad_payload"


def test_rejects_unknown_codec() -> None:
    parts = {"fc1.weight::values": MODEL["fc1.weight"], "fc1.bias::values": MODEL["fc1.bias"]}
    payload = craft(parts, "zip", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    assert rejected(payload, SPEC).code == "unknown_codec"


def test_rejects_a_codec_other_than_the_tasks() -> None:
    payload = encode_update(MODEL, "f32").payload
    error = rejected(payload, SPEC, expected_codec="int8")
    assert error.code == "unknown_codec"
    assert "'int8'" in str(error) and "'f32'" in str(error)
    decode_update(encode_update(MODEL, "topk:0.1").payload, SPEC, expected_codec="topk:0.10")


def test_rejects_unknown_tensor() -> None:
    payload = encode_update({**MODEL, "fc9.weight": torch.ones(2)}, "int8").payload
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("unknown_tensor", "fc9.weight")
    assert "'fc9.weight'" in str(error)


def test_rejects_missing_tensor() -> None:
    payload = encode_update({"fc1.weight": MODEL["fc1.weight"]}, "int8").payload
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("missing_tensor", "fc1.bias")


def test_rejects_shape_mismatch_naming_tensor_and_shapes() -> None:
    payload = encode_update({**MODEL, "fc1.weight": torch.randn(10, 3)}, "f32").payload
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("shape_mismatch", "fc1.weight")
    assert str(error) == "tensor 'fc1.weight': shape (10, 3) does not match the model's (64, 32)"


def test_rejects_a_topk_shape_claim_without_allocating_it() -> None:
    parts = {
        "fc1.weight::indices": torch.tensor([0], dtype=torch.int64),
        "fc1.weight::values": torch.tensor([1.0]),
        "fc1.bias::indices": torch.tensor([0], dtype=torch.int32),
        "fc1.bias::values": torch.tensor([1.0]),
    }
    payload = craft(parts, "topk:0.1", {"fc1.weight": (10**6, 10**6), "fc1.bias": (64,)})
    assert rejected(payload, SPEC).code == "shape_mismatch"


def test_rejects_a_part_with_the_wrong_shape() -> None:
    parts = {
        "fc1.weight::q": torch.zeros(64, 32, dtype=torch.int8),
        "fc1.weight::scale": torch.ones(3),
        "fc1.bias::q": torch.zeros(64, dtype=torch.int8),
        "fc1.bias::scale": torch.ones(()),
    }
    payload = craft(parts, "int8", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("shape_mismatch", "fc1.weight")
    assert "'scale'" in str(error)


def test_rejects_dtype_mismatch() -> None:
    parts = {
        "fc1.weight::values": MODEL["fc1.weight"].half(),
        "fc1.bias::values": MODEL["fc1.bias"],
    }
    payload = craft(parts, "f32", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("dtype_mismatch", "fc1.weight")
    assert "F16" in str(error) and "F32" in str(error)


def test_rejects_non_finite() -> None:
    weight = MODEL["fc1.weight"].clone()
    weight[3, 4] = math.nan
    parts = {"fc1.weight::values": weight, "fc1.bias::values": MODEL["fc1.bias"]}
    payload = craft(parts, "f32", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    error = rejected(payload, SPEC)
    assert (error.code, error.tensor) == ("non_finite", "fc1.weight")
    assert "1 of 2048" in str(error)


def test_rejects_int8_scale_that_decodes_to_infinity() -> None:
    parts = {
        "fc1.weight::q": torch.full((64, 32), 127, dtype=torch.int8),
        "fc1.weight::scale": torch.tensor(3e38),
        "fc1.bias::q": torch.zeros(64, dtype=torch.int8),
        "fc1.bias::scale": torch.tensor(0.0),
    }
    payload = craft(parts, "int8", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    assert rejected(payload, SPEC).code == "non_finite"


def test_rejects_norm_too_large() -> None:
    payload = encode_update(MODEL, "f32").payload
    norm = l2_norm(MODEL)
    error = rejected(payload, SPEC, max_norm=norm * 0.99)
    assert error.code == "norm_too_large"
    assert f"{norm:.6g}" in str(error)
    decode_update(payload, SPEC, max_norm=norm * 1.0001)


@pytest.mark.parametrize(
    "indices",
    [[0, 64], [-1, 3], [5, 5], [7, 2]],
    ids=["past-end", "negative", "duplicate", "decreasing"],
)
def test_rejects_topk_indices_out_of_range_or_out_of_order(indices: list[int]) -> None:
    spec = spec_of({"b": torch.zeros(64)})
    parts = {"b::indices": torch.tensor(indices, dtype=torch.int32), "b::values": torch.ones(2)}
    payload = craft(parts, "topk:0.03", {"b": (64,)})
    error = rejected(payload, spec)
    assert (error.code, error.tensor) == ("bad_payload", "b")


def test_rejects_a_part_the_codec_does_not_have() -> None:
    parts = {
        "fc1.weight::values": MODEL["fc1.weight"],
        "fc1.weight::scale": torch.ones(()),
        "fc1.bias::values": MODEL["fc1.bias"],
    }
    payload = craft(parts, "f32", {"fc1.weight": (64, 32), "fc1.bias": (64,)})
    assert rejected(payload, SPEC).code == "bad_payload"


# ----------------------------------------------------------------------------- fuzzing


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_are_only_ever_rejected(data: bytes) -> None:
    with pytest.raises(UpdateRejected):
        decode_update(data, SPEC)
    with pytest.raises(UpdateRejected):
        decode_model(data, SPEC)


SMALL = {"w": torch.randn(3, 4), "b": torch.randn(4)}
SMALL_PAYLOADS = {c: encode_update(SMALL, c).payload for c in ["f32", "int8-block", "topk:0.5"]}


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(sorted(SMALL_PAYLOADS)),
    st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4),
    st.integers(0, 10_000),
)
def test_corrupted_payloads_decode_or_are_rejected_nothing_else(
    codec: str, edits: list[tuple[int, int]], cut: int
) -> None:
    data = bytearray(SMALL_PAYLOADS[codec])
    for position, value in edits:
        data[position % len(data)] = value
    for candidate in (bytes(data), bytes(data[: cut % (len(data) + 1)])):
        try:
            decoded = decode_update(candidate, spec_of(SMALL))
        except UpdateRejected:
            continue
        assert {name: t.shape for name, t in decoded.items()} == {
            name: t.shape for name, t in SMALL.items()
        }
        assert all(bool(torch.isfinite(t).all()) for t in decoded.values())


# --- zstd framing ("<codec>+zstd") -------------------------------------------------------------


@pytest.mark.parametrize("codec", ["f32+zstd", "int8+zstd", "topk:0.25+zstd"])
def test_zstd_framing_round_trips_like_its_inner_codec(codec: str) -> None:
    generator = torch.Generator().manual_seed(1)
    delta = {"w": torch.randn(64, 32, generator=generator) * 0.01, "b": torch.zeros(32)}
    framed = encode_update(delta, codec)
    plain = encode_update(delta, codec.removesuffix("+zstd"))
    assert framed.payload[:4] == b"\x28\xb5\x2f\xfd" and framed.codec == codec
    decoded = decode_update(framed.payload, spec_of(delta), expected_codec=codec)
    reference = decode_update(plain.payload, spec_of(delta))
    assert all(torch.equal(decoded[k], reference[k]) for k in delta)


def test_zstd_bomb_and_frame_mismatch_are_rejected() -> None:
    import zstandard

    spec = {"w": ((4,), torch.float32)}
    bomb = zstandard.ZstdCompressor(write_content_size=True).compress(b"\x00" * (64 * 1024 * 1024))
    assert rejected(bomb, spec).code == "bad_payload"
    assert "inflate" in str(rejected(bomb, spec))
    plain_labelled_zstd = encode_update({"w": torch.ones(4)}, "f32+zstd").payload
    inner = zstandard.ZstdDecompressor().decompress(plain_labelled_zstd)
    err = rejected(inner, spec)  # says +zstd inside but arrives uncompressed
    assert err.code == "bad_payload" and "zstd" in str(err)
    assert rejected(b"\x28\xb5\x2f\xfd" + b"junk" * 4, spec).code == "bad_payload"
