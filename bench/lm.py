"""DiLoCo on the byte-lm recipe against centralised training, on this machine, in one run.

    .venv/bin/python bench/lm.py [--rounds 4 --inner-steps 128 --batch 4 --workers 4]
                                 [--preset tiny --seed 0 --sync-dp-quality --json]

1. Baseline: one model trained centrally (``train_locally`` on the whole training split,
   AdamW, the recipe's hyperparameters) for workers x rounds x H steps at batch B: the same
   tokens and the same steps as all of DiLoCo's inner steps together.
2. DiLoCo: each round, each of the workers trains H inner steps on its own shard from the
   version it holds, through the contributor's training child (``bench/lm_child.py``: the
   child's per-task code and hooks, int8 codec with the child's error feedback); the
   coordinator decodes and validates the payloads and the ``diloco`` strategy takes the outer
   Nesterov step. Uploads are the payloads' exact bytes; downloads are the first model in
   f32 and then each new version as an int8 delta against the one the worker holds (the
   workers really train from what that delta rebuilds), or f32 models (``--download f32``).
3. Synchronous data parallel, computed: every worker sends its f32 gradient and receives
   the f32 mean every step (8 bytes per parameter per step per worker), same tokens; both
   sides also count the first model download. ``--sync-dp-quality`` also trains what sync DP
   would compute (rounds x H steps at batch workers x B, whole split) for its loss.
4. Throughput: some DiLoCo tasks are replayed by a bare torch loop (same model, optimizer,
   rates, batches; no hooks), right before or after the child's run (alternating), and
   compared pair by pair: per task (wall of the whole task) and per step (the step loop).

Both arms use the recipe's cosine schedule with warm-up where ``lr_schedule`` exists (the
baseline over its S steps; DiLoCo over each worker's rounds x H inner steps, the task's
``schedule_offset`` = round x H), else a constant rate. Validation: the recipe's validation
split (``load_test``), the same windows for both. ``--warm-start N``: every arm starts from
the same model trained centrally for N steps first (the DiLoCo paper starts from a
pre-trained model). Prints tables (``bench/lm_report.py``); ``--json`` one object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch

from federated.codec import decode_update, encode_model, encode_update
from federated.recipes import get_recipe
from federated.recipes.base import HParamValue, Recipe
from federated.strategies import build_strategy
from federated.tensors import ClientUpdate, StateDict
from federated.training import Checkpoint, StepDecision, TrainProgress, train_locally

try:
    from bench.lm_child import ChildHarness, Timing, bare_loop, bare_matches_train_locally
    from bench.lm_report import print_report
except ImportError:  # run as ``python bench/lm.py``: bench/ is on the path, not the root
    from lm_child import (  # type: ignore[no-redef]
        ChildHarness,
        Timing,
        bare_loop,
        bare_matches_train_locally,
    )
    from lm_report import print_report  # type: ignore[no-redef]

RECIPE = "byte-lm"


class _EvalAt:
    """Hooks of a centralised run: a checkpoint every ``every`` steps, evaluated."""

    def __init__(self, every: int, evaluate: Callable[[StateDict], float]) -> None:
        self.every, self.evaluate = every, evaluate
        self.curve: list[tuple[int, float]] = []
        self.eval_s = 0.0

    def after_step(self, progress: TrainProgress) -> StepDecision:
        return StepDecision.CHECKPOINT if progress.step % self.every == 0 else StepDecision.CONTINUE

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        started = time.perf_counter()
        self.curve.append((checkpoint.step, self.evaluate(checkpoint.model)))
        self.eval_s += time.perf_counter() - started


def schedule(args: argparse.Namespace, recipe: Recipe, steps: int) -> dict[str, HParamValue]:
    """The learning-rate hyperparameters of a run of ``steps`` inner steps in all."""
    if "lr_schedule" not in recipe.hyperparams():
        return {}
    if args.lr_schedule == "constant":
        return {"lr_schedule": "constant"}
    warmup = max(1, round(args.warmup * steps))
    return {"lr_schedule": "cosine", "warmup_steps": warmup, "schedule_steps": steps}


def pick_pairs(rounds: int, workers: int, count: int) -> list[tuple[int, int]]:
    """``count`` (round, worker) tasks spread over the run, after the first round when
    there is more than one (so no child's first task, which builds its shard, is timed)."""
    tasks = [(r, i) for r in range(1 if rounds > 1 else 0, rounds) for i in range(workers)]
    count = min(count, len(tasks))
    return [tasks[int(k * len(tasks) / count)] for k in range(count)] if count else []


def apply(base: StateDict, delta: Mapping[str, torch.Tensor]) -> StateDict:
    return {k: base[k] + delta[k] for k in base}


def run_central(
    recipe: Recipe,
    hp: Mapping[str, HParamValue],
    init: StateDict,
    every: int,
    evaluate: Callable[[StateDict], float],
) -> dict[str, Any]:
    """``train_locally`` on the whole training split, evaluated every ``every`` steps."""
    data = recipe.load_shard(hp, 0)  # num_shards 1: the whole training split
    hooks = _EvalAt(every, evaluate)
    started = time.perf_counter()
    result = train_locally(recipe, hp, init, data, hooks=hooks, seed=int(hp["seed"]))
    wall = time.perf_counter() - started - hooks.eval_s
    if not hooks.curve or hooks.curve[-1][0] != result.steps:
        hooks.curve.append((result.steps, evaluate(apply(init, result.delta))))
    per_step = int(hp["batch_size"]) * int(hp["seq_len"])
    curve = [(step * per_step, loss) for step, loss in hooks.curve]
    return {
        "curve": curve,
        "steps": result.steps,
        "tokens": result.steps * per_step,
        "wall_s": wall,
    }


def run_diloco(
    args: argparse.Namespace,
    recipe: Recipe,
    hp_task: dict[str, HParamValue],
    init: StateDict,
    evaluate: Callable[[StateDict], float],
) -> dict[str, Any]:
    strategy = build_strategy(
        "diloco", {"outer_lr": args.outer_lr, "outer_momentum": args.outer_momentum}
    )
    spec = recipe.tensor_spec(hp_task)
    shards = [recipe.load_shard(hp_task, i) for i in range(args.workers)]
    pairs = pick_pairs(args.rounds, args.workers, args.speed_pairs)
    tokens_per_task = args.inner_steps * args.batch * int(hp_task["seq_len"])
    up, down, curve, eval_s, replay_s = 0, 0, [], 0.0, 0.0
    paired: list[tuple[Timing, Timing]] = []
    scheduled = int(hp_task.get("schedule_steps", 0) or 0) > 0
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-lm-") as tmp:
        children = [ChildHarness(Path(tmp), f"c{i}", args.threads) for i in range(args.workers)]
        global_state, held = init, init  # held: the version every worker holds
        down += args.workers * len(encode_model(init))  # the first download, in full
        for r in range(args.rounds):
            hp_r = dict(hp_task)
            if scheduled:  # where this version stands on the schedule, as the coordinator says
                hp_r = recipe.resolve_hparams({**hp_task, "schedule_offset": r * args.inner_steps})
            updates = []
            for i in range(args.workers):
                seed = args.seed * 100_003 + r * 1009 + i
                replay = (r, i) in pairs
                bare_first = replay and pairs.index((r, i)) % 2 == 1
                t0 = time.perf_counter()
                bare = None
                if bare_first:
                    bare = bare_loop(recipe, hp_r, held, shards[i], seed=seed)[0]
                t1 = time.perf_counter()
                task = children[i].train(
                    recipe,
                    hp_r,
                    task_id=f"r{r}-c{i}",
                    shard=i,
                    base=held,
                    seed=seed,
                    codec=args.codec,
                )
                t2 = time.perf_counter()
                if replay and not bare_first:
                    bare = bare_loop(recipe, hp_r, held, shards[i], seed=seed)[0]
                replay_s += (t1 - t0) + (time.perf_counter() - t2)
                if bare is not None:
                    paired.append((task.timing, bare))
                up += len(task.payload)
                delta = decode_update(task.payload, spec, expected_codec=args.codec)
                updates.append(
                    ClientUpdate(delta, task.num_examples, len(shards[i]), client_id=str(i))
                )
            global_state = strategy.aggregate(global_state, updates)
            t0 = time.perf_counter()
            curve.append(((r + 1) * args.workers * tokens_per_task, evaluate(global_state)))
            eval_s += time.perf_counter() - t0
            if r + 1 < args.rounds:  # every worker downloads the new version
                if args.download == "f32":
                    down += args.workers * len(encode_model(global_state))
                    held = global_state
                else:
                    moved = {k: global_state[k] - held[k] for k in held}
                    payload = encode_update(moved, "int8").payload
                    down += args.workers * len(payload)
                    held = apply(held, decode_update(payload, spec, expected_codec="int8"))
    return {
        "curve": curve,
        "bytes_up": up,
        "bytes_down": down,
        "tokens": args.rounds * args.workers * tokens_per_task,
        "wall_s": time.perf_counter() - started - eval_s - replay_s,
        "replay_s": replay_s,
        "pairs": paired,
        "strategy": strategy.describe(),
    }


def summarise(
    args: argparse.Namespace, params: int, model_f32: int, base: Any, dl: Any
) -> dict[str, Any]:
    workers, tokens, rounds = args.workers, dl["tokens"], args.rounds
    diloco_bytes = dl["bytes_up"] + dl["bytes_down"]
    # Sync DP: the f32 gradient up and the f32 mean down, every step, every worker; and the
    # same first model download as DiLoCo.
    dp_bytes = workers * (rounds * args.inner_steps * 8 * params + model_f32)
    up_round = dl["bytes_up"] / (workers * rounds)
    down_round = (dl["bytes_down"] - workers * model_f32) / max(1, workers * (rounds - 1))
    if args.download == "f32" or rounds == 1:
        down_round = model_f32
    pairs = dl["pairs"]
    task_ratios = [c.task_tps / b.task_tps for c, b in pairs]
    loop_ratios = [c.loop_tps / b.loop_tps for c, b in pairs]

    def outside_loop(t: Timing) -> float:  # seconds of a task outside its step loop
        return t.wall_s - t.loop_s * t.steps / max(1, t.loop_steps)

    def median(values: list[float]) -> float:
        return statistics.median(values) if values else float("nan")

    loss_b, loss_d = base["curve"][-1][1], dl["curve"][-1][1]
    return {
        "loss_baseline": loss_b,
        "loss_diloco": loss_d,
        "loss_ratio": loss_d / loss_b,
        "bytes_per_token_diloco": diloco_bytes / tokens,
        "bytes_per_token_sync_dp": dp_bytes / tokens,
        "bytes_ratio": dp_bytes / diloco_bytes,
        "bytes_ratio_round": args.inner_steps * 8 * params / (up_round + down_round),
        "bytes_per_token_round_diloco": (up_round + down_round) / (tokens / (workers * rounds)),
        "bytes_per_token_round_sync_dp": 8
        * params
        / (tokens / (workers * rounds * args.inner_steps)),
        "bytes_ratio_f32_downloads": dp_bytes / (dl["bytes_up"] + workers * rounds * model_f32),
        "speed_ratio_task": median(task_ratios),
        "speed_ratio_loop": median(loop_ratios),
        "speed_pairs": [
            {
                "task": t,
                "loop": lo,
                "child": {**vars(c), "task_tps": c.task_tps, "loop_tps": c.loop_tps},
                "bare": {**vars(b), "task_tps": b.task_tps, "loop_tps": b.loop_tps},
            }
            for (c, b), t, lo in zip(pairs, task_ratios, loop_ratios, strict=True)
        ],
        "child_outside_loop_s": median([outside_loop(c) for c, _ in pairs]),
        "bare_outside_loop_s": median([outside_loop(b) for _, b in pairs]),
        "child_task_s": median([c.wall_s for c, _ in pairs]),
        "child_tps": (
            median([c.task_tps for c, _ in pairs]),
            median([c.loop_tps for c, _ in pairs]),
        ),
        "bare_tps": (
            median([b.task_tps for _, b in pairs]),
            median([b.loop_tps for _, b in pairs]),
        ),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--inner-steps", type=int, default=128, help="H: inner steps per round")
    p.add_argument("--batch", type=int, default=4, help="windows per step (B)")
    p.add_argument("--seq-len", type=int, default=None, help="default: the recipe's")
    p.add_argument("--lr", type=float, default=None, help="inner lr (default: the recipe's)")
    p.add_argument("--lr-schedule", choices=("cosine", "constant"), default="cosine")
    p.add_argument("--warmup", type=float, default=0.05, help="warm-up share of the schedule")
    p.add_argument("--outer-lr", type=float, default=0.7)
    p.add_argument("--outer-momentum", type=float, default=0.9)
    p.add_argument("--codec", default="int8", help="upload codec")
    p.add_argument("--download", choices=("int8-delta", "f32"), default="int8-delta")
    p.add_argument("--eval-windows", type=int, default=256, help="validation windows")
    p.add_argument("--speed-pairs", type=int, default=4, help="DiLoCo tasks replayed bare")
    p.add_argument(
        "--sync-dp-quality",
        action="store_true",
        help="also train what sync DP computes (batch workers x B) for its validation loss",
    )
    p.add_argument(
        "--warm-start",
        type=int,
        default=0,
        help="centralised steps (batch B, the recipe's task schedule) every arm starts from",
    )
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    torch.set_num_threads(max(1, args.threads))
    recipe = get_recipe(RECIPE)
    common: dict[str, HParamValue] = {
        "preset": args.preset,
        "batch_size": args.batch,
        "seed": args.seed,
        "eval_windows": args.eval_windows,
    }
    if args.seq_len is not None:
        common["seq_len"] = args.seq_len
    if args.lr is not None:
        common["lr"] = args.lr
    inner_total = args.rounds * args.inner_steps
    total_steps = args.workers * inner_total

    def hparams(**extra: HParamValue) -> dict[str, HParamValue]:
        return recipe.resolve_hparams({**common, **extra})

    hp_base = hparams(num_shards=1, max_steps=total_steps, **schedule(args, recipe, total_steps))
    hp_task = hparams(
        num_shards=args.workers, max_steps=args.inner_steps, **schedule(args, recipe, inner_total)
    )
    init = recipe.initial_state(hp_task)
    test = recipe.load_test(hp_task)
    assert test is not None
    evaluator = recipe.build_model(hp_task)
    eval_s = [0.0]

    def evaluate(state: Mapping[str, torch.Tensor]) -> float:
        t0 = time.perf_counter()
        evaluator.load_state_dict(dict(state), strict=True)
        loss = recipe.evaluate(evaluator, test)["loss"]
        eval_s[0] += time.perf_counter() - t0
        return loss

    warm_s = time.perf_counter()
    if args.warm_start > 0:  # every arm starts from the same briefly pre-trained model
        hp_warm = hparams(num_shards=1, max_steps=args.warm_start)
        warm = train_locally(recipe, hp_warm, init, recipe.load_shard(hp_warm, 0), seed=1)
        init = apply(init, warm.delta)
    warm_s = time.perf_counter() - warm_s
    info: dict[str, Any] = {
        "params": sum(t.numel() for t in init.values()),
        "seq_len": int(hp_task["seq_len"]),
        "hp_task": hp_task,
        "hp_base": hp_base,
        "validation_windows": len(test),
        "init_loss": evaluate(init),
        "warm_s": warm_s,
        "bare_check": bare_matches_train_locally(
            recipe, hp_task, init, recipe.load_shard(hp_task, 0)
        ),
        "local_eval_windows": recipe.local_eval_size(hp_task)[0],
    }
    say = (lambda text: None) if args.json else (lambda text: print(text, flush=True))
    say(f"initial validation loss {info['init_loss']:.4f}; training the baseline ...")
    base = run_central(recipe, hp_base, init, args.workers * args.inner_steps, evaluate)
    say(f"baseline {base['curve'][-1][1]:.4f} in {base['wall_s']:.0f} s; sync DP / DiLoCo ...")
    if args.sync_dp_quality:
        hp_dp = hparams(
            num_shards=1,
            batch_size=args.workers * args.batch,
            max_steps=inner_total,
            **schedule(args, recipe, inner_total),
        )
        info["sync_dp"] = run_central(recipe, hp_dp, init, args.inner_steps, evaluate)
    dl = run_diloco(args, recipe, hp_task, init, evaluate)
    s = summarise(args, info["params"], len(encode_model(init)), base, dl)
    info["baseline"] = base
    info["diloco"] = {k: v for k, v in dl.items() if k != "pairs"}
    info["eval_s"] = eval_s[0]
    info["total_s"] = time.perf_counter() - started
    info["load"] = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    if args.json:
        print(json.dumps({"args": vars(args), **info, **s}, default=str))
    else:
        print_report(args, info, s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
