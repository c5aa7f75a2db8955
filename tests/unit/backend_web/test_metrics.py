"""The backend's metrics on prometheus_client: the text format parsed back, labels,
histograms, threads, isolated sets and the value helper."""

from __future__ import annotations

import re
import threading

import pytest

from backend.metrics import (
    CONTENT_TYPE,
    LATENCY_BUCKETS,
    METRICS,
    REGISTRY,
    BackendMetrics,
    Registry,
    render,
    sample_value,
)

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(,|$)')


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n"}.get(m.group(1), m.group(1)), value)


def parse(text: str) -> tuple[dict[str, tuple[str, str]], list[tuple[str, dict[str, str], float]]]:
    """A strict little parser of the exposition format: (name -> (help, type), samples)."""
    assert text.endswith("\n")
    meta: dict[str, list[str]] = {}
    samples: list[tuple[str, dict[str, str], float]] = []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            meta.setdefault(name, ["", ""])[0] = help_text
        elif line.startswith("# TYPE "):
            name, _, kind = line[7:].partition(" ")
            assert kind in {"counter", "gauge", "histogram", "summary", "untyped"}
            meta.setdefault(name, ["", ""])[1] = kind
        else:
            match = _SAMPLE.match(line)
            assert match, f"unparseable line {line!r}"
            labels: dict[str, str] = {}
            body = (match.group(3) or "").rstrip(",")
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            samples.append((match.group(1), labels, float(match.group(4))))
    return {k: (v[0], v[1]) for k, v in meta.items()}, samples


def _values(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    _, samples = parse(text)
    return {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in samples}


def test_counter_gauge_histogram_round_trip() -> None:
    m = BackendMetrics.create(Registry())
    odd = 'a"b\\c\nd'  # escaped on the way out, read back intact
    m.requests.labels(method="GET", route=odd, status="200").inc()
    m.requests.labels("GET", odd, "200").inc(2)
    m.requests.labels("POST", "lease_task", "204").inc()
    m.model_version.labels(project="digits").set(7)
    for v in (0.0005, 0.001, 0.3, 60.0):
        m.request_seconds.labels(method="GET", route="healthz").observe(v)

    text = render(m).decode("utf-8")
    meta, _ = parse(text)
    assert meta["barnraise_http_requests_total"] == (
        "HTTP requests answered, by method, route pattern and status.",
        "counter",
    )
    assert meta["barnraise_model_version"][1] == "gauge"
    assert meta["barnraise_http_request_duration_seconds"][1] == "histogram"
    values = _values(text)
    req = "barnraise_http_requests_total"
    assert values[(req, (("method", "GET"), ("route", odd), ("status", "200")))] == 3
    assert values[(req, (("method", "POST"), ("route", "lease_task"), ("status", "204")))] == 1
    assert values[("barnraise_model_version", (("project", "digits"),))] == 7
    hist = "barnraise_http_request_duration_seconds"
    labels = (("method", "GET"), ("route", "healthz"))

    def bucket(le: str) -> float:
        return values[(f"{hist}_bucket", tuple(sorted((*labels, ("le", le)))))]

    assert bucket("0.001") == 2  # le is inclusive
    assert bucket("0.5") == 3
    assert bucket("30.0") == 3
    assert bucket("+Inf") == 4
    assert len([k for k in values if k[0] == f"{hist}_bucket"]) == len(LATENCY_BUCKETS) + 1
    assert values[(f"{hist}_count", labels)] == 4
    assert values[(f"{hist}_sum", labels)] == pytest.approx(60.3015)
    assert not any(name.endswith("_created") for name, _ in values)


def test_labelled_histogram_and_timer() -> None:
    m = BackendMetrics.create(Registry())
    with m.aggregation_seconds.labels(project="p").time():
        pass
    _, samples = parse(render(m).decode("utf-8"))
    names = [(n, lbl) for n, lbl, _ in samples]
    assert ("barnraise_aggregation_seconds_bucket", {"project": "p", "le": "+Inf"}) in names
    assert sample_value(m, "barnraise_aggregation_seconds_count", {"project": "p"}) == 1


def test_misuse_is_refused() -> None:
    reg = Registry()
    m = BackendMetrics.create(reg)
    with pytest.raises(ValueError):
        BackendMetrics.create(reg)  # one set per registry
    with pytest.raises(ValueError):
        m.updates_accepted.labels(team="1")
    with pytest.raises(ValueError):
        m.updates_accepted.labels("1", "2")
    with pytest.raises(ValueError):
        m.updates_accepted.inc()  # labelled metric used without labels
    with pytest.raises(ValueError):
        m.updates_accepted.labels("1").inc(-1)


def test_counts_are_exact_under_threads() -> None:
    m = BackendMetrics.create(Registry())

    def work() -> None:
        for i in range(2000):
            m.leases.labels(project=str(i % 3), outcome="granted").inc()
            m.aggregation_seconds.labels(project="p").observe(0.1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = sum(
        sample_value(m, "barnraise_leases_total", {"project": str(k), "outcome": "granted"})
        for k in range(3)
    )
    assert total == 16000
    _, samples = parse(render(m).decode("utf-8"))
    assert ("barnraise_aggregation_seconds_count", {"project": "p"}, 16000.0) in samples


def test_backend_metrics_on_an_isolated_registry() -> None:
    reg = Registry()
    m = BackendMetrics.create(reg)
    assert m.registry is reg
    m.requests.labels(method="GET", route="page_project", status="200").inc()
    m.updates_rejected.labels(project="digits", reason="non_finite").inc()
    m.model_version.labels(project="digits").set(3)
    m.aggregation_seconds.labels(project="digits").observe(0.2)
    m.leases.labels(project="digits", outcome="granted").inc()
    m.request_seconds.labels(method="GET", route="page_project").observe(0.004)
    before = sample_value(
        METRICS, "barnraise_updates_rejected_total", {"project": "digits", "reason": "non_finite"}
    )
    meta, _ = parse(render(m).decode("utf-8"))
    assert set(meta) == {
        "barnraise_http_requests_total",
        "barnraise_http_request_duration_seconds",
        "barnraise_leases_total",
        "barnraise_updates_accepted_total",
        "barnraise_updates_rejected_total",
        "barnraise_aggregation_seconds",
        "barnraise_model_version",
        "barnraise_aggregation_overdue",
        "barnraise_aggregation_failures_total",
        "barnraise_rate_limited_total",
        "barnraise_contributed_gflop_total",
        "barnraise_verification_gflop_total",
        "barnraise_updates_kept_out_total",
    }
    rejected = ("barnraise_updates_rejected_total", {"project": "digits", "reason": "non_finite"})
    assert sample_value(m, *rejected) == 1
    assert sample_value(reg, *rejected) == 1
    assert sample_value(m.updates_rejected, *rejected) == 1
    assert sample_value(m, "barnraise_updates_accepted_total", {"project": "digits"}) == 0
    # The isolated registry left the process-wide one alone.
    assert sample_value(METRICS, *rejected) == before
    assert METRICS.registry is REGISTRY
    parse(render().decode("utf-8"))
    assert CONTENT_TYPE.startswith("text/plain; version=")
