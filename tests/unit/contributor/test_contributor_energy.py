"""Energy given (issue 16), on the contributor: the RAPL reader against a powercap tree on
disk (rewritten between reads, as the kernel does), the share of a package the training
process is given, the estimate from real CPU work in a subprocess, and labels."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from app.contributor.energy import (
    SAMPLE_INTERVAL_S,
    Energy,
    EnergyMeter,
    RaplReader,
    combine,
    cpu_busy_seconds,
)

WRAP_UJ = 262_143_328_850  # a common package's max_energy_range_uj


def powercap(root: Path, packages: dict[int, int], wrap: int = WRAP_UJ) -> Path:
    """A powercap tree: package zones ``intel-rapl:N`` with a core subzone each (which
    must not be counted twice), and an MMIO zone (not a package counter of its own)."""
    for index, energy_uj in packages.items():
        zone = root / f"intel-rapl:{index}"
        (zone / f"intel-rapl:{index}:0").mkdir(parents=True, exist_ok=True)
        (zone / "name").write_text(f"package-{index}\n")
        (zone / "energy_uj").write_text(f"{energy_uj}\n")
        (zone / "max_energy_range_uj").write_text(f"{wrap}\n")
        (zone / f"intel-rapl:{index}:0" / "energy_uj").write_text("999999999\n")
        (zone / f"intel-rapl:{index}:0" / "max_energy_range_uj").write_text(f"{wrap}\n")
    (root / "intel-rapl-mmio:0").mkdir(exist_ok=True)
    return root


def set_energy(root: Path, index: int, energy_uj: int) -> None:
    (root / f"intel-rapl:{index}" / "energy_uj").write_text(f"{energy_uj}\n")


def proc_stat(path: Path, busy_ticks: int) -> Path:
    """A /proc/stat whose busy time (user + system) is ``busy_ticks`` clock ticks."""
    path.write_text(f"cpu  {busy_ticks - 100} 0 100 50000 7 0 0 0 0 0\ncpu0 1 2 3 4 5 6 7 8 0 0\n")
    return path


def ticks(seconds: float) -> int:
    import os

    return round(seconds * os.sysconf("SC_CLK_TCK"))


def test_the_reader_sums_the_packages_and_survives_a_wrap(tmp_path: Path) -> None:
    root = powercap(tmp_path, {0: 1_000_000, 1: WRAP_UJ - 2_000_000})
    reader = RaplReader(root)
    assert len(reader.domains) == 2  # the packages, not their subzones
    before = reader.read()
    assert before == [1_000_000, WRAP_UJ - 2_000_000]
    set_energy(root, 0, 6_000_000)  # +5 J
    set_energy(root, 1, 1_000_000)  # wrapped: +2 J to the top, +1 J after it
    after = reader.read()
    assert after is not None
    assert reader.joules_between(before, after) == pytest.approx(8.0)


def test_no_readable_counter_reads_as_none(tmp_path: Path) -> None:
    assert RaplReader(tmp_path / "absent").read() is None
    root = powercap(tmp_path / "root", {0: 5})
    reader = RaplReader(root)
    # As for a normal user where only root may read energy_uj (CVE-2020-8694); running
    # the tests as root, a directory in its place makes the read fail the same way.
    (root / "intel-rapl:0" / "energy_uj").unlink()
    (root / "intel-rapl:0" / "energy_uj").mkdir()
    assert reader.read() is None


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_rapl_is_shared_by_cpu_time_and_read_often_enough(tmp_path: Path) -> None:
    root = powercap(tmp_path / "powercap", {0: 0})
    stat = proc_stat(tmp_path / "stat", ticks(100.0))
    cpu, clock = [10.0], Clock()
    meter = EnergyMeter(
        cpu_tdp_watts=65.0,
        powercap=root,
        proc_stat=stat,
        cpu_seconds=lambda: cpu[0],
        clock=clock,
    )
    meter.start()
    # 20 s: the package used 400 J; this process 5 CPU s of the 20 every program used.
    clock.now, cpu[0] = 20.0, 15.0
    set_energy(root, 0, 400_000_000)
    proc_stat(stat, ticks(120.0))
    meter.sample()
    # Not yet SAMPLE_INTERVAL_S later: nothing is read (the counters are left as they are).
    clock.now = 20.0 + SAMPLE_INTERVAL_S / 2
    set_energy(root, 0, 999_000_000)
    meter.sample()
    # Then the counter wraps; all of the busy time is this process's.
    clock.now, cpu[0] = 40.0, 25.0
    set_energy(root, 0, 50_000_000)
    proc_stat(stat, ticks(130.0))
    total = meter.total()
    assert total.method == "rapl"
    wrapped = (WRAP_UJ - 400_000_000 + 50_000_000) / 1e6
    assert total.joules == pytest.approx(400.0 * 5 / 20 + wrapped)


def test_without_counters_the_cpu_time_is_estimated_from_the_tdp(tmp_path: Path) -> None:
    cpu = [3.0]
    meter = EnergyMeter(
        cpu_tdp_watts=64.0,
        cores=16,
        powercap=tmp_path / "none",
        cpu_seconds=lambda: cpu[0],
    )
    meter.start()
    cpu[0] = 5.5
    assert meter.total() == Energy(2.5 * 4.0, "estimated")
    assert meter.total() == Energy(10.0, "estimated")  # idempotent: nothing more spent


def test_a_gpu_without_nvml_is_labelled_estimated(tmp_path: Path) -> None:
    import importlib.util

    if importlib.util.find_spec("pynvml") is not None:
        pytest.skip("pynvml is installed: this tests the machine without it")
    meter = EnergyMeter(cores=1, gpu=True, powercap=tmp_path / "none", cpu_seconds=lambda: 0.0)
    meter.start()
    assert meter.total() == Energy(0.0, "estimated")


def test_the_estimate_of_real_cpu_work_in_a_subprocess(tmp_path: Path) -> None:
    """A process that burns CPU for about half a second reports about that many seconds
    times the declared TDP per core, and says it is an estimate."""
    script = textwrap.dedent(
        f"""
        import json, time
        from pathlib import Path
        from app.contributor.energy import EnergyMeter
        meter = EnergyMeter(cpu_tdp_watts=80.0, cores=4, powercap=Path({str(tmp_path)!r}))
        meter.start()
        started = time.process_time()
        x = 0
        while time.process_time() - started < 0.5:
            x += sum(i * i for i in range(1000))
        used = time.process_time() - started
        print(json.dumps({{"energy": meter.total().to_json(), "cpu": used}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        cwd=Path(__file__).resolve().parents[3],
    )
    result = json.loads(out.stdout)
    energy = Energy.from_json(result["energy"])
    assert energy is not None and energy.method == "estimated"
    assert energy.joules == pytest.approx(result["cpu"] * 20.0, rel=0.2)
    assert 8.0 <= energy.joules <= 15.0  # 0.5 s or a little more, at 20 W a core


def test_cpu_busy_seconds_reads_proc_stat(tmp_path: Path) -> None:
    assert cpu_busy_seconds(proc_stat(tmp_path / "stat", ticks(42.0))) == pytest.approx(42.0)
    assert cpu_busy_seconds(tmp_path / "missing") is None
    real = cpu_busy_seconds()
    assert real is None or real > 0


def test_parts_of_a_task_combine_measured_only_where_both_were() -> None:
    assert combine(None, Energy(1.0, "rapl")) == Energy(1.0, "rapl")
    assert combine(Energy(1.0, "rapl+nvml"), Energy(2.0, "rapl")) == Energy(3.0, "rapl")
    assert combine(Energy(1.0, "nvml"), Energy(2.0, "rapl+nvml")) == Energy(3.0, "nvml")
    assert combine(Energy(1.0, "rapl"), Energy(2.0, "estimated")).method == "estimated"
    assert Energy.from_json({"joules": 2, "method": "rapl"}) == Energy(2.0, "rapl")
    for bad in (None, [], {"joules": -1, "method": "rapl"}, {"joules": 1, "method": "x"}):
        assert Energy.from_json(bad) is None
