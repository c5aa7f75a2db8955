"""A byte-level transformer language model trained on the built-in corpus (Python source).

Examples are windows of ``seq_len`` bytes; a window's labels are the same bytes shifted by
one, so every position is a next-byte prediction. The training text is cut into
``num_shards`` contiguous ranges (``partition`` does not apply: bytes have no class to skew
by); the validation files are never in any shard and only the coordinator evaluates on them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from federated.errors import DataError
from federated.recipes.base import Dataset, HParamValue, HyperParam, Recipe
from federated.recipes.corpus import split_tokens
from federated.recipes.transformer import MAX_CONTEXT, PRESETS, DecoderLM, TransformerConfig

DEFAULT_SEQ_LEN = 128
MAX_EVAL_WINDOWS = 4096
"""``evaluate`` scores at most this many windows, whatever it is given."""
DEFAULT_EVAL_WINDOWS = 256
"""The validation set's default size: 256 windows of 128 bytes is 32 KiB of held-out text,
a few seconds of a tiny model's forward passes on the coordinator."""
EVAL_BATCH_TOKENS = 16_384
"""Tokens per forward pass when evaluating, so memory stays bounded at any ``seq_len``."""
LOCAL_EVAL_TOKENS = 16_384
"""The loss before and after a task is measured on at most this many tokens of the shard
(128 windows at the default context)..."""
LOCAL_EVAL_SHARE = 50
"""... and on at most 1/50 of the windows the task trains on (at least
``MIN_LOCAL_EVAL_WINDOWS``): two forward passes over 2 % of a task's windows cost under 2 %
of it. A fixed 128 windows was 17 % of a 128-step task at batch 4 (bench/lm.py)."""
MIN_LOCAL_EVAL_WINDOWS = 8


def token_windows(tokens: np.ndarray, seq_len: int) -> Dataset:
    """Non-overlapping windows of ``tokens``: features [N, seq_len] and the next bytes."""
    n = (len(tokens) - 1) // seq_len
    ids = torch.from_numpy(np.asarray(tokens[: n * seq_len + 1], dtype=np.int64))
    return Dataset(ids[:-1].view(n, seq_len), ids[1:].view(n, seq_len))


def shard_bounds(length: int, num_shards: int, shard_index: int) -> tuple[int, int]:
    """[start, stop) of contiguous shard ``shard_index`` of ``length`` tokens (sizes differ by
    at most one token)."""
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard index {shard_index} is outside [0, {num_shards})")
    return length * shard_index // num_shards, length * (shard_index + 1) // num_shards


def preset_config(hparams: Mapping[str, HParamValue]) -> TransformerConfig:
    return PRESETS[str(hparams["preset"])]


