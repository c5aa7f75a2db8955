"""The idle mode's results (``IdlePhase``), its aims, and their printout.

``bench/idle_load.py`` fills one ``IdlePhase`` per count of idle contributors; this module
says whether a phase met the aims and prints it, alone, against the N=0 phase, and all
phases as one table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

AIM_P99_MS = 100.0
"""/healthz p99 while N polls are held."""
AIM_RSS_MIB = 1024.0
"""The server's RSS while N polls are held."""


@dataclass
class IdlePhase:
    """One phase's results; latencies in ms, memory in MiB."""

    contributors: int
    wanted: int = 0  # contributors asked for: more than joined if joins failed or timed out
    established: int = 0
    establish_s: float | None = None  # None: not all established within the time box
    digest_s: float | None = None  # until the server was no longer busy (None: time box)
    held_at_end: int = 0
    hold_s: float = 0.0
    no_work_per_s: float = 0.0
    no_work_after_p50_s: float = float("nan")  # a 204 should come after about ``wait``
    no_work_after_max_s: float = float("nan")
    tasks_seen: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    healthz_n: int = 0
    healthz_p50_ms: float = float("nan")
    healthz_p99_ms: float = float("nan")
    healthz_max_ms: float = float("nan")
    healthz_failures: dict[str, int] = field(default_factory=dict)
    rss_mib: float | None = None
    rss_max_mib: float | None = None
    threads: int | None = None
    fds: int | None = None
    generator_cpu_pct: float = 0.0
    server_cpu_pct: float | None = None

    def misses(self) -> list[str]:
        """The aims this phase misses (empty: all met)."""
        out = []
        if self.contributors < self.wanted:
            out.append(f"only {self.contributors} of {self.wanted} joined")
        if self.held_at_end < self.contributors:
            out.append(f"held {self.held_at_end} of {self.contributors} polls")
        if self.errors:  # a poll unanswered within wait + POLL_GRACE_S is one
            out.append(f"{sum(self.errors.values())} client errors")
        if not self.healthz_p99_ms < AIM_P99_MS:
            out.append(f"/healthz p99 {self.healthz_p99_ms:.0f} ms >= {AIM_P99_MS:.0f} ms")
        if self.healthz_failures:
            out.append(f"{sum(self.healthz_failures.values())} /healthz failures")
        if self.rss_max_mib is not None and self.rss_max_mib >= AIM_RSS_MIB:
            out.append(f"server RSS {self.rss_max_mib:.0f} MiB >= {AIM_RSS_MIB:.0f} MiB")
        return out


def print_phase(phase: IdlePhase, base: IdlePhase | None) -> None:
    n = phase.contributors
    took = f"in {phase.establish_s} s" if phase.establish_s is not None else "(time box ran out)"
    digest = f"{phase.digest_s} s" if phase.digest_s is not None else "NOT within the time box"
    print(
        f"   polls established {phase.established}/{n} {took}, server done with them after "
        f"{digest}; in flight at the end {phase.held_at_end}"
    )
    print(
        f"   server CPU {phase.server_cpu_pct}% over the probe; "
        f"204s/s {phase.no_work_per_s}{answered(phase)}, tasks seen {phase.tasks_seen}, "
        f"load generator CPU {phase.generator_cpu_pct}% over {phase.hold_s} s"
    )
    for what, n_errors in phase.errors.items():
        print(f"     {n_errors} x {what}")
    fails = sum(phase.healthz_failures.values())
    print(
        f"   /healthz n={phase.healthz_n} p50 {phase.healthz_p50_ms} ms, p99 {phase.healthz_p99_ms} ms, "
        f"max {phase.healthz_max_ms} ms, failures {fails} {phase.healthz_failures or ''}"
    )
    rss = f"{phase.rss_mib:.1f}" if phase.rss_mib is not None else "-"
    peak = f"{phase.rss_max_mib:.1f}" if phase.rss_max_mib is not None else "-"
    print(f"   server RSS {rss} MiB (max {peak}), threads {phase.threads}, open fds {phase.fds}")
    if base is not None and phase is not base:
        print(f"   vs N=0: {ratios(phase, base)}")
    misses = phase.misses()
    print(f"   aims: {'met' if not misses else 'MISSED: ' + '; '.join(misses)}")


def answered(phase: IdlePhase) -> str:
    """When full-length polls got their 204: about ``wait`` if the server keeps time."""
    if phase.no_work_after_p50_s != phase.no_work_after_p50_s:  # NaN: none in this phase
        return ""
    return f" (after p50 {phase.no_work_after_p50_s} s, max {phase.no_work_after_max_s} s)"


def ratios(phase: IdlePhase, base: IdlePhase) -> str:
    p99 = phase.healthz_p99_ms / base.healthz_p99_ms if base.healthz_p99_ms > 0 else float("nan")
    text = f"/healthz p99 x{p99:.1f}"
    if phase.rss_mib is not None and base.rss_mib is not None:
        text += f", RSS {phase.rss_mib - base.rss_mib:+.1f} MiB"
    if phase.fds is not None and base.fds is not None:
        text += f", fds {phase.fds - base.fds:+d}"
    return text


def print_summary(phases: list[IdlePhase]) -> None:
    print(
        f"\n{'N':>6} {'held':>6} {'204/s':>7} {'tasks':>5} {'errors':>6} {'hz p50':>8} {'hz p99':>8} "
        f"{'hz max':>8} {'fails':>5} {'RSS MiB':>8} {'thr':>4} {'fds':>6}  aims"
    )
    for p in phases:
        rss = f"{p.rss_mib:8.1f}" if p.rss_mib is not None else f"{'-':>8}"
        print(
            f"{p.contributors:6} {p.held_at_end:6} {p.no_work_per_s:7.1f} {p.tasks_seen:5} "
            f"{sum(p.errors.values()):6} {p.healthz_p50_ms:8.1f} {p.healthz_p99_ms:8.1f} "
            f"{p.healthz_max_ms:8.1f} {sum(p.healthz_failures.values()):5} {rss} "
            f"{p.threads if p.threads is not None else '-':>4} {p.fds if p.fds is not None else '-':>6}  "
            f"{'met' if not p.misses() else 'MISSED'}"
        )
