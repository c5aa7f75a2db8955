"""FedAvg aggregation speed and memory: 32 streamed updates of a 10M-parameter float32 model.

    .venv/bin/python bench/aggregate.py [--updates 32] [--params 10000000]

Prints a markdown table:

- throughput of ``FedAvg().aggregate`` in GB/s of update bytes consumed, updates held in
  memory (a pool of 4 distinct updates, generated before timing, yielded lazily 32 times),
  and as a ratio to a numpy copy of the same bytes measured in the same run;
- the same fed from memory-mapped safetensors files in a fresh subprocess (what the
  coordinator does with stored updates), with the peak extra memory during aggregation as
  a multiple of one model's size: anonymous RSS (the process's own memory) sampled every
  millisecond in a thread, and total RSS (which also counts mapped file pages, page cache
  the kernel can drop);
- for comparison, the same weighted sum with a float64 accumulator (not what FedAvg does).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import torch
from safetensors import safe_open
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federated.strategies import FedAvg
from federated.tensors import ClientUpdate, StateDict

POOL = 4
REPEATS = 5
SAMPLE_INTERVAL_S = 0.001


def model_shapes(params: int) -> dict[str, tuple[int, ...]]:
    """A few tensors of realistic shapes totalling exactly ``params`` elements."""
    embed = (params * 6 // 10) // 1024
    hidden = (params * 3 // 10) // 1024
    shapes: dict[str, tuple[int, ...]] = {
        "embed.weight": (embed, 1024),
        "hidden.weight": (hidden, 1024),
        "hidden.bias": (hidden,),
    }
    used = sum(math.prod(s) for s in shapes.values())
    shapes["head.weight"] = (params - used,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int) -> StateDict:
    gen = torch.Generator().manual_seed(seed)
    return {name: torch.randn(shape, generator=gen) for name, shape in shapes.items()}


def model_bytes(state: StateDict) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def best_interleaved(runs: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Best time of each run over ``repeats`` rounds, the runs alternating within a round so
    that a burst of load from other processes hits them alike."""
    best = dict.fromkeys(runs, math.inf)
    for _ in range(repeats):
        for name, run in runs.items():
            best[name] = min(best[name], timed(run))
    return best


def in_memory_stream(pool: list[StateDict], count: int) -> Iterator[ClientUpdate]:
    for i in range(count):
        yield ClientUpdate(delta=pool[i % len(pool)], num_examples=100 + i)


def numpy_copy_run(pool: list[StateDict], count: int) -> Callable[[], None]:
    sources = [np.concatenate([t.reshape(-1).numpy() for t in d.values()]) for d in pool]
    target = np.empty_like(sources[0])

    def copy_all() -> None:
        for i in range(count):
            np.copyto(target, sources[i % len(sources)])

    return copy_all


def float64_sum_run(base: StateDict, pool: list[StateDict], count: int) -> Callable[[], None]:
    def run() -> None:
        acc = {name: torch.zeros(t.shape, dtype=torch.float64) for name, t in base.items()}
        for update in in_memory_stream(pool, count):
            for name, t in update.delta.items():
                acc[name].add_(t, alpha=update.weight)

    return run


# --- the subprocess: mmap-fed aggregation with memory sampling ----------------------------


def read_rss() -> tuple[int, int]:
    """(anonymous RSS, total RSS) of this process in bytes."""
    anon = 0
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                anon = int(line.split()[1]) * 1024
    return anon, psutil.Process().memory_info().rss


class PeakSampler(threading.Thread):
    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak_anon, self.peak_total = read_rss()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            anon, total = read_rss()
            self.peak_anon = max(self.peak_anon, anon)
            self.peak_total = max(self.peak_total, total)
            time.sleep(SAMPLE_INTERVAL_S)


