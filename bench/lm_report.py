"""The tables ``bench/lm.py`` prints."""

from __future__ import annotations

import argparse
import math
from typing import Any

AIM_LOSS, AIM_BYTES, AIM_SPEED = 1.05, 500.0, 0.95


def _verdict(value: float, aim: float, *, at_most: bool = False) -> str:
    if math.isnan(value):
        return "not measured"
    ok = value <= aim if at_most else value >= aim
    return "meets the aim" if ok else "MISSES the aim"


def _setup(args: argparse.Namespace, info: dict[str, Any]) -> list[str]:
    hp, base = info["hp_task"], info["hp_base"]
    rounds, h, workers, batch = args.rounds, args.inner_steps, args.workers, args.batch
    if int(hp.get("schedule_steps", 0) or 0) > 0:
        lr = (
            f"cosine, {base['warmup_steps']} warm-up steps over the baseline's "
            f"{base['max_steps']} and {hp['warmup_steps']} over each DiLoCo worker's "
            f"{hp['schedule_steps']} inner steps (a task's schedule_offset = round x H), "
            f"min_lr_ratio {hp['min_lr_ratio']}"
        )
    else:
        lr = f"{hp.get('lr_schedule', 'constant')} (no schedule across versions)"
    start = "from scratch (the recipe's seeded initial model)"
    if args.warm_start:
        start = f"from one model trained centrally for {args.warm_start} steps first"
    lines = [
        f"- {workers} workers x {rounds} rounds x H = {h} inner steps x batch {batch} x "
        f"{info['seq_len']} bytes: {workers * rounds * h * batch * info['seq_len']:,} "
        "training tokens per arm",
        f"- inner: AdamW lr {hp['lr']}, weight decay {hp['weight_decay']}, clip "
        f"{hp['clip_norm']}; learning rate: {lr}",
        f"- outer: DiLoCo Nesterov lr {args.outer_lr}, momentum {args.outer_momentum}; "
        f"uploads {args.codec} with the child's error feedback; downloads "
        + ("f32 models" if args.download == "f32" else "first model f32, then int8 deltas"),
        f"- baseline: {base['max_steps']} steps at batch {batch} on the whole training split "
        "(the same tokens, and as many steps as all DiLoCo inner steps together)",
        f"- every arm starts {start}; validation: {info['validation_windows']} windows of the "
        f"validation split, initial loss {info['init_loss']:.4f} nats/byte",
    ]
    if "sync_dp" in info:
        lines.append(
            f"- sync DP quality: {rounds * h} steps at batch {workers * batch} (what synchronous "
            "data parallel computes, sampled from the whole split)"
        )
    return lines


