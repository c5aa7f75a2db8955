"""The contributor's training child driven in this process, and the bare loop it is timed against.

Used by ``bench/lm.py``. ``ChildHarness`` runs each task through ``_ChildWorker.run``, the
code the app's training child runs per task (decode the base model, ``train_locally`` with
the child's own hooks at 100 % CPU, encode the update with error feedback, check it against
the task's bounds, write the payload), over a real pipe whose messages a thread drains. It
runs in this process, at this process's priority: the real child lowers its own priority
(nice 19, SCHED_IDLE), which on a busy machine measures the other programs, not the code.

``bare_loop`` is the same model, optimizer, learning rates, clipping and batches with
nothing around it; ``bare_matches_train_locally`` checks that claim bit for bit.
"""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from app.contributor.limits import Limits
from app.contributor.trainer import _ChildState, _ChildWorker, decode_message
from federated import training
from federated.codec import encode_model, sha256_hex
from federated.recipes.base import Dataset, HParamValue, Recipe
from federated.tensors import StateDict

DONE_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Timing:
    """One task's times. ``wall_s``: the whole task; ``loop_s``: from the end of step 1 to
    the end of the last step (``loop_steps`` steps, hooks included)."""

    steps: int
    tokens: int
    wall_s: float
    loop_s: float
    loop_steps: int

    @property
    def task_tps(self) -> float:
        return self.tokens / self.wall_s

    @property
    def loop_tps(self) -> float:
        if self.loop_steps < 1 or self.loop_s <= 0:
            return float("nan")  # a one-step task has no loop to time
        return self.tokens / self.steps * self.loop_steps / self.loop_s


@dataclass(frozen=True)
class ChildTask:
    payload: bytes
    num_examples: int
    metrics: dict[str, float]
    timing: Timing


class ChildHarness:
    """One contributor's training child: its own folder, pipe, worker and error feedback."""

    def __init__(self, root: Path, name: str, cores: int) -> None:
        self.dir = root / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self._parent, child_end = multiprocessing.Pipe()
        self._messages: list[tuple[float, dict[str, Any]]] = []
        self._arrived = threading.Condition()
        state = _ChildState(child_end, Limits(cpu_cores=cores, cpu_percent=100.0), paused=False)
        self._worker = _ChildWorker(state, "cpu")
        threading.Thread(target=self._drain, name=f"{name}-pipe", daemon=True).start()

    def _drain(self) -> None:
        while True:
            try:
                data = self._parent.recv_bytes()
            except (EOFError, OSError):
                return
            with self._arrived:  # the arrival time: what the engine would see
                self._messages.append((time.perf_counter(), decode_message(data)))
                self._arrived.notify_all()

    def train(
        self,
        recipe: Recipe,
        hparams: Mapping[str, HParamValue],
        *,
        task_id: str,
        shard: int,
        base: StateDict,
        seed: int,
        codec: str,
    ) -> ChildTask:
        """Run one task as the child does; the payload is what the contributor uploads."""
        blob = encode_model(base)  # the model file the engine downloaded
        base_path = self.dir / "base.safetensors"
        base_path.write_bytes(blob)
        with self._arrived:
            first = len(self._messages)
        message = {
            "type": "task",
            "task_id": task_id,
            "project": "bench-lm",
            "recipe": recipe.name,
            "hparams": dict(hparams),
            "shard_index": shard,
            "base_model_path": str(base_path),
            "base_digest": sha256_hex(blob),
            "checkpoint_path": str(self.dir / f"{task_id}.ckpt"),
            "payload_path": str(self.dir / f"{task_id}.update"),
            "codec": codec,
            "checkpoint_interval_s": 60.0,  # the app's default setting
            "feedback_path": str(self.dir / "error-feedback.safetensors"),
            "seed": seed,
        }
        started = time.perf_counter()
        self._worker.run(message)
        wall = time.perf_counter() - started

        def finished() -> bool:
            return any(m["type"] in {"done", "error"} for _, m in self._messages[first:])

        with self._arrived:
            self._arrived.wait_for(finished, timeout=DONE_TIMEOUT_S)
            got = [(t, m) for t, m in self._messages[first:] if m.get("task_id") == task_id]
        done = next((m for _, m in got if m["type"] == "done"), None)
        if done is None:
            error = next((m for _, m in got if m["type"] == "error"), {"message": "no reply"})
            raise RuntimeError(f"the child failed task {task_id}: {error['message']}")
        progress = [(t, m) for t, m in got if m["type"] == "progress"]
        (t_first, p_first), (t_last, p_last) = progress[0], progress[-1]
        steps = int(done["steps"])
        timing = Timing(
            steps=steps,
            tokens=steps * int(hparams["batch_size"]) * int(hparams["seq_len"]),
            wall_s=wall,
            loop_s=t_last - t_first,
            loop_steps=int(p_last["step"]) - int(p_first["step"]),
        )
        payload = Path(done["payload_path"]).read_bytes()
        Path(done["payload_path"]).unlink()
        return ChildTask(payload, int(done["num_examples"]), dict(done["metrics"]), timing)


