"""SecAgg+ next to a plain int8 round: bytes per client and seconds per round, in process.

    .venv/bin/python bench/secagg.py [--clients 10 50 100] [--params 4810 1000000]
        [--dropout 0.1] [--seed 0] [--json]

For each number of clients and model size (4810 is the digits-mlp recipe's parameter
count), the same random updates (norm half the clip bound) go through

- a plain int8 round: each client uploads ``encode_update(delta, "int8")`` and downloads
  nothing extra; the server decodes and sums them;
- a SecAgg+ round (``federated.secagg.run_round``, every message through its bytes), with
  the ring of the fewest bits that holds the round (``min``) and with a 32-bit ring (``32``),
  ``--dropout`` of the clients lost, half after sharing keys and half after masking.

Bytes per client are those of a client that completed every stage, up + down (set-up,
advertisements, shares, masked input, unmask); seconds are compute only (one process, no
network): the mean per client, and the server's total (the plain round's best of 3). The
error columns are the relative L2 error of the decoded sum against the exact float sum of
the same clients' updates. The public per-entry bound is ``--entry-bound-sigmas`` x clip
/ sqrt(d) (no client data in it).
Aim: at 100 clients, at most 2x the bytes of the plain round.

``secagg_rows`` is the same measurement as data, for ``bench/privacy.py``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from federated.codec import decode_update, encode_update
from federated.secagg import Dropouts, RoundParameters, run_round
from federated.tensors import StateDict, spec_of

CLIP_NORM = 1.0
PLAIN_REPEATS = 3
"""The plain round is cheap and noisy: its best of 3; each SecAgg+ round runs once."""
DIGITS_MLP_SHAPES: dict[str, tuple[int, ...]] = {
    "0.weight": (64, 64),
    "0.bias": (64,),
    "2.weight": (10, 64),
    "2.bias": (10,),
}
"""digits-mlp at its default 64 hidden units: 4810 parameters."""


def model_shapes(num_parameters: int) -> dict[str, tuple[int, ...]]:
    """digits-mlp's layout at 4810 parameters; otherwise one weight matrix and a remainder."""
    if num_parameters == sum(math.prod(s) for s in DIGITS_MLP_SHAPES.values()):
        return dict(DIGITS_MLP_SHAPES)
    rows = num_parameters // 1024
    shapes: dict[str, tuple[int, ...]] = {"hidden.weight": (rows, 1024)} if rows else {}
    if num_parameters - rows * 1024:
        shapes["head.bias"] = (num_parameters - rows * 1024,)
    return shapes


def random_updates(shapes: dict[str, tuple[int, ...]], count: int, seed: int) -> list[StateDict]:
    """Gaussian updates of L2 norm about half the clip bound."""
    gen = torch.Generator().manual_seed(seed)
    std = 0.5 * CLIP_NORM / math.sqrt(sum(math.prod(s) for s in shapes.values()))
    return [
        {name: torch.randn(shape, generator=gen) * std for name, shape in shapes.items()}
        for _ in range(count)
    ]


def _relative_error(got: StateDict, want: StateDict) -> float:
    diff = sum(float(((got[k].double() - want[k].double()) ** 2).sum()) for k in want)
    norm = sum(float((want[k].double() ** 2).sum()) for k in want)
    return math.sqrt(diff / norm)


def _exact_sum(updates: Sequence[StateDict], who: Sequence[int]) -> StateDict:
    return {k: sum((updates[i][k].double() for i in who), torch.zeros(1)) for k in updates[0]}


def plain_int8_round(updates: Sequence[StateDict]) -> dict[str, float]:
    """Each client encodes int8 and uploads it; the server decodes and sums (best of 3)."""
    spec = spec_of(updates[0])
    client_seconds, server_seconds = math.inf, math.inf
    for _ in range(PLAIN_REPEATS):
        start = time.perf_counter()
        payloads = [encode_update(update, "int8").payload for update in updates]
        client_seconds = min(client_seconds, (time.perf_counter() - start) / len(updates))
        start = time.perf_counter()
        total = {k: torch.zeros(t.shape, dtype=torch.float32) for k, t in updates[0].items()}
        for payload in payloads:
            for k, t in decode_update(payload, spec).items():
                total[k].add_(t)
        server_seconds = min(server_seconds, time.perf_counter() - start)
    exact = _exact_sum(updates, range(len(updates)))
    return {
        "bytes": float(np.mean([len(p) for p in payloads])),
        "client_seconds": client_seconds,
        "server_seconds": server_seconds,
        "relative_error": _relative_error(total, exact),
    }


def _dropouts(n: int, dropout: float, seed: int) -> Dropouts:
    lost = np.random.default_rng(seed).permutation(n)[: round(dropout * n)].tolist()
    half = len(lost) // 2
    return Dropouts(after_sharing=frozenset(lost[:half]), after_masking=frozenset(lost[half:]))


