"""How hard the trainer may work: a smooth duty cycle, OS priority, threads, GPU memory.

The duty cycle enforces ``cpu_percent`` between training steps. After each step it adds
the CPU time the step used (all threads of the process, divided by the cores we were given)
divided by the target fraction, minus the wall time that passed, to a running *debt*; once
the trainer has run for ``fraction * period`` it sleeps the debt off. A cycle is therefore
one period long (at most ``MAX_PERIOD_S``): 25 ms on and 75 ms off at 25 %, never BOINC's
1 s on, 3 s off that makes fans surge. Sleep overshoot is paid back on the next cycle, and
credit from idle time is capped at one period so a trainer that waited cannot burst.

This module is imported by the engine (no torch) and by the trainer child; only the
functions marked "child only" touch torch, and they import it lazily.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "DEFAULT_PERIOD_S",
    "MAX_PERIOD_S",
    "DutyCycle",
    "Limits",
    "apply_thread_limits",
    "choose_device",
    "lower_priority",
    "process_cpu_seconds",
]

log = logging.getLogger(__name__)

# One on+off cycle of the duty cycle; at most MAX_PERIOD_S so the load looks steady to fans.
DEFAULT_PERIOD_S = 0.1
MAX_PERIOD_S = 0.2
# A sleep below this is not worth a syscall; the debt carries over to the next step.
_MIN_SLEEP_S = 0.0005


@dataclass(frozen=True)
class Limits:
    """The effective limits the trainer runs under (one settings profile, resolved)."""

    cpu_cores: int = 1
    cpu_percent: float = 100.0
    gpu_enabled: bool = False
    gpu_memory_fraction: float = 0.5
    gpu_percent: float = 100.0
    memory_cap_mb: int = 0  # 0: no cap

    def __post_init__(self) -> None:
        if self.cpu_cores < 1:
            raise ValueError(f"cpu_cores must be at least 1, not {self.cpu_cores}")
        for name in ("cpu_percent", "gpu_percent"):
            value = getattr(self, name)
            if not 0 < value <= 100:
                raise ValueError(f"{name} must be in (0, 100], not {value}")
        if not 0 < self.gpu_memory_fraction <= 1:
            raise ValueError(
                f"gpu_memory_fraction must be in (0, 1], not {self.gpu_memory_fraction}"
            )
        if self.memory_cap_mb < 0:
            raise ValueError(f"memory_cap_mb must be >= 0, not {self.memory_cap_mb}")

    @classmethod
    def from_profile(cls, profile: Any, *, max_cores: int | None = None) -> Limits:
        """Read a settings profile (any object or mapping with the same field names)."""

        def get(name: str, default: Any) -> Any:
            if isinstance(profile, Mapping):
                return profile.get(name, default)
            return getattr(profile, name, default)

        cores = int(get("cpu_cores", 1))
        available = max_cores or os.cpu_count() or 1
        return cls(
            cpu_cores=max(1, min(cores, available)),
            cpu_percent=float(get("cpu_percent", 100.0)),
            gpu_enabled=bool(get("gpu_enabled", False)),
            gpu_memory_fraction=float(get("gpu_memory_fraction", 0.5)),
            gpu_percent=float(get("gpu_percent", 100.0)),
            memory_cap_mb=int(get("memory_cap_mb", 0) or 0),
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Limits:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def needs_restart(self, new: Limits) -> bool:
        """Whether the child must be restarted to apply ``new`` (device or thread pool change);
        everything else is applied live between steps."""
        return self.gpu_enabled != new.gpu_enabled or self.cpu_cores != new.cpu_cores


def process_cpu_seconds() -> float:
    """CPU seconds used by this process, all threads (user + system)."""
    return time.process_time()


class DutyCycle:
    """Enforce a busy fraction between steps; call :meth:`after_step` after each step.

    ``busy_clock`` measures work (default: process CPU seconds divided by ``cores``); for a
    GPU pass a wall clock read after ``torch.cuda.synchronize()``. ``sleep`` may return early
    (for example when a pause is requested): it returns the seconds actually slept.
    """

    def __init__(
        self,
        percent: float,
        *,
        cores: int = 1,
        period_s: float = DEFAULT_PERIOD_S,
        busy_clock: Callable[[], float] = process_cpu_seconds,
        wall_clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], float] | None = None,
    ) -> None:
        if not 0 < period_s <= MAX_PERIOD_S:
            raise ValueError(f"period_s must be in (0, {MAX_PERIOD_S}], not {period_s}")
        self.period_s = period_s
        self._busy_clock = busy_clock
        self._wall_clock = wall_clock
        self._sleep = sleep or _plain_sleep
        self.set_target(percent, cores=cores)
        self.reset()

    def set_target(self, percent: float, *, cores: int | None = None) -> None:
        if not 0 < percent <= 100:
            raise ValueError(f"percent must be in (0, 100], not {percent}")
        self.fraction = percent / 100.0
        if cores is not None:
            if cores < 1:
                raise ValueError(f"cores must be >= 1, not {cores}")
            self.cores = cores

    def reset(self) -> None:
        """Forget history (call after a pause or between tasks)."""
        self._debt = 0.0
        self._run = 0.0
        self._wall = self._wall_clock()
        self._busy = self._busy_clock()
        self.slept_s = 0.0
        self.longest_run_s = 0.0
        self.cycles = 0

    def sleep_needed(self, busy: float, wall: float) -> float:
        """Pure step of the controller: account ``busy`` seconds of work done in ``wall``
        seconds and return how long to sleep now (0 until a cycle's run is complete)."""
        if self.fraction >= 1.0:
            self._debt, self._run = 0.0, 0.0
            return 0.0
        self._debt += busy / self.fraction - wall
        # Idle time (waiting for a task, a slow step stuck on I/O) earns at most one period
        # of credit, so the trainer can never burst above its share for long.
        self._debt = max(self._debt, -self.period_s)
        self._run += busy  # CPU time: a trainer starved by other programs is not running
        if self._run < self.fraction * self.period_s or self._debt < _MIN_SLEEP_S:
            return 0.0
        return self._debt

    def account_sleep(self, slept: float) -> None:
        self._debt -= slept
        self._run = 0.0
        self.slept_s += slept
        self.cycles += 1

    def after_step(self) -> float:
        """Account the work since the previous call, sleep if the cycle's run is over, and
        return the seconds slept."""
        wall_now, busy_now = self._wall_clock(), self._busy_clock()
        wall, busy = wall_now - self._wall, (busy_now - self._busy) / self.cores
        need = self.sleep_needed(busy, wall)
        slept = 0.0
        if need > 0:
            if self.cycles:  # the first run includes start-up work (model, first step)
                self.longest_run_s = max(self.longest_run_s, self._run)
            slept = self._sleep(need)
            self.account_sleep(slept)
        self._wall, self._busy = self._wall_clock(), self._busy_clock()
        return slept


def _plain_sleep(seconds: float) -> float:
    start = time.perf_counter()
    time.sleep(seconds)
    return time.perf_counter() - start


def lower_priority() -> None:
    """Run this process at the lowest OS priority (child only; call before starting threads
    so that they inherit it)."""
    if sys.platform == "win32":
        try:
            import psutil

            psutil.Process().nice(psutil.IDLE_PRIORITY_CLASS)
        except (ImportError, OSError) as exc:  # pragma: no cover - Windows only
            log.warning("could not lower the trainer's priority: %s", exc)
        return
    try:
        os.nice(19 - os.nice(0))
    except OSError as exc:
        log.warning("could not lower the trainer's priority: %s", exc)
    if sys.platform.startswith("linux"):
        try:
            # SCHED_IDLE: run only when the CPU would otherwise be idle.
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError) as exc:
            log.debug("SCHED_IDLE not available: %s", exc)
        try:
            import psutil

            psutil.Process().ionice(psutil.IOPRIO_CLASS_IDLE)
        except (ImportError, AttributeError, OSError) as exc:
            log.debug("idle I/O priority not available: %s", exc)


def thread_env(cores: int) -> dict[str, str]:
    """Environment for a child that must use at most ``cores`` threads (set before torch loads)."""
    value = str(max(1, cores))
    return {name: value for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def apply_thread_limits(cores: int) -> None:
    """Child only: limit torch's intra-op threads (and inter-op threads, once)."""
    import torch

    torch.set_num_threads(max(1, cores))
    # Only settable before the first parallel work; it stays 1 after the first call.
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(1)


def choose_device(limits: Limits) -> str:
    """Child only: the device to train on under ``limits``, with the GPU memory cap applied."""
    if not limits.gpu_enabled:
        return "cpu"
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_per_process_memory_fraction(limits.gpu_memory_fraction, 0)
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return "mps"
    log.info("GPU use is allowed but no usable GPU was found; training on the CPU")
    return "cpu"