def child(folder: Path, count: int) -> None:
    base = {k: t.clone() for k, t in _load(folder / "base.safetensors").items()}
    size = model_bytes(base)
    files = sorted(folder.glob("update-*.safetensors"))

    def stream() -> Iterator[ClientUpdate]:
        for i in range(count):
            with safe_open(files[i % len(files)], framework="pt") as f:
                yield ClientUpdate(
                    delta={k: f.get_tensor(k) for k in f.keys()},  # noqa: SIM118
                    num_examples=100 + i,
                )

    FedAvg().aggregate(base, stream())  # warm-up: page cache, allocator
    import gc

    gc.collect()
    baseline_anon, baseline_total = read_rss()
    sampler = PeakSampler()
    sampler.start()
    start = time.perf_counter()
    result = FedAvg().aggregate(base, stream())
    seconds = time.perf_counter() - start
    sampler.done.set()
    sampler.join()
    anon, total = read_rss()
    print(
        json.dumps(
            {
                "seconds": seconds,
                "model_bytes": size,
                "peak_extra_anon": max(sampler.peak_anon, anon) - baseline_anon,
                "peak_extra_total": max(sampler.peak_total, total) - baseline_total,
                "result_tensors": len(result),
            }
        )
    )


def _load(path: Path) -> StateDict:
    with safe_open(path, framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118


# --- the parent ---------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=32)
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        child(args.child, args.updates)
        return

    shapes = model_shapes(args.params)
    base = random_state(shapes, seed=0)
    pool = [random_state(shapes, seed=1 + i) for i in range(POOL)]
    size = model_bytes(base)
    consumed = size * args.updates
    gb = consumed / 1e9

    runs: dict[str, Callable[[], object]] = {
        "copy": numpy_copy_run(pool, args.updates),
        "fedavg": lambda: FedAvg().aggregate(base, in_memory_stream(pool, args.updates)),
        "float64": float64_sum_run(base, pool, args.updates),
    }
    runs["copy"]()  # warm-up: first touch of buffers, allocator
    runs["fedavg"]()
    best = best_interleaved(runs, REPEATS)
    copy_s, fedavg_s, f64_s = best["copy"], best["fedavg"], best["float64"]

    with tempfile.TemporaryDirectory(prefix="barnraise-bench-") as tmp:
        folder = Path(tmp)
        save_file(base, str(folder / "base.safetensors"))
        for i, delta in enumerate(pool):
            save_file(delta, str(folder / f"update-{i}.safetensors"))
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--updates", str(args.updates)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONHASHSEED": "0"},
        )
        sub = json.loads(out.stdout.strip().splitlines()[-1])

    print(
        f"FedAvg of {args.updates} updates x {args.params / 1e6:g}M float32 params "
        f"({size / 1e6:.0f} MB each, {gb:.2f} GB consumed), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, best of {REPEATS}\n"
    )
    print("| measurement | seconds | GB/s of updates | vs numpy copy | peak extra memory |")
    print("| --- | ---: | ---: | ---: | ---: |")
    copy_rate = gb / copy_s
    print(f"| numpy copy of the same bytes | {copy_s:.3f} | {copy_rate:.2f} | 1.00 | |")
    print(
        f"| FedAvg, updates in memory | {fedavg_s:.3f} | {gb / fedavg_s:.2f} | "
        f"{(gb / fedavg_s) / copy_rate:.2f} | |"
    )
    sub_rate = gb / sub["seconds"]
    print(
        f"| FedAvg, mmap safetensors, fresh process | {sub['seconds']:.3f} | {sub_rate:.2f} | "
        f"{sub_rate / copy_rate:.2f} | {sub['peak_extra_anon'] / size:.2f}x model (anon RSS); "
        f"{sub['peak_extra_total'] / size:.2f}x (total RSS) |"
    )
    print(
        f"| float64 accumulator (comparison only) | {f64_s:.3f} | {gb / f64_s:.2f} | "
        f"{(gb / f64_s) / copy_rate:.2f} | 2x model for the accumulator |"
    )


if __name__ == "__main__":
    main()