def secagg_rows(
    clients: Sequence[int],
    num_parameters: int,
    dropout: float,
    seed: int,
    *,
    rings: Sequence[str] = ("min", "32"),
    entry_bound_sigmas: float = 4.0,
) -> list[dict[str, Any]]:
    """One row per (clients, ring): SecAgg+ bytes and seconds, and the plain int8 round's.

    The round is built to tolerate ``max(dropout, 0.05)`` and loses ``dropout`` of its
    clients (half after sharing keys, half after masking).
    """
    shapes = model_shapes(num_parameters)
    entry_bound = min(CLIP_NORM, entry_bound_sigmas * CLIP_NORM / math.sqrt(num_parameters))
    warm = random_updates(shapes, 3, seed)  # first calls: imports, allocator, OpenSSL
    plain_int8_round(warm)
    run_round(
        RoundParameters.create(
            shapes=shapes, num_clients=3, clip_norm=CLIP_NORM, dropout_tolerance=0.1
        ),
        dict(enumerate(warm)),
    )
    rows: list[dict[str, Any]] = []
    for n in clients:
        updates = random_updates(shapes, n, seed + n)
        plain = plain_int8_round(updates)
        drops = _dropouts(n, dropout, seed)
        lost = drops.after_sharing | drops.after_masking
        for ring in rings:
            params = RoundParameters.create(
                shapes=shapes,
                num_clients=n,
                clip_norm=CLIP_NORM,
                dropout_tolerance=max(dropout, 0.05),
                entry_bound=entry_bound,
                ring_bits=None if ring == "min" else int(ring),
            )
            start = time.perf_counter()
            report = run_round(params, dict(enumerate(updates)), dropouts=drops, rounding_seed=seed)
            wall = time.perf_counter() - start
            full = [i for i in range(n) if i not in lost]
            up = float(np.mean([report.bytes_up[i] for i in full]))
            down = float(np.mean([report.bytes_down[i] for i in full]))
            exact = _exact_sum(updates, report.result.survivors)
            rows.append(
                {
                    "clients": n,
                    "parameters": num_parameters,
                    "ring_bits": params.ring_bits,
                    "degree": params.degree,
                    "threshold": params.threshold,
                    "dropped": len(lost),
                    "up_bytes": up,
                    "down_bytes": down,
                    "plain_bytes": plain["bytes"],
                    "bytes_ratio": (up + down) / plain["bytes"],
                    "client_seconds": float(np.mean([report.client_seconds[i] for i in full])),
                    "plain_client_seconds": plain["client_seconds"],
                    "server_seconds": report.server_seconds,
                    "plain_server_seconds": plain["server_seconds"],
                    "wall_seconds": wall,
                    "relative_error": _relative_error(report.result.total, exact),
                    "plain_relative_error": plain["relative_error"],
                }
            )
    return rows


def secagg_table(rows: list[dict[str, Any]], dropout: float) -> str:
    """The rows of ``secagg_rows`` as a Markdown table."""
    lines = [
        f"SecAgg+ vs plain int8, {dropout:.0%} of clients dropped (half after sharing, half "
        f"after masking), torch {torch.__version__}, {torch.get_num_threads()} threads\n",
        "| clients | params | ring bits | k / t | up+down B/client | plain B | x plain | "
        "client s (plain) | server s (plain) | sum rel. error (plain) |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        lines.append(
            f"| {r['clients']} | {r['parameters']:,} | {r['ring_bits']} | "
            f"{r['degree']} / {r['threshold']} | {r['up_bytes'] + r['down_bytes']:,.0f} | "
            f"{r['plain_bytes']:,.0f} | {r['bytes_ratio']:.2f} | "
            f"{r['client_seconds']:.3f} ({r['plain_client_seconds']:.4f}) | "
            f"{r['server_seconds']:.2f} ({r['plain_server_seconds']:.3f}) | "
            f"{r['relative_error']:.4f} ({r['plain_relative_error']:.4f}) |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[10, 50, 100])
    parser.add_argument("--params", type=int, nargs="+", default=[4810, 1_000_000])
    parser.add_argument("--dropout", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rings", nargs="+", default=["min", "32"])
    parser.add_argument("--entry-bound-sigmas", type=float, default=4.0)
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead")
    args = parser.parse_args()
    rows = [
        row
        for params in args.params
        for row in secagg_rows(
            args.clients,
            params,
            args.dropout,
            args.seed,
            rings=args.rings,
            entry_bound_sigmas=args.entry_bound_sigmas,
        )
    ]
    print(json.dumps(rows, indent=2) if args.json else secagg_table(rows, args.dropout))


if __name__ == "__main__":
    main()
