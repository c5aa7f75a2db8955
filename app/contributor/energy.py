"""The energy a task's training took on this computer (issue 16, "energy given").

Measured where the machine lets a normal user read it, else estimated, and always labelled
with how (``federated.protocol.EnergyMethod``):

- ``rapl``: the CPU packages' RAPL energy counters through Linux powercap
  (``/sys/class/powercap/intel-rapl:N/energy_uj``; AMD's recent kernels expose the same
  interface). A package counter measures the whole package, other programs included, so
  each interval's energy is scaled by the training process's share of the CPU time all
  programs used over it (``/proc/stat``). Many distributions let only root read the
  counters (since CVE-2020-8694): then the CPU's part is estimated.
- ``nvml``: an NVIDIA GPU's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
  millijoules), read only when ``pynvml`` (``nvidia-ml-py``) is installed and training
  runs on that GPU; it counts the whole GPU. The CPU's part is then estimated.
- ``rapl+nvml``: both measured.
- ``estimated``: the training process's CPU seconds times a per-core wattage, the declared
  ``cpu_tdp_watts`` divided by the core count (a GPU's part, when it cannot be read, is not
  counted).

``EnergyMeter`` runs inside the training process (the trainer child): ``sample()`` after
each step (it reads at most every ``SAMPLE_INTERVAL_S``, often enough that a counter cannot
wrap twice between two reads), ``total()`` at the end. Stdlib only; never raises on a
machine that cannot be read.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_CPU_TDP_WATTS",
    "POWERCAP_ROOT",
    "PROC_STAT",
    "SAMPLE_INTERVAL_S",
    "Energy",
    "EnergyMeter",
    "RaplReader",
    "combine",
    "cpu_busy_seconds",
]

log = logging.getLogger(__name__)

POWERCAP_ROOT = Path("/sys/class/powercap")
PROC_STAT = Path("/proc/stat")

DEFAULT_CPU_TDP_WATTS = 65.0
"""The declared TDP when the volunteer declares none: a common desktop CPU's (a laptop's is
15-28 W, a workstation's 100-300 W). Divided by the core count, it is what one fully busy
core is taken to draw."""

SAMPLE_INTERVAL_S = 10.0
"""Counters are read at most this often while training. The smallest RAPL counter range in
the field is 2^32 µJ (4.3 kJ): 10 s stays within it up to 400 W per package."""


@dataclass(frozen=True)
class Energy:
    """Joules, and how they were known: ``rapl``, ``nvml``, ``rapl+nvml`` or ``estimated``."""

    joules: float
    method: str

    def to_json(self) -> dict[str, Any]:
        return {"joules": self.joules, "method": self.method}

    @classmethod
    def from_json(cls, value: Any) -> Energy | None:
        """The ``to_json`` form back, or None for anything else (an old checkpoint)."""
        if not isinstance(value, dict):
            return None
        joules, method = value.get("joules"), value.get("method")
        if not isinstance(joules, int | float) or method not in _METHODS or joules < 0:
            return None
        return cls(float(joules), str(method))


def _method(cpu_measured: bool, gpu_measured: bool) -> str:
    if cpu_measured:
        return "rapl+nvml" if gpu_measured else "rapl"
    return "nvml" if gpu_measured else "estimated"


_METHODS = frozenset(_method(c, g) for c in (False, True) for g in (False, True))


def combine(first: Energy | None, second: Energy) -> Energy:
    """Two parts of one task (before and after a restart): summed, and measured only where
    both parts were."""
    if first is None:
        return second
    cpu = "rapl" in first.method and "rapl" in second.method
    gpu = "nvml" in first.method and "nvml" in second.method
    return Energy(first.joules + second.joules, _method(cpu, gpu))


class RaplReader:
    """The package domains under a powercap root (``intel-rapl:N``, not their ``:N:M``
    subzones, which the package already counts)."""

    def __init__(self, root: Path = POWERCAP_ROOT) -> None:
        self.domains: list[tuple[Path, int]] = []  # (energy_uj file, its wrap range)
        with contextlib.suppress(OSError):
            for zone in sorted(root.glob("intel-rapl:*")):
                if zone.name.count(":") != 1:
                    continue
                try:
                    wrap = int((zone / "max_energy_range_uj").read_text())
                except (OSError, ValueError):
                    continue
                self.domains.append((zone / "energy_uj", wrap))

    def read(self) -> list[int] | None:
        """Each package's counter in µJ, or None when any cannot be read (not root)."""
        if not self.domains:
            return None
        try:
            return [int(path.read_text()) for path, _ in self.domains]
        except (OSError, ValueError):
            return None

    def joules_between(self, before: list[int], after: list[int]) -> float:
        """Energy of all packages from ``before`` to ``after``; a counter that passed its
        ``max_energy_range_uj`` wrapped to 0 (once: reads are frequent enough)."""
        total_uj = 0
        for (_, wrap), first, last in zip(self.domains, before, after, strict=True):
            total_uj += last - first if last >= first else last + wrap - first
        return total_uj / 1e6


