"""Do cheating contributors get into the model, or get credit? Eight attacks, both modes.

    python -m bench.adversaries [--quick] [--attacks noise,zero] [--modes sync,async]
        [--versions 15] [--run-seconds 40] [--seed 0]

Scenario. One real coordinator (the embedded server on loopback, data folder in a tempdir) and, per
run, one new digits-mlp project (default iid partition, 10 shards, fixed seed; int8 codec;
``fit_tasks`` off, the bench is about trust, not pacing) with 10 contributors: 8 honest and
2 adversaries running one attack (the clean run of each mode: 10 honest). Sync mode: rounds
of 10 updates (or 8 once 2 s have passed since the version came out); async mode: FedBuff,
a version every 5 updates. A run ends after ``--versions`` published versions (async:
that many x 10 / 5, so that both modes aggregate about as many updates) or
``--run-seconds``, whichever first; then the adversaries stop, the engines leave the
project, and the bench waits for the aggregation worker to settle before it reads the store.

Honest contributors are real contributor engines: the ``Controller`` that ``barnraise
--headless`` runs, each with its own training child, as in ``bench.waste``. Starting ten
training children costs 30-60 s of this machine's two cores, so the engines are
started once, warmed up on a throwaway project (until each has had an update accepted;
not measured), and then join each run's project and leave it at the end: the same engine,
a new identity per project. An honest upload is what the engine reports (``TaskFinished``:
accepted, or the coordinator's refusal code) and what the store holds; what an engine
reports after it was told to leave (its lease given back under a task in hand) is not
counted. Real engines on two cores are fast enough: a sync round of 10 takes about 0.5 s.

Adversaries (``bench.adversary_clients``) are protocol clients built on
``backend.demo_clients.DemoContributor``: they lease and train honestly, then cheat:

- ``noise``: Gaussian noise of norm 0.99 x the task's ``max_update_norm``;
- ``sign_flip``: the honest delta x -10, scaled down to 0.99 x ``max_update_norm`` if longer;
- ``zero``: an all-zero delta claiming the task's full ``max_examples`` (free riding);
- ``base_echo``: the base model's weights sent as the delta;
- ``reuse``: the first task's payload bytes, re-sent for every later task (fresh manifest,
  correctly signed, this task's honest claims); that first upload is the adversary's own
  training and is counted neither as malicious nor in its credit;
- ``takeover`` (async only): each adversary leases from three threads on one identity and
  uploads sign-flipped deltas as fast as it can, to fill whole buffers;
- ``inflated_examples``: the honest delta, claiming 1e9 examples (the manifest type allows
  1..2**31-1; the coordinator may still compare it with the task's ``max_examples``);
- ``poisoned_metrics``: the honest delta, every metric at +1e9, the largest the manifest
  type accepts (1.5e308 is refused as manifest_mismatch before anything else is looked at).

Columns. ``versions``: published at the end. ``accuracy``: held-out accuracy of the last
version. ``clean``: the clean run's (same mode, same invocation) accuracy at the same
version number (its last if it got fewer); ``Δ pts``: the difference in points (aim: within
2). ``adversary credit``: GFLOP granted to the adversaries (store; aim 0), and their share
of all granted credit. ``malicious kept out``: of the adversaries' decided uploads, the
share refused at upload (any 4xx) or stored but never aggregated (aim >= 99 %).
``honest wrongly out``: of the honest decided uploads, the share refused with a code other
than lateness, or stored and kept out by a verdict or quarantine (aim <= 1 %). ``honest
late``: honest uploads refused as late (wrong_base, lease_expired, task_already_answered) or
dropped as stale: the price of the mode, not of the defence. Undecided uploads (stored and
pending at the end) are left out of both shares and printed. ``verification overhead``:
``barnraise_verification_gflop_total`` over ``barnraise_contributed_gflop_total`` for the
project, from ``/metrics`` (``n/a`` while the coordinator has no such counters; aim <= 10 %).
Defaults: all attacks, both modes, 15 versions (async 30) or 40 s a run: 17 runs, about
5-10 minutes here. ``--quick``: noise and sign_flip, 8 versions or 25 s: about 2 minutes.
Timing varies from run to run (engines are threads and processes racing on two cores);
seeds fix the model, the partition and the adversaries' noise, not who comes first.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from backend.server import bound_port, make_server, start_in_thread
from backend.store import ClientRecord, UpdateRecord
from backend.wsgi import App, create_app
from bench.adversary_clients import (
    ASYNC_ONLY,
    ATTACKS,
    Adversary,
    HonestEngine,
    Takeover,
    gflop_counters,
    make_adversary,
    make_engines,
    stop_engines,
    warm_up,
)
from federated.protocol import ERROR_STATUS

HPARAMS: dict[str, Any] = {
    "lr": 0.1,
    "momentum": 0.9,
    "batch_size": 16,
    "local_epochs": 2.0,
    "num_shards": 10,
    "hidden": 64,
}
"""Digits hyperparameters of ``backend.demo`` (>= 0.90 accuracy in 5 versions), 10 shards."""
QUICK_ATTACKS = ("noise", "sign_flip")
SETTLE_LIMIT_S = 30.0


def project_settings(mode: str, n_total: int, n_honest: int, buffer_size: int) -> dict[str, Any]:
    common = {"mode": mode, "codec": "int8", "fit_tasks": False}
    if mode == "async":
        return {**common, "buffer_size": buffer_size}
    return {**common, "clients_per_round": n_total, "min_updates": n_honest, "round_deadline_s": 2}


def run_one(
    app: App,
    url: str,
    engines: list[HonestEngine],
    attack: str,
    mode: str,
    args: argparse.Namespace,
) -> RunResult:
    """One project, one attack (or ``clean``), one mode: run it, settle, measure."""
    co = app.coordinator
    name = f"adv-{mode}-{attack.replace('_', '-')}"
    n_adv = 0 if attack == "clean" else args.adversaries
    honest = engines[: len(engines) - n_adv]
    settings = project_settings(mode, len(engines), len(engines) - args.adversaries, args.buffer)
    co.create_project(
        name, recipe="digits-mlp", hparams={**HPARAMS, "seed": args.seed}, settings=settings
    )
    started = time.monotonic()
    for engine in honest:
        engine.join(f"{url}/p/{name}", name)
    adversaries = [make_adversary(attack, url, name, i, args.seed) for i in range(n_adv)]
    for adv in adversaries:
        adv.join()
    stop = threading.Event()
    threads = [threading.Thread(target=a.run, args=(stop,), daemon=True) for a in adversaries]
    for t in threads:
        t.start()
    deadline = started + args.run_seconds
    while time.monotonic() < deadline:
        seen = co.notifier.generation(name)
        if co.project(name).current_version >= target_versions(mode, len(engines), args):
            break
        co.notifier.wait(name, seen, min(1.0, max(0.0, deadline - time.monotonic())))
    left_at = time.monotonic()
    ran_s = left_at - started
    stop.set()
    for engine in honest:
        engine.leave(name)
    for t in threads:
        t.join(timeout=30)
    settle(app, name)
    return measure(
        app,
        url,
        name,
        attack=attack,
        mode=mode,
        honest=honest,
        adversaries=adversaries,
        seconds=ran_s,
        left_at=left_at,
    )


def target_versions(mode: str, n_total: int, args: argparse.Namespace) -> int:
    """Sync: ``--versions`` rounds of n_total updates; async: as many updates, in buffers."""
    return args.versions if mode == "sync" else max(1, args.versions * n_total // args.buffer)


def settle(app: App, name: str) -> None:
    """Wait until no aggregation is running and the version has not moved for 1.5 s."""
    co = app.coordinator
    project = co.project(name)
    give_up = time.monotonic() + SETTLE_LIMIT_S
    last, since = -1, time.monotonic()
    while time.monotonic() < give_up:
        with co.store.read() as tx:
            running = tx.aggregation_running(project.id)
            fresh = tx.project_by_id(project.id)
        version = fresh.current_version if fresh is not None else -1
        if running or version != last:
            last, since = version, time.monotonic()
        elif time.monotonic() - since >= 1.5:
            return
        time.sleep(0.1)


# --- measurement ---------------------------------------------------------------------------

LATE_CODES = frozenset({"wrong_base", "lease_expired", "task_already_answered"})
"""Refusals of an update that came too late: the price of the mode, not a verdict."""
IN_A_VERSION = frozenset({"aggregated"})


@dataclass
class Tally:
    """Uploads of one side (honest or malicious) and where they ended."""

    total: int = 0  # decided: refused, or stored and settled (not pending at the end)
    inside: int = 0  # aggregated into a published version
    refused: Counter[str] = field(default_factory=Counter)  # error code -> count
    kept_out: Counter[str] = field(default_factory=Counter)  # stored, status -> count
    undecided: int = 0  # stored and still pending at the end

    def out(self, *, ignore: frozenset[str] = frozenset()) -> int:
        refused = sum(n for code, n in self.refused.items() if code not in ignore)
        kept = sum(n for status, n in self.kept_out.items() if status not in ignore)
        return refused + kept

    def codes(self) -> str:
        parts = [f"{c} x{n}" for c, n in sorted(self.refused.items())]
        parts += [f"stored {s} x{n}" for s, n in sorted(self.kept_out.items())]
        return ", ".join(parts) or "none"


@dataclass
class RunResult:
    attack: str
    mode: str
    versions: int
    accuracy: float
    by_version: dict[int, float]
    seconds: float
    malicious: Tally
    honest: Tally
    adv_credit: float | None
    adv_pending: float
    total_credit: float
    given_back: int  # honest tasks the engines gave back unfinished (not uploads)
    adv_majority_versions: int  # versions at least half of whose updates were malicious
    adv_only_versions: int
    max_in_hand: int | None  # takeover: most leases one adversary held at once
    gflop: tuple[float, float] | None  # (verification, contributed), from /metrics
    notes: list[str] = field(default_factory=list)


def measure(
    app: App,
    url: str,
    name: str,
    *,
    attack: str,
    mode: str,
    honest: list[HonestEngine],
    adversaries: list[Adversary],
    seconds: float,
    left_at: float,
) -> RunResult:
    """Read the store and the clients' own logs once the run has settled."""
    co = app.coordinator
    project = co.project(name)
    with co.store.read() as tx:
        updates = tx.updates(project.id)
        versions = tx.versions(project.id)
        clients = {c.id: c for c in tx.clients(project.id)}
    adv_ids = {a.client_id for a in adversaries}
    honest_ids = {e.client_ids[name] for e in honest}
    by_client: dict[str, list[UpdateRecord]] = {}
    for u in updates:
        by_client.setdefault(u.client_id, []).append(u)
    malicious, honest_tally = Tally(), Tally()
    genuine: list[UpdateRecord] = []  # reuse: the first upload is the adversary's own training
    for adv in adversaries:
        stored = by_client.get(adv.client_id, [])
        if adv.attack == "reuse" and stored:
            first = min(stored, key=lambda u: u.accepted_at)
            genuine.append(first)
            stored = [u for u in stored if u is not first]
        _tally(malicious, stored, [(r.status, r.code) for r in adv.log])
    given_back = after_leave = 0
    for engine in honest:
        # What the engines report after they were told to leave is the leaving's doing
        # (their lease given back under a task in hand), not the coordinator's verdict.
        logged = [u for u in engine.uploads(name) if u.at < left_at]
        after_leave += len(engine.uploads(name)) - len(logged)
        given_back += sum(1 for u in logged if not u.uploaded)
        refusals = [
            (ERROR_STATUS.get(u.reason, 0), u.reason)
            for u in logged
            if u.uploaded and not u.accepted
        ]
        _tally(honest_tally, by_client.get(engine.client_ids[name], []), refusals)
    groups: dict[int, list[str]] = {}
    for u in updates:
        if u.status in IN_A_VERSION and u.aggregation_id is not None:
            groups.setdefault(u.aggregation_id, []).append(u.client_id)
    shares = [sum(c in adv_ids for c in g) / len(g) for g in groups.values()]
    by_version = {
        v.version: float(v.metrics["accuracy"]) for v in versions if "accuracy" in v.metrics
    }
    last = versions[-1]
    notes = [f"{a.display_name}: {e}" for a in adversaries for e in a.errors[:3]]
    notes += [f"lease refusals {k} x{n}" for a in adversaries for k, n in a.lease_errors.items()]
    if attack in ("clean", "poisoned_metrics") and "client_loss_after" in last.metrics:
        notes.append(f"last version's client_loss_after {last.metrics['client_loss_after']:.4g}")
    if genuine:
        notes.append("reuse: the first upload of each (its own training) not counted")
    if after_leave:
        notes.append(f"{after_leave} engine task report(s) after leaving not counted")
    takeovers = [a.max_in_hand for a in adversaries if isinstance(a, Takeover)]
    return RunResult(
        attack=attack,
        mode=mode,
        versions=last.version,
        accuracy=float(last.metrics.get("accuracy", float("nan"))),
        by_version=by_version,
        seconds=seconds,
        malicious=malicious,
        honest=honest_tally,
        adv_credit=_adversary_credit(clients, adv_ids, genuine) if adv_ids else None,
        adv_pending=sum(float(getattr(clients[i], "credit_pending", 0.0)) for i in adv_ids),
        total_credit=sum(c.credit for c in clients.values() if c.id in adv_ids | honest_ids),
        given_back=given_back,
        adv_majority_versions=sum(1 for s in shares if s >= 0.5),
        adv_only_versions=sum(1 for s in shares if s == 1.0),
        max_in_hand=max(takeovers) if takeovers else None,
        gflop=gflop_counters(url, name),
        notes=notes,
    )


