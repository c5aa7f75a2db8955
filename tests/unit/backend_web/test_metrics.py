"""The Prometheus registry: text format 0.0.4 parsed back, labels, histograms, threads."""

from __future__ import annotations

import re
import threading

import pytest

from backend.metrics import CONTENT_TYPE, METRICS, REGISTRY, BackendMetrics, Registry

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
            body = match.group(3) or ""
            pos = 0
            while pos < len(body):
                lm = _LABEL.match(body, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = _unescape(lm.group(2))
                pos = lm.end()
            samples.append((match.group(1), labels, float(match.group(4))))
    return {k: (v[0], v[1]) for k, v in meta.items()}, samples


def test_counter_gauge_histogram_round_trip() -> None:
    reg = Registry()
    c = reg.counter("t_requests_total", "Requests.\nSecond line \\ slash", ("method", "path"))
    c.labels(method="GET", path='/a"b\\c\nd').inc()
    c.labels("GET", '/a"b\\c\nd').inc(2)
    c.labels("POST", "/x").inc()
    g = reg.gauge("t_version", "Version.", ("project",))
    g.labels(project="digits").set(7)
    h = reg.histogram("t_seconds", "Latency.", buckets=(0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        h.observe(v)

    meta, samples = parse(reg.render())
    assert meta["t_requests_total"] == ("Requests.\\nSecond line \\\\ slash", "counter")
    assert meta["t_version"][1] == "gauge" and meta["t_seconds"][1] == "histogram"
    values = {(n, tuple(sorted(lbl.items()))): v for n, lbl, v in samples}
    assert values[("t_requests_total", (("method", "GET"), ("path", '/a"b\\c\nd')))] == 3
    assert values[("t_requests_total", (("method", "POST"), ("path", "/x")))] == 1
    assert values[("t_version", (("project", "digits"),))] == 7
    assert values[("t_seconds_bucket", (("le", "0.1"),))] == 2  # le is inclusive
    assert values[("t_seconds_bucket", (("le", "1"),))] == 3
    assert values[("t_seconds_bucket", (("le", "+Inf"),))] == 4
    assert values[("t_seconds_count", ())] == 4
    assert values[("t_seconds_sum", ())] == pytest.approx(3.65)


def test_labelled_histogram_and_timer() -> None:
    reg = Registry()
    h = reg.histogram("t_agg_seconds", "x", ("project",), buckets=(1.0,))
    with h.labels(project="p").time():
        pass
    _, samples = parse(reg.render())
    names = [(n, lbl) for n, lbl, _ in samples]
    assert ("t_agg_seconds_bucket", {"project": "p", "le": "+Inf"}) in names
    assert ("t_agg_seconds_count", {"project": "p"}) in names


def test_misuse_is_refused() -> None:
    reg = Registry()
    c = reg.counter("t_total", "x", ("a",))
    with pytest.raises(ValueError):
        reg.counter("t_total", "again")
    with pytest.raises(ValueError):
        c.labels(b="1")
    with pytest.raises(ValueError):
        c.labels("1", "2")
    with pytest.raises(ValueError):
        c.inc()  # labelled metric used without labels
    with pytest.raises(ValueError):
        c.labels("1").inc(-1)
    with pytest.raises(ValueError):
        reg.counter("bad-name", "x")
    with pytest.raises(ValueError):
        reg.histogram("t_h", "x", ("le",))
    with pytest.raises(ValueError):
        reg.histogram("t_h2", "x", buckets=(2.0, 1.0))


def test_counts_are_exact_under_threads() -> None:
    reg = Registry()
    c = reg.counter("t_total", "x", ("k",))
    h = reg.histogram("t_s", "x", buckets=(0.5,))

    def work() -> None:
        for i in range(2000):
            c.labels(k=str(i % 3)).inc()
            h.observe(0.1)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(c.value(k=str(k)) for k in range(3)) == 16000
    _, samples = parse(reg.render())
    assert ("t_s_count", {}, 16000.0) in samples


def test_backend_metrics_on_an_isolated_registry() -> None:
    reg = Registry()
    m = BackendMetrics.create(reg)
    m.requests.labels(method="GET", route="page_project", status="200").inc()
    m.updates_rejected.labels(project="digits", reason="non_finite").inc()
    m.model_version.labels(project="digits").set(3)
    m.aggregation_seconds.labels(project="digits").observe(0.2)
    m.leases.labels(project="digits", outcome="granted").inc()
    m.request_seconds.labels(method="GET", route="page_project").observe(0.004)
    meta, _ = parse(reg.render())
    assert set(meta) == {
        "barnraise_http_requests_total",
        "barnraise_http_request_duration_seconds",
        "barnraise_leases_total",
        "barnraise_updates_accepted_total",
        "barnraise_updates_rejected_total",
        "barnraise_aggregation_seconds",
        "barnraise_model_version",
        "barnraise_rate_limited_total",
    }
    assert m.updates_rejected.value(project="digits", reason="non_finite") == 1
    # The isolated registry left the process-wide one alone.
    assert METRICS.updates_rejected.value(project="digits", reason="non_finite") == 0
    parse(REGISTRY.render())
    assert "version=0.0.4" in CONTENT_TYPE
