"""Encode and decode throughput of every codec on a 10M-parameter state.

Prints a markdown table: GB/s of float32 input, and each time as a multiple of a
numpy copy of the same number of bytes measured in this run (so numbers from
different machines compare). Run: ``.venv/bin/python bench/codec.py``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch

from federated.codec import decode_update, encode_update
from federated.tensors import StateDict, spec_of

CODECS = ["f32", "f16", "int8", "int8-block", "topk:0.1", "topk:0.01"]


def make_state(params: int, seed: int = 0) -> StateDict:
    """A transformer-ish mix of big matrices and small vectors with ``params`` entries."""
    generator = torch.Generator().manual_seed(seed)
    width = 1024
    state: StateDict = {}
    layers = max(1, params // (2 * width * width + width))
    for i in range(layers):
        state[f"layer{i}.weight"] = torch.randn(2 * width, width, generator=generator) * 0.01
        state[f"layer{i}.bias"] = torch.randn(width, generator=generator) * 0.01
    used = sum(t.numel() for t in state.values())
    if params > used:
        state["head.weight"] = torch.randn(params - used, generator=generator) * 0.01
    return state


def best_of(repeats: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeats`` runs after one warm-up: the least disturbed measurement."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    state = make_state(args.params)
    spec = spec_of(state)
    nbytes = sum(t.numel() for t in state.values()) * 4
    flat = np.concatenate([t.numpy().reshape(-1) for t in state.values()])
    copy_s = best_of(args.repeats, flat.copy)

    print(
        f"{nbytes / 4 / 1e6:.1f}M parameters ({nbytes / 2**20:.0f} MiB f32), "
        f"torch threads {torch.get_num_threads()}, numpy copy {copy_s * 1e3:.1f} ms "
        f"({nbytes / copy_s / 1e9:.1f} GB/s)\n"
    )
    print("| codec | payload / f32 | encode GB/s | encode / copy | decode GB/s | decode / copy |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for codec in CODECS:
        payload = encode_update(state, codec).payload
        encode_s = best_of(args.repeats, lambda codec=codec: encode_update(state, codec))
        decode_s = best_of(args.repeats, lambda payload=payload: decode_update(payload, spec))
        print(
            f"| {codec} | {len(payload) / nbytes:.3f} | {nbytes / encode_s / 1e9:.2f} "
            f"| {encode_s / copy_s:.1f}x | {nbytes / decode_s / 1e9:.2f} "
            f"| {decode_s / copy_s:.1f}x |"
        )


if __name__ == "__main__":
    main()