def print_report(args: argparse.Namespace, info: dict[str, Any], s: dict[str, Any]) -> None:
    base, dl, dp = info["baseline"], info["diloco"], info.get("sync_dp")
    print(f"\n## DiLoCo against centralised training: byte-lm {args.preset} ", end="")
    print(f"({info['params']:,} parameters), one run\n")
    print("\n".join(_setup(args, info)))
    dp_head = " sync DP (batch W x B) |" if dp else ""
    print(f"\n| tokens | baseline |{dp_head} DiLoCo (round) | DiLoCo / baseline |")
    print("|---|---|---|---|" + ("---|" if dp else ""))
    for k, ((tokens, lb), (_, ld)) in enumerate(zip(base["curve"], dl["curve"], strict=False)):
        dp_cell = f" {dp['curve'][k][1]:.4f} |" if dp and k < len(dp["curve"]) else ""
        print(f"| {tokens:,} | {lb:.4f} |{dp_cell} {ld:.4f} ({k + 1}) | {ld / lb:.3f} |")

    print("\n| measure | reference | DiLoCo | ratio | aim |\n|---|---|---|---|---|")
    print(
        f"| validation loss (nats/byte) vs the baseline | {s['loss_baseline']:.4f} "
        f"| {s['loss_diloco']:.4f} | {s['loss_ratio']:.3f} "
        f"| <= {AIM_LOSS} ({_verdict(s['loss_ratio'], AIM_LOSS, at_most=True)}) |"
    )
    if dp:
        loss_dp = dp["curve"][-1][1]
        print(
            f"| validation loss vs sync DP's own result | {loss_dp:.4f} | {s['loss_diloco']:.4f} "
            f"| {s['loss_diloco'] / loss_dp:.3f} | (context) |"
        )
    print(
        f"| bytes/token vs sync DP f32, whole run (first model counted on both sides) "
        f"| {s['bytes_per_token_sync_dp']:,.1f} | {s['bytes_per_token_diloco']:.2f} "
        f"| {s['bytes_ratio']:,.0f}x less | >= {AIM_BYTES:.0f}x "
        f"({_verdict(s['bytes_ratio'], AIM_BYTES)}) |"
    )
    print(
        f"| bytes/token vs sync DP f32, per round once running "
        f"| {s['bytes_per_token_round_sync_dp']:,.1f} | {s['bytes_per_token_round_diloco']:.2f} "
        f"| {s['bytes_ratio_round']:,.0f}x less | >= {AIM_BYTES:.0f}x "
        f"({_verdict(s['bytes_ratio_round'], AIM_BYTES)}) |"
    )
    (child_task, child_loop), (bare_task, bare_loop) = s["child_tps"], s["bare_tps"]
    print(
        f"| training tokens/s, child / bare torch loop, step loop (hooks included) "
        f"| {bare_loop:,.0f} | {child_loop:,.0f} | {s['speed_ratio_loop']:.3f} "
        f"| >= {AIM_SPEED} ({_verdict(s['speed_ratio_loop'], AIM_SPEED)}) |"
    )
    print(
        f"| training tokens/s, child / bare torch loop, whole task "
        f"| {bare_task:,.0f} | {child_task:,.0f} | {s['speed_ratio_task']:.3f} "
        f"| >= {AIM_SPEED} ({_verdict(s['speed_ratio_task'], AIM_SPEED)}) |"
    )

    mb = 1e6
    print(
        f"\nDiLoCo sent {dl['bytes_up'] / mb:.2f} MB up ({args.workers} x {args.rounds} "
        f"{args.codec} payloads, the bytes the child wrote) and {dl['bytes_down'] / mb:.2f} MB "
        f"down for {dl['tokens']:,} tokens; sync DP would send "
        f"{s['bytes_per_token_sync_dp'] * dl['tokens'] / mb:,.0f} MB. With every download a "
        f"full f32 model instead: {s['bytes_ratio_f32_downloads']:,.0f}x less."
    )
    if s["speed_pairs"]:
        print("\n| pair (order) | child tokens/s task, loop | bare tokens/s task, loop | ratios |")
        print("|---|---|---|---|")
        for k, p in enumerate(s["speed_pairs"]):
            c, b = p["child"], p["bare"]
            ct, cl, bt, bl = c["task_tps"], c["loop_tps"], b["task_tps"], b["loop_tps"]
            order = "bare first" if k % 2 else "child first"
            print(
                f"| {k + 1} ({order}) | {ct:,.0f}, {cl:,.0f} | {bt:,.0f}, {bl:,.0f} "
                f"| {p['task']:.3f}, {p['loop']:.3f} |"
            )
        print(
            f"\nA task of {args.inner_steps} steps (medians): the child spends "
            f"{s['child_outside_loop_s']:.2f} s of {s['child_task_s']:.2f} s outside its step "
            f"loop, the bare loop {s['bare_outside_loop_s']:.2f} s (building the model). The "
            f"child's extra is its per-task work: train_locally's loss on "
            f"{info['local_eval_windows']} local windows before and after training, decoding "
            "the base, encoding and checking the update."
        )
    print(
        f"\nbare loop == train_locally after 3 steps: max |difference| {info['bare_check']:.1e}"
        f"\nwall: baseline {base['wall_s']:.0f} s, "
        + (f"sync DP quality {dp['wall_s']:.0f} s, " if dp else "")
        + f"DiLoCo {dl['wall_s']:.0f} s (children, codec, aggregation), bare replays "
        f"{dl['replay_s']:.0f} s, validation {info['eval_s']:.0f} s, warm start "
        f"{info['warm_s']:.0f} s; total {info['total_s']:.0f} s with {args.threads} torch "
        f"thread(s); load average at the end {info['load']}"
    )