class ByteLM(Recipe):
    name = "byte-lm"
    description = (
        "A byte-level transformer language model, pre-trained on Python's standard library "
        "source (built in; tiny preset for CPUs up to base, 113M parameters, for GPUs)"
    )
    data_mode = "builtin"
    extra_hparams: ClassVar[tuple[HyperParam, ...]] = (
        HyperParam(
            "preset",
            str,
            "tiny",
            "model size: tiny 1.1M, small 10.7M, medium 25.8M, base 113M parameters",
            choices=tuple(PRESETS),
        ),
        HyperParam(
            "seq_len", int, DEFAULT_SEQ_LEN, "context length in bytes", low=8, high=MAX_CONTEXT
        ),
        HyperParam(
            "eval_windows",
            int,
            DEFAULT_EVAL_WINDOWS,
            "validation windows the coordinator scores each version on",
            low=1,
            high=MAX_EVAL_WINDOWS,
        ),
    )
    # Tiny preset, 2 CPU cores: one 200-step task (3,200 windows, 410k bytes) takes 30-40 s
    # and lowers the validation loss from 5.10 to 1.74 nats per byte (2.51 bits). Measured at
    # 200 steps, batch 16: lr 7e-4 1.77, 1e-3 1.74, 1.5e-3 1.73, 2e-3 1.87, 3e-3 2.18,
    # 5e-3 2.26, all at a constant rate (before the schedule below: high rates need a warm-up).
    default_overrides: ClassVar[dict[str, HParamValue]] = {
        "optimizer": "adamw",
        # Each task warms its fresh AdamW up, then decays (schedule_steps 0: per task). Two
        # 200-step tasks in a row, validation loss after each: constant 1e-3 1.737, 1.434;
        # cosine with 20 warm-up steps at 1e-3 1.850, 1.461; 2e-3 1.747, 1.425; 3e-3 1.762,
        # 1.437.
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "warmup_steps": 20,
        "weight_decay": 0.01,
        "batch_size": 16,
        "max_steps": 200,
        "clip_norm": 1.0,
    }

    def build_model(self, hparams: Mapping[str, HParamValue]) -> nn.Module:
        return DecoderLM(preset_config(hparams))

    def load_shard(
        self, hparams: Mapping[str, HParamValue], shard_index: int, *, data_path: str | None = None
    ) -> Dataset:
        """Shard ``shard_index`` of the training text, as windows of ``seq_len`` bytes."""
        tokens = split_tokens("train")
        num_shards, seq_len = int(hparams["num_shards"]), int(hparams["seq_len"])
        start, stop = shard_bounds(len(tokens), num_shards, shard_index)
        if stop - start <= seq_len:
            raise DataError(
                f"{num_shards} shards of the {len(tokens)}-byte corpus hold under one window of "
                f"{seq_len} bytes each; use fewer shards or a shorter seq_len"
            )
        return token_windows(tokens[start:stop], seq_len)

    def load_test(self, hparams: Mapping[str, HParamValue]) -> Dataset:
        """``eval_windows`` windows spread evenly over the validation files; the same for any
        seed and shard count."""
        every = token_windows(split_tokens("validation"), int(hparams["seq_len"]))
        count = min(int(hparams["eval_windows"]), len(every))
        picked = torch.from_numpy(np.linspace(0, len(every) - 1, count).round().astype(np.int64))
        return Dataset(every.features[picked], every.labels[picked])

    def loss(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean next-byte cross-entropy (nats) over every position of every window."""
        return F.cross_entropy(outputs.reshape(-1, outputs.shape[-1]).float(), labels.reshape(-1))

    @torch.no_grad()
    def evaluate(self, model: nn.Module, data: Dataset, batch_size: int = 1024) -> dict[str, float]:
        """Next-byte loss (nats), bits per byte and accuracy on at most MAX_EVAL_WINDOWS windows.

        ``accuracy`` is the share of bytes predicted exactly (argmax), ``examples`` the windows
        scored and ``tokens`` the bytes."""
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        n = min(len(data), MAX_EVAL_WINDOWS)
        seq_len = int(data.features.shape[1]) if n else 1
        per_batch = max(1, min(batch_size, EVAL_BATCH_TOKENS // seq_len))
        total_loss, correct, tokens = 0.0, 0, 0
        for start in range(0, n, per_batch):
            x = data.features[start : min(n, start + per_batch)].to(device)
            y = data.labels[start : min(n, start + per_batch)].to(device)
            logits = model(x).float()
            total_loss += float(
                F.cross_entropy(
                    logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
                )
            )
            correct += int((logits.argmax(dim=-1) == y).sum())
            tokens += y.numel()
        model.train(was_training)
        if tokens == 0:
            nan = float("nan")
            return {"loss": nan, "bpb": nan, "accuracy": nan, "examples": 0.0, "tokens": 0.0}
        loss = total_loss / tokens
        return {
            "loss": loss,
            "bpb": loss / math.log(2),
            "accuracy": correct / tokens,
            "examples": float(n),
            "tokens": float(tokens),
        }

    def flops_per_example(self, hparams: Mapping[str, HParamValue]) -> float:
        """Training FLOPs of one window: about 6 x parameters x seq_len, plus attention."""
        seq_len = int(hparams["seq_len"])
        return preset_config(hparams).train_flops_per_token(seq_len) * seq_len

    def local_eval_size(self, hparams: Mapping[str, HParamValue]) -> tuple[int, int]:
        seq_len = int(hparams["seq_len"])
        windows = max(1, LOCAL_EVAL_TOKENS // seq_len)
        steps = int(hparams["max_steps"])
        if steps > 0:  # the task's own size is known: a small share of it
            trained = steps * int(hparams["batch_size"])
            windows = min(windows, max(MIN_LOCAL_EVAL_WINDOWS, trained // LOCAL_EVAL_SHARE))
        return windows, max(1, EVAL_BATCH_TOKENS // seq_len)


__all__ = ["ByteLM", "shard_bounds", "token_windows"]