def cpu_busy_seconds(stat: Path = PROC_STAT) -> float | None:
    """CPU seconds all programs spent busy since boot, every core (``/proc/stat``: user,
    nice, system, irq, softirq, steal; guest time is within user), or None if unreadable."""
    try:
        with stat.open() as f:
            fields = f.readline().split()
        if not fields or fields[0] != "cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in fields[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


class _Nvml:
    """The energy counter of the GPU training uses (CUDA device 0 of what this process
    sees), or nothing when ``pynvml`` or the driver is missing."""

    def __init__(self) -> None:
        self._handle: Any = None
        try:
            import pynvml  # optional: nvidia-ml-py
        except ImportError:
            return
        try:
            pynvml.nvmlInit()
            visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
            if visible.startswith("GPU-"):
                self._handle = pynvml.nvmlDeviceGetHandleByUUID(visible)
            else:
                self._handle = pynvml.nvmlDeviceGetHandleByIndex(int(visible or 0))
            self._pynvml = pynvml
        except Exception as exc:  # NVMLError, a bad CUDA_VISIBLE_DEVICES
            log.info("no GPU energy counter: %s", exc)
            self._handle = None

    def millijoules(self) -> int | None:
        if self._handle is None:
            return None
        try:
            return int(self._pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except Exception:  # NVMLError_NotSupported on GPUs before Volta
            return None


class EnergyMeter:
    """The energy one task's training takes in this process, from ``start()`` on.

    ``cpu_seconds`` is this process's CPU time (user + system, all threads); ``cores`` the
    machine's core count (the estimate's divisor); ``gpu``: training runs on an NVIDIA GPU.
    """

    def __init__(
        self,
        *,
        cpu_tdp_watts: float = DEFAULT_CPU_TDP_WATTS,
        cores: int | None = None,
        gpu: bool = False,
        powercap: Path = POWERCAP_ROOT,
        proc_stat: Path = PROC_STAT,
        cpu_seconds: Callable[[], float] = time.process_time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.watts_per_core = max(0.0, cpu_tdp_watts) / max(1, cores or os.cpu_count() or 1)
        self._rapl = RaplReader(powercap)
        self._proc_stat = proc_stat
        self._nvml = _Nvml() if gpu else None
        self._cpu_seconds = cpu_seconds
        self._clock = clock
        self._joules = 0.0
        self._cpu_measured = True
        self._gpu_measured = gpu
        self._last: tuple[float, float, list[int] | None, float | None, int | None] | None = None

    def _reading(self) -> tuple[float, float, list[int] | None, float | None, int | None]:
        nvml = self._nvml.millijoules() if self._nvml is not None else None
        busy = cpu_busy_seconds(self._proc_stat)
        return self._clock(), self._cpu_seconds(), self._rapl.read(), busy, nvml

    def start(self) -> None:
        self._joules = 0.0
        self._cpu_measured, self._gpu_measured = True, self._nvml is not None
        self._last = self._reading()

    def sample(self, *, force: bool = False) -> None:
        """Add the energy since the last reading (at most every ``SAMPLE_INTERVAL_S``)."""
        if self._last is None:
            self.start()
            return
        if not force and self._clock() - self._last[0] < SAMPLE_INTERVAL_S:
            return
        now = self._reading()
        _, cpu0, rapl0, busy0, gpu0 = self._last
        _, cpu1, rapl1, busy1, gpu1 = now
        self._last = now
        own = max(0.0, cpu1 - cpu0)
        if rapl0 is not None and rapl1 is not None and busy0 is not None and busy1 is not None:
            busy = busy1 - busy0
            # /proc/stat counts in ticks (10 ms): over a short interval this process's own
            # time may read larger than everyone's.
            share = min(1.0, own / busy) if busy > 0 else (1.0 if own > 0 else 0.0)
            self._joules += self._rapl.joules_between(rapl0, rapl1) * share
        else:
            self._cpu_measured = False
            self._joules += own * self.watts_per_core
        if gpu0 is not None and gpu1 is not None:
            self._joules += max(0, gpu1 - gpu0) / 1000.0
        else:
            self._gpu_measured = False

    def total(self) -> Energy:
        """The energy since ``start()``, reading the counters once more."""
        self.sample(force=True)
        return Energy(self._joules, _method(self._cpu_measured, self._gpu_measured))


def describe(joules: float, measured_joules: float) -> str:
    """Energy for a person: "3.0 Wh (estimated)", "12 Wh (measured)", "0.41 kWh (62 %
    measured)"; "none reported" before any."""
    if not math.isfinite(joules) or joules <= 0:
        return "none reported"
    wh = joules / 3600.0
    amount = f"{wh / 1000:.2f} kWh" if wh >= 1000 else f"{wh:.2g} Wh" if wh < 10 else f"{wh:.0f} Wh"
    share = min(1.0, max(0.0, measured_joules / joules)) if math.isfinite(measured_joules) else 0.0
    how = (
        "measured" if share >= 0.995 else "estimated" if share <= 0.005 else f"{share:.0%} measured"
    )
    return f"{amount} ({how})"
