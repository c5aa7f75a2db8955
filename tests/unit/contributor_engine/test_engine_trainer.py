"""The training child process: reuse, pause latency, crash and resume, stop, live limits."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from app.contributor.limits import Limits
from app.contributor.trainer import TrainerCrashed, TrainerHandle, TrainJob
from federated.codec import encode_model
from federated.recipes import get_recipe
from tests.support import wait_until


class Inbox:
    """Collects child messages; ``wait_for`` blocks on a condition, never on a fixed sleep."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self._cond = threading.Condition()

    def __call__(self, message: dict[str, Any]) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    def wait_for(self, predicate: Any, timeout: float = 60.0) -> dict[str, Any]:
        """The newest message ``predicate`` accepts, once there is one."""

        def newest() -> dict[str, Any] | None:
            found = [m for m in self.messages if predicate(m)]
            return found[-1] if found else None

        found: dict[str, Any] = wait_until(newest, timeout, "the trainer", cond=self._cond)
        return found


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    recipe = get_recipe("digits-mlp")
    data = encode_model(recipe.initial_state(recipe.resolve_hparams({})))
    path = tmp_path_factory.mktemp("model") / "base.safetensors"
    path.write_bytes(data)
    return path, hashlib.sha256(data).hexdigest()


@pytest.fixture
def inbox() -> Inbox:
    return Inbox()


@pytest.fixture
def trainer(inbox: Inbox) -> Iterator[TrainerHandle]:
    handle = TrainerHandle(Limits(cpu_cores=1, cpu_percent=100), on_message=inbox)
    yield handle
    handle.close()


def job(tmp: Path, base: tuple[Path, str], task_id: str, **kw: Any) -> TrainJob:
    fields: dict[str, Any] = {
        "task_id": task_id,
        "project": "digits",
        "recipe": "digits-mlp",
        "hparams": {},
        "shard_index": 1,
        "base_model_path": str(base[0]),
        "base_digest": base[1],
        "checkpoint_path": str(tmp / f"{task_id}.ckpt"),
        "payload_path": str(tmp / f"{task_id}.update"),
        "codec": "f32",
        "seed": 7,
    }
    fields.update(kw)
    return TrainJob(**fields)


def test_one_process_trains_task_after_task(
    trainer: TrainerHandle, base_model: Any, tmp_path: Path
) -> None:
    trainer.start()
    pid = trainer.pid
    for i in range(3):
        outcome = trainer.run(job(tmp_path, base_model, f"task-{i:04d}", shard_index=i))
        assert outcome.done and outcome.num_examples > 0
        assert Path(outcome.payload_path or "").stat().st_size > 0
        assert outcome.metrics["loss_after"] < outcome.metrics["loss_before"]
    assert trainer.pid == pid and trainer.starts == 1
    assert psutil.Process(pid).nice() == 19  # the lowest priority
    # Plain tasks never load Opacus, whose accountant needs scipy: the desktop bundle leaves
    # scipy out, and a plain task once failed there for it (its shared libraries would be
    # mapped into the child had it been imported).
    scipy_parts = ("/scipy/", "/scipy.libs/")  # numpy ships a libscipy_openblas of its own
    mapped = [
        m.path for m in psutil.Process(pid).memory_maps() if any(p in m.path for p in scipy_parts)
    ]
    assert mapped == []


def run_in_thread(trainer: TrainerHandle, j: TrainJob) -> tuple[threading.Thread, dict[str, Any]]:
    result: dict[str, Any] = {}

    def target() -> None:
        try:
            result["outcome"] = trainer.run(j)
        except Exception as exc:
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, result


def test_pause_takes_effect_within_a_second(
    trainer: TrainerHandle, inbox: Inbox, base_model: Any, tmp_path: Path
) -> None:
    trainer.start()
    thread, result = run_in_thread(
        trainer, job(tmp_path, base_model, "task-long", hparams={"max_steps": 200_000})
    )
    inbox.wait_for(lambda m: m["type"] == "progress")
    started = time.monotonic()
    confirmed = trainer.pause()
    latency = time.monotonic() - started
    assert confirmed and latency < 1.0, f"pause took {latency:.3f}s"
    # Paused means no CPU: measure the child over a short window.
    child = psutil.Process(trainer.pid)
    before = sum(child.cpu_times()[:2])
    inbox.wait_for(lambda m: m["type"] == "checkpoint")  # the pause wrote a checkpoint
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:  # observe, not sleep-to-pass: the bound is on CPU used
        time.sleep(0.05)
    assert sum(child.cpu_times()[:2]) - before < 0.05
    trainer.resume()
    inbox.wait_for(lambda m: m["type"] == "resumed")
    trainer.stop_task()
    thread.join(30)
    assert not result["outcome"].done and Path(result["outcome"].checkpoint_path).exists()


def test_killed_child_resumes_from_its_checkpoint(
    trainer: TrainerHandle, inbox: Inbox, base_model: Any, tmp_path: Path
) -> None:
    hparams = {"max_steps": 400}
    reference = trainer.run(job(tmp_path / "ref", base_model, "task-ref0", hparams=hparams))
    trainer.set_limits(Limits(cpu_cores=1, cpu_percent=20))  # slow enough to kill mid-task
    j = job(
        tmp_path,
        base_model,
        "task-ref0",
        hparams=hparams,
        checkpoint_interval_s=0.05,
        payload_path=str(tmp_path / "resumed.update"),
    )
    thread, result = run_in_thread(trainer, j)
    checkpoint = inbox.wait_for(
        lambda m: m["type"] == "checkpoint" and m["path"] == j.checkpoint_path and m["step"] > 20
    )
    trainer.kill()
    thread.join(30)
    assert isinstance(result.get("error"), TrainerCrashed)
    trainer.set_limits(Limits(cpu_cores=1, cpu_percent=100))
    trainer.start()
    assert trainer.starts == 2
    seen_before_restart = len(inbox.messages)
    outcome = trainer.run(j)
    assert outcome.done and outcome.steps == 400
    progress = [m for m in inbox.messages[seen_before_restart:] if m["type"] == "progress"]
    assert progress[0]["step"] > checkpoint["step"]  # it did not start over
    # Deterministic: the resumed run produced exactly the uninterrupted run's update.
    assert outcome.payload_digest == reference.payload_digest


def test_stop_checkpoints_and_returns(
    trainer: TrainerHandle, inbox: Inbox, base_model: Any, tmp_path: Path
) -> None:
    thread, result = run_in_thread(
        trainer, job(tmp_path, base_model, "task-stop", hparams={"max_steps": 200_000})
    )
    inbox.wait_for(lambda m: m["type"] == "progress")
    trainer.stop_task()
    thread.join(30)
    outcome = result["outcome"]
    assert not outcome.done
    assert Path(outcome.checkpoint_path).exists()


def test_bad_task_reports_an_error(trainer: TrainerHandle, base_model: Any, tmp_path: Path) -> None:
    from app.contributor.trainer import TrainerError

    with pytest.raises(TrainerError, match="unknown recipe"):
        trainer.run(job(tmp_path, base_model, "task-bad0", recipe="no-such-recipe"))
    assert trainer.run(job(tmp_path, base_model, "task-good")).done  # the child survives