def _tally(tally: Tally, stored: list[UpdateRecord], answers: list[tuple[int, str]]) -> None:
    """Add one client: its stored updates (the store says where they went) and its
    refused uploads (its own log says why)."""
    for _status, code in answers:
        if code:
            tally.total += 1
            tally.refused[code] += 1
    for u in stored:
        if u.status == "pending":
            tally.undecided += 1
            continue
        tally.total += 1
        if u.status in IN_A_VERSION and not getattr(u, "verdict", None):
            tally.inside += 1
        else:
            verdict = getattr(u, "verdict", None) or u.quarantine_reason
            tally.kept_out[f"{u.status}:{verdict}" if verdict else u.status] += 1


def _adversary_credit(
    clients: dict[str, ClientRecord], adv_ids: set[str], genuine: list[UpdateRecord]
) -> float:
    """GFLOP granted to the adversaries (store), less what their genuine uploads earned."""
    total = sum(clients[i].credit for i in adv_ids if i in clients)
    for u in genuine:
        state = getattr(u, "credit_state", "granted" if u.status == "aggregated" else "")
        if state == "granted":
            total -= u.credit
    return total


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 attacks, 8 versions, 25 s a run")
    parser.add_argument("--attacks", help=f"comma-separated, of: {', '.join(ATTACKS)}")
    parser.add_argument("--modes", default="sync,async", help="comma-separated: sync, async")
    parser.add_argument("--versions", type=int, help="versions per run (default 15; quick 8)")
    parser.add_argument("--run-seconds", type=float, help="time limit a run (40; quick 25)")
    parser.add_argument("--honest", type=int, default=8, help="honest engines in attack runs")
    parser.add_argument("--adversaries", type=int, default=2)
    parser.add_argument("--buffer", type=int, default=5, help="async buffer_size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    attacks = (
        args.attacks.split(",") if args.attacks else list(QUICK_ATTACKS if args.quick else ATTACKS)
    )
    unknown = [a for a in attacks if a not in ATTACKS]
    modes = args.modes.split(",")
    if unknown or not set(modes) <= {"sync", "async"}:
        parser.error(f"unknown attack or mode: {unknown or modes}")
    args.attacks, args.modes = attacks, modes
    args.versions = args.versions or (8 if args.quick else 15)
    args.run_seconds = args.run_seconds or (25.0 if args.quick else 40.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)  # the engines log every refusal they get
    wall, warm_s = time.monotonic(), 0.0
    results: list[RunResult] = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        app = create_app(tmp / "backend", rate=None)
        server = make_server(app, "127.0.0.1", 0, threads=64)
        start_in_thread(server)
        url = f"http://127.0.0.1:{bound_port(server)}"
        engines = make_engines(tmp / "engines", args.honest + args.adversaries)
        try:
            warm_s = warm_up(app, url, engines, HPARAMS)
            for mode in args.modes:
                runs = [
                    "clean",
                    *[a for a in args.attacks if mode == "async" or a not in ASYNC_ONLY],
                ]
                for attack in runs:
                    result = run_one(app, url, engines, attack, mode, args)
                    results.append(result)
                    print(f"# done {attack}/{mode} in {result.seconds:.0f} s", file=sys.stderr)
        finally:
            stop_engines(engines)
            server.stop()
            app.close()
    report(results, args, warm_s=warm_s, wall_s=time.monotonic() - wall, cpus=psutil.cpu_count())
    return 0