def _lr_at(hparams: Mapping[str, HParamValue], step: int, total: int) -> float | None:
    """The rate train_locally sets before ``step``; None where it sets none (constant)."""
    scheduled_lr = getattr(training, "scheduled_lr", None)
    if scheduled_lr is None or str(hparams.get("lr_schedule", "constant")) == "constant":
        return None
    return float(scheduled_lr(hparams, step, total))


def _optimizer(params: list[nn.Parameter], hp: Mapping[str, HParamValue]) -> torch.optim.Optimizer:
    lr, wd = float(hp["lr"]), float(hp["weight_decay"])
    if hp["optimizer"] == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, momentum=float(hp["momentum"]), weight_decay=wd)


def bare_loop(
    recipe: Recipe,
    hparams: Mapping[str, HParamValue],
    base: StateDict,
    data: Dataset,
    *,
    seed: int,
) -> tuple[Timing, StateDict]:
    """``max_steps`` steps of the same training as train_locally, with nothing else: no
    hooks, no loss before and after, no delta, no loss read back per step."""
    started = time.perf_counter()
    model = recipe.build_model(hparams)
    model.load_state_dict(dict(base), strict=True)
    params = list(model.parameters())
    optimizer = _optimizer(params, hparams)
    steps, batch_size = int(hparams["max_steps"]), int(hparams["batch_size"])
    n = len(data)
    per_epoch = math.ceil(n / batch_size)
    clip = float(hparams["clip_norm"])
    order, current, after_first = torch.empty(0, dtype=torch.long), -1, started
    model.train()
    for step in range(steps):
        lr = _lr_at(hparams, step, steps)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        epoch, position = divmod(step, per_epoch)
        if epoch != current:
            generator = torch.Generator().manual_seed((seed * 1_000_003 + epoch) % (2**63))
            order, current = torch.randperm(n, generator=generator), epoch
        batch = order[position * batch_size : (position + 1) * batch_size]
        optimizer.zero_grad(set_to_none=True)
        loss = recipe.loss(model(data.features[batch]), data.labels[batch])
        loss.backward()
        if clip > 0:
            nn.utils.clip_grad_norm_(params, clip)
        optimizer.step()
        if step == 0:
            after_first = time.perf_counter()
    ended = time.perf_counter()
    tokens = steps * batch_size * int(hparams["seq_len"])
    timing = Timing(steps, tokens, ended - started, ended - after_first, steps - 1)
    return timing, {k: v.detach().clone() for k, v in model.state_dict().items()}


def bare_matches_train_locally(
    recipe: Recipe, hparams: Mapping[str, HParamValue], base: StateDict, data: Dataset
) -> float:
    """Max |difference| between the models of train_locally and bare_loop after the same
    few steps (0.0: the same model, optimizer, rates and batches, bit for bit)."""
    hp = {**hparams, "max_steps": 3}
    result = training.train_locally(recipe, hp, base, data, seed=7)
    _, state = bare_loop(recipe, hp, base, data, seed=7)
    return max(float(((state[k] - base[k]) - result.delta[k]).abs().max()) for k in base)
