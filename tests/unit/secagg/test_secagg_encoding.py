"""Encoding: public-scale quantisation, rings mod 2^w with headroom, bit packing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from federated.secagg import encoding
from federated.secagg.encoding import FixedPointCodec

SHAPES = {"b": (3,), "a": (4, 5)}


@pytest.mark.parametrize("bits", [8, 9, 12, 15, 16, 21, 31, 32])
@pytest.mark.parametrize("count", [1, 7, 8, 1000, (1 << 18) + 3])
def test_pack_round_trips(bits: int, count: int) -> None:
    rng = np.random.default_rng(bits * 7919 + count)
    values = rng.integers(0, 1 << bits, size=count, dtype=np.uint64).astype(np.uint32)
    data = encoding.pack(values, bits)
    assert len(data) == encoding.packed_size(count, bits) == -(-count * bits // 8)
    assert np.array_equal(encoding.unpack(data, bits, count), values)


def test_unpack_refuses_wrong_length_and_padding() -> None:
    data = encoding.pack(np.array([1, 2, 3], dtype=np.uint32), 12)
    with pytest.raises(ValueError, match="expected 5"):
        encoding.unpack(data + b"\0", 12, 3)
    padded = data[:-1] + bytes([data[-1] | 0x80])
    with pytest.raises(ValueError, match="padding bits"):
        encoding.unpack(padded, 12, 3)


def test_ring_headroom() -> None:
    assert encoding.ring_bits_for(10) == 12  # 2541 values
    assert encoding.ring_bits_for(100) == 15  # 25401 values
    assert encoding.ring_bits_for(encoding.MAX_CONTRIBUTORS) == 32
    assert encoding.ring_capacity(32) >= encoding.MAX_CONTRIBUTORS
    for n in (3, 10, 50, 100, 258, 259, 10_000, 2**20):
        bits = encoding.ring_bits_for(n)
        assert encoding.ring_capacity(bits) >= n > encoding.ring_capacity(bits - 1) or bits == 8
    with pytest.raises(ValueError, match="2\\^24"):
        encoding.ring_bits_for(encoding.MAX_CONTRIBUTORS + 1)


def test_ring_sums_of_extreme_inputs_decode_exactly() -> None:
    n, bits = 100, encoding.ring_bits_for(100)
    for extreme in (127, -127):
        total = np.zeros(4, dtype=np.uint32)
        for _ in range(n):
            total += encoding.to_ring(np.full(4, extreme), bits)
        assert np.all(encoding.from_ring(total, bits) == n * extreme)


def test_quantize_is_within_one_step_and_unbiased() -> None:
    codec = FixedPointCodec(clip_norm=10.0, entry_bound=0.5)
    gen = torch.Generator().manual_seed(1)
    update = {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in SHAPES.items()}
    flat = np.concatenate([update[k].reshape(-1).double().numpy() for k in sorted(SHAPES)])
    draws = np.stack([codec.quantize(update, SHAPES, np.random.default_rng(s)) for s in range(400)])
    assert draws.min() >= -127 and draws.max() <= 127
    assert np.all(np.abs(draws * codec.scale - flat) < codec.scale)
    # Unbiased: the mean of 400 draws is within 4 standard errors (<= scale / 2 / 20).
    assert np.all(np.abs(draws.mean(axis=0) * codec.scale - flat) < 4 * codec.scale / 40)
    nearest = codec.quantize(update, SHAPES, None)
    assert np.all(np.abs(nearest * codec.scale - flat) <= codec.scale / 2 + 1e-12)


def test_quantize_clips_to_the_public_norm_and_entry_bound() -> None:
    codec = FixedPointCodec(clip_norm=1.0, entry_bound=1.0)
    update = {"a": torch.full((4, 5), 3.0), "b": torch.zeros(3)}
    q = codec.quantize(update, SHAPES, None)
    assert np.linalg.norm(q * codec.scale) == pytest.approx(1.0, abs=0.05)
    tight = FixedPointCodec(clip_norm=10.0, entry_bound=0.2)
    spike = {"a": torch.zeros(4, 5), "b": torch.tensor([5.0, -5.0, 0.1])}
    assert list(tight.quantize(spike, SHAPES, None)[20:]) == [127, -127, 64]


def test_quantize_refuses_a_different_layout_or_non_finite_values() -> None:
    codec = FixedPointCodec(clip_norm=1.0, entry_bound=1.0)
    with pytest.raises(ValueError, match="names or shapes"):
        codec.quantize({"a": torch.zeros(4, 5)}, SHAPES, None)
    with pytest.raises(ValueError, match="NaN"):
        codec.quantize(
            {"a": torch.zeros(4, 5), "b": torch.tensor([0.0, float("nan"), 0])}, SHAPES, None
        )


def test_dequantize_lays_entries_out_by_sorted_name() -> None:
    codec = FixedPointCodec(clip_norm=127.0, entry_bound=127.0)  # scale 1
    values = np.arange(23)
    out = codec.dequantize(values, SHAPES)
    assert out["a"].shape == (4, 5) and out["a"][0, 0] == 0 and out["b"][0] == 20
    with pytest.raises(ValueError, match="24 values"):
        codec.dequantize(np.arange(24), SHAPES)


@pytest.mark.parametrize(("clip", "bound"), [(0.0, 0.0), (1.0, 2.0), (float("nan"), 1.0)])
def test_codec_refuses_bad_bounds(clip: float, bound: float) -> None:
    with pytest.raises(ValueError):
        FixedPointCodec(clip_norm=clip, entry_bound=bound)


def test_layout_digest_tells_layouts_apart() -> None:
    assert encoding.layout_digest(SHAPES) == encoding.layout_digest(dict(reversed(SHAPES.items())))
    assert encoding.layout_digest(SHAPES) != encoding.layout_digest({"a": (5, 4), "b": (3,)})


@pytest.mark.parametrize("bits", [10, 13, 15, 23, 29])
def test_packing_is_the_plain_lsb_first_bit_stream(bits: int) -> None:
    """Entry e holds bits [e*w, e*w + w) of the stream, each byte's lowest bit first."""
    values = np.random.default_rng(bits).integers(0, 1 << bits, size=1001).astype(np.uint32)
    stream = np.unpackbits(
        values.astype("<u4").view(np.uint8).reshape(-1, 4), axis=1, bitorder="little"
    )
    reference = np.packbits(stream[:, :bits].reshape(-1), bitorder="little").tobytes()
    assert encoding.pack(values, bits) == reference
