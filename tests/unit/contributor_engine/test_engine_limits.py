"""The duty cycle maths, with fake clocks: no sleeping, exact numbers."""

from __future__ import annotations

import pytest

from app.contributor.limits import MAX_PERIOD_S, DutyCycle, Limits


class FakeClocks:
    """A wall clock and a CPU clock that the test advances; sleeping advances the wall only."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0
        self.sleeps: list[float] = []

    def work(self, seconds: float, cpu_share: float = 1.0) -> None:
        self.wall += seconds
        self.cpu += seconds * cpu_share

    def sleep(self, seconds: float) -> float:
        self.sleeps.append(seconds)
        self.wall += seconds
        return seconds


def make(percent: float, clocks: FakeClocks, **kw: object) -> DutyCycle:
    return DutyCycle(
        percent,
        busy_clock=lambda: clocks.cpu,
        wall_clock=lambda: clocks.wall,
        sleep=clocks.sleep,
        **kw,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("percent", [10, 25, 50, 75, 90])
@pytest.mark.parametrize("step_s", [0.0005, 0.003, 0.02])
def test_long_run_share_matches_target(percent: float, step_s: float) -> None:
    clocks = FakeClocks()
    duty = make(percent, clocks, period_s=0.1)
    longest_run = 0.0
    run = 0.0
    for _ in range(4000):
        clocks.work(step_s)
        run += step_s
        if duty.after_step() > 0:
            longest_run = max(longest_run, run)
            run = 0.0
    share = clocks.cpu / clocks.wall
    assert share == pytest.approx(percent / 100, abs=0.01)
    # One cycle is one period: the run is the target share of it, plus at most one step.
    assert longest_run <= percent / 100 * 0.1 + step_s + 1e-9
    # ... and the pause that follows is what keeps the share: (1 - f) / f of the run.
    f = percent / 100
    assert max(clocks.sleeps) <= (1 - f) / f * (f * 0.1 + step_s) + 1e-9


def test_full_speed_never_sleeps() -> None:
    clocks = FakeClocks()
    duty = make(100, clocks)
    for _ in range(100):
        clocks.work(0.01)
        assert duty.after_step() == 0.0


def test_sleep_overshoot_is_paid_back() -> None:
    clocks = FakeClocks()

    def oversleep(seconds: float) -> float:
        clocks.wall += seconds * 1.5  # the OS woke us late
        return seconds * 1.5

    duty = DutyCycle(
        50, busy_clock=lambda: clocks.cpu, wall_clock=lambda: clocks.wall, sleep=oversleep
    )
    for _ in range(2000):
        clocks.work(0.002)
        duty.after_step()
    # Oversleeping is credited to the next cycles, so the share stays on target.
    share = clocks.cpu / clocks.wall
    assert share == pytest.approx(0.5, abs=0.01)


def test_idle_credit_is_capped_at_one_period() -> None:
    clocks = FakeClocks()
    duty = make(25, clocks, period_s=0.1)
    clocks.wall += 60.0  # a minute waiting for a task
    duty.after_step()
    burst = 0.0
    while True:
        clocks.work(0.001)
        burst += 0.001
        if duty.after_step() > 0:
            break
    # Without the cap the trainer could run 15 s flat out on 60 s of credit.
    assert burst < 0.2


def test_cpu_time_is_divided_by_cores() -> None:
    clocks = FakeClocks()
    duty = make(50, clocks, cores=2)
    for _ in range(2000):
        clocks.work(0.002, cpu_share=2.0)  # two threads busy
        duty.after_step()
    assert clocks.cpu / clocks.wall / 2 == pytest.approx(0.5, abs=0.01)


def test_waiting_steps_are_not_counted_as_work() -> None:
    clocks = FakeClocks()
    duty = make(50, clocks)
    for _ in range(1000):
        clocks.work(0.002, cpu_share=0.25)  # stalled on I/O or other programs
        duty.after_step()
    assert sum(clocks.sleeps) < 0.1  # the process used 25 %: nothing to throttle


def test_pure_sleep_needed() -> None:
    duty = DutyCycle(25, busy_clock=lambda: 0.0, wall_clock=lambda: 0.0, period_s=0.1)
    assert duty.sleep_needed(busy=0.01, wall=0.01) == 0.0  # run not yet a quarter period
    assert duty.sleep_needed(busy=0.015, wall=0.015) == pytest.approx(0.075)


@pytest.mark.parametrize("bad", [0, -5, 101])
def test_bad_percent(bad: float) -> None:
    with pytest.raises(ValueError, match="percent"):
        DutyCycle(bad)


def test_period_capped() -> None:
    with pytest.raises(ValueError, match="period_s"):
        DutyCycle(50, period_s=MAX_PERIOD_S * 2)


def test_limits_from_profile_and_restart_rules() -> None:
    class Profile:
        cpu_cores = 64
        cpu_percent = 50
        gpu_enabled = False
        gpu_memory_fraction = 0.25
        gpu_percent = 25
        memory_cap_mb = 1024

    limits = Limits.from_profile(Profile(), max_cores=4)
    assert limits.cpu_cores == 4
    assert limits == Limits.from_json(limits.to_json())
    assert not limits.needs_restart(
        Limits(cpu_cores=4, cpu_percent=10, gpu_percent=10, memory_cap_mb=1024)
    )
    assert limits.needs_restart(Limits(cpu_cores=2))
    assert limits.needs_restart(Limits(cpu_cores=4, gpu_enabled=True))
    with pytest.raises(ValueError, match="cpu_percent"):
        Limits(cpu_percent=0)