# --- report --------------------------------------------------------------------------------


def _pct(part: float, whole: float) -> str:
    return f"{100 * part / whole:.1f} %" if whole else "n/a"


def clean_accuracy(results: list[RunResult], r: RunResult) -> tuple[float, int] | None:
    """The clean run's accuracy in the same mode at r's version (its last if fewer)."""
    clean = next((c for c in results if c.mode == r.mode and c.attack == "clean"), None)
    if clean is None or not clean.by_version:
        return None
    version = min(r.versions, clean.versions)
    return clean.by_version.get(version, clean.accuracy), version


def report(
    results: list[RunResult],
    args: argparse.Namespace,
    *,
    warm_s: float,
    wall_s: float,
    cpus: int | None,
) -> None:
    n = args.honest + args.adversaries
    print(
        f"## Adversaries: {args.honest} honest engines + {args.adversaries} adversaries "
        f"(clean: {n} honest), digits-mlp, one coordinator on loopback ({cpus} CPUs)\n"
    )
    print(
        f"Invocation: attacks {','.join(args.attacks)}; modes {','.join(args.modes)}; "
        f"{args.versions} versions a sync run, {target_versions('async', n, args)} an async "
        f"run, or {args.run_seconds:.0f} s; async buffer "
        f"{args.buffer}; seed {args.seed}; hparams {HPARAMS}. Engine warm-up "
        f"{warm_s:.0f} s (not measured).\n"
    )
    print(
        "| attack | mode | versions | accuracy | clean | Δ pts | adversary credit GFLOP "
        "| malicious kept out | honest wrongly out | honest late | verification overhead "
        "| run s |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in results:
        clean = clean_accuracy(results, r) if r.attack != "clean" else None
        ref = f"{clean[0]:.3f}" if clean else "—"
        delta = f"{100 * (r.accuracy - clean[0]):+.1f}" if clean else "—"
        credit = "—"
        if r.adv_credit is not None:
            credit = f"{r.adv_credit:.3f} ({_pct(r.adv_credit, r.total_credit)})"
        mal = r.malicious
        kept = f"{_pct(mal.out(), mal.total)} ({mal.out()}/{mal.total})" if mal.total else "—"
        hon = r.honest
        wrong = hon.out(ignore=LATE_CODES | {"dropped"})
        late = hon.out() - wrong
        overhead = "n/a" if r.gflop is None else _pct(r.gflop[0], r.gflop[1])
        print(
            f"| {r.attack} | {r.mode} | {r.versions} | {r.accuracy:.3f} | {ref} | {delta} "
            f"| {credit} | {kept} | {_pct(wrong, hon.total)} ({wrong}/{hon.total}) "
            f"| {_pct(late, hon.total)} | {overhead} | {r.seconds:.0f} |"
        )
    print()
    for r in results:
        clean = clean_accuracy(results, r) if r.attack != "clean" else None
        line = (
            f"- {r.attack}/{r.mode}: malicious uploads {r.malicious.codes()}; "
            f"{r.malicious.inside} aggregated, {r.malicious.undecided} pending at the end; "
            f"honest: {r.honest.inside} aggregated, {r.honest.codes()}, "
            f"{r.honest.undecided} pending, {r.given_back} given back unfinished"
        )
        if r.adv_credit is not None:
            line += (
                f"; adversary credit pending {r.adv_pending:.3f}; versions with >= half "
                f"malicious updates {r.adv_majority_versions}, all malicious {r.adv_only_versions}"
            )
        if clean:
            line += f"; clean compared at version {clean[1]}"
        if r.max_in_hand is not None:
            line += f"; takeover: at most {r.max_in_hand} lease(s) in hand at once"
        if r.gflop is not None:
            line += f"; verification {r.gflop[0]:.3f} / contributed {r.gflop[1]:.3f} GFLOP"
        print(line + "".join(f"; {note}" for note in r.notes))
    print(
        f"\nwall time {wall_s:.0f} s. Aims: Δ within 2 points, adversary credit 0, malicious "
        "kept out >= 99 %, honest wrongly out <= 1 %, verification overhead <= 10 %."
    )


if __name__ == "__main__":
    sys.exit(main())
