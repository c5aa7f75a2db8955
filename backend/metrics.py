"""A tiny thread-safe Prometheus registry and the backend's own metrics.

API (all thread-safe)::

    registry = Registry()                       # or the module-level REGISTRY
    c = registry.counter("x_total", "help", ("method", "status"))
    c.labels(method="GET", status="200").inc()  # or c.labels("GET", "200").inc(2)
    g = registry.gauge("y", "help", ("project",)); g.labels(project="p").set(3)
    h = registry.histogram("z_seconds", "help", buckets=(0.1, 1.0)); h.observe(0.3)
    with h.time(): ...                          # observes the elapsed seconds
    registry.render() -> str                    # text exposition format 0.0.4
    CONTENT_TYPE                                # the Content-Type to serve it with

    METRICS = BackendMetrics.create(REGISTRY)   # the predefined metrics, see below
    BackendMetrics.create(Registry())           # an isolated set for tests

A metric without label names is used directly (``c.inc()``, ``g.set(1)``, ``h.observe(x)``).
Label values must come from small fixed sets (a route *pattern* name, a status code, an
error code, a project name): every distinct combination is kept for the life of the process.
The registry is per process; under several worker processes each process exposes its own.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Generic, TypeVar

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""Seconds; request latency. Long-polled leases (up to 30 s) land in the top buckets."""

AGGREGATION_BUCKETS: tuple[float, ...] = (
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Seconds; one aggregation including evaluation on held-out data."""

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
_LABEL_RE = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
_RESERVED_LABELS = frozenset({"le", "quantile"})

LabelValues = tuple[str, ...]


def _format_value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return repr(float(value))


def _escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _label_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    pairs = ",".join(
        f'{name}="{_escape_label_value(value)}"' for name, value in zip(names, values, strict=True)
    )
    return "{" + pairs + "}"


class _Metric:
    """Common label handling; subclasses keep one child per label-value tuple."""

    kind = "untyped"

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"metric name {name!r} is not a valid Prometheus name")
        for label in labelnames:
            if not _LABEL_RE.match(label) or label.startswith("__") or label in _RESERVED_LABELS:
                raise ValueError(f"label name {label!r} is not allowed on metric {name!r}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"metric {name!r} repeats a label name")
        self.name = name
        self.help = help
        self.labelnames: tuple[str, ...] = tuple(labelnames)
        self._lock = threading.Lock()

    def _key(self, args: Sequence[object], kwargs: dict[str, object]) -> LabelValues:
        if args and kwargs:
            raise ValueError(f"{self.name}: pass label values by position or by name, not both")
        if kwargs:
            if set(kwargs) != set(self.labelnames):
                raise ValueError(
                    f"{self.name}: expected labels {sorted(self.labelnames)}, got {sorted(kwargs)}"
                )
            return tuple(str(kwargs[name]) for name in self.labelnames)
        if len(args) != len(self.labelnames):
            raise ValueError(
                f"{self.name}: expected {len(self.labelnames)} label values, got {len(args)}"
            )
        return tuple(str(a) for a in args)

    def _require_unlabelled(self) -> None:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}; call .labels(...) first")

    def render_lines(self) -> list[str]:
        lines = [f"# HELP {self.name} {_escape_help(self.help)}", f"# TYPE {self.name} {self.kind}"]
        lines.extend(self._sample_lines())
        return lines

    def _sample_lines(self) -> list[str]:
        raise NotImplementedError


class _ValueChild:
    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.value = 0.0


_ValueChildT = TypeVar("_ValueChildT", "CounterChild", "GaugeChild")


class CounterChild(_ValueChild):
    def inc(self, amount: float = 1.0) -> None:
        """Add ``amount`` (>= 0)."""
        if amount < 0:
            raise ValueError("a counter can only go up")
        with self._lock:
            self.value += amount


class GaugeChild(_ValueChild):
    def set(self, value: float) -> None:
        with self._lock:
            self.value = float(value)

    def inc(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value += amount

    def dec(self, amount: float = 1.0) -> None:
        with self._lock:
            self.value -= amount


class HistogramChild:
    def __init__(self, lock: threading.Lock, buckets: tuple[float, ...]) -> None:
        self._lock = lock
        self._buckets = buckets
        self.counts = [0] * len(buckets)  # not cumulative; render() accumulates
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        with self._lock:
            for i, bound in enumerate(self._buckets):
                if value <= bound:
                    self.counts[i] += 1
                    break
            self.sum += value
            self.count += 1

    @contextmanager
    def time(self) -> Iterator[None]:
        """Observe the seconds the ``with`` body took (also when it raises)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - start)


class _ValueMetric(_Metric, Generic[_ValueChildT]):
    """A counter or gauge: one number per label combination."""

    child_type: type[_ValueChildT]

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        super().__init__(name, help, labelnames)
        self._children: dict[LabelValues, _ValueChildT] = {}
        if not self.labelnames:
            self._children[()] = self.child_type(self._lock)

    def labels(self, *values: object, **named: object) -> _ValueChildT:
        key = self._key(values, named)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = self.child_type(self._lock)
        return child

    def inc(self, amount: float = 1.0) -> None:
        self._require_unlabelled()
        self._children[()].inc(amount)

    def value(self, *values: object, **named: object) -> float:
        """The current value for these labels (0 if never touched); for tests."""
        child = self._children.get(self._key(values, named))
        return child.value if child else 0.0

    def _sample_lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, c.value) for k, c in self._children.items())
        return [
            f"{self.name}{_label_text(self.labelnames, k)} {_format_value(v)}" for k, v in items
        ]


class Counter(_ValueMetric[CounterChild]):
    kind = "counter"
    child_type = CounterChild


class Gauge(_ValueMetric[GaugeChild]):
    kind = "gauge"
    child_type = GaugeChild

    def set(self, value: float) -> None:
        self._require_unlabelled()
        self._children[()].set(value)

    def dec(self, amount: float = 1.0) -> None:
        self._require_unlabelled()
        self._children[()].dec(amount)

    def remove(self, *values: object, **named: object) -> None:
        """Forget one label combination (e.g. a closed project)."""
        key = self._key(values, named)
        with self._lock:
            self._children.pop(key, None)


class Histogram(_Metric):
    kind = "histogram"

    def __init__(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> None:
        super().__init__(name, help, labelnames)
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be non-empty, increasing and distinct")
        self.buckets = bounds
        self._children: dict[LabelValues, HistogramChild] = {}
        if not self.labelnames:
            self._children[()] = HistogramChild(self._lock, self.buckets)

    def labels(self, *values: object, **named: object) -> HistogramChild:
        key = self._key(values, named)
        with self._lock:
            child = self._children.get(key)
            if child is None:
                child = self._children[key] = HistogramChild(self._lock, self.buckets)
        return child

    def observe(self, value: float) -> None:
        self._require_unlabelled()
        self._children[()].observe(value)

    def time(self) -> AbstractContextManager[None]:
        """Observe the seconds the ``with`` body took (unlabelled histograms only)."""
        self._require_unlabelled()
        return self._children[()].time()

    def _sample_lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(c.counts), c.sum, c.count) for k, c in self._children.items())
        lines: list[str] = []
        names = (*self.labelnames, "le")
        for key, counts, total, count in items:
            cumulative = 0
            for bound, n in zip(self.buckets, counts, strict=True):
                cumulative += n
                labels = _label_text(names, (*key, _format_value(bound)))
                lines.append(f"{self.name}_bucket{labels} {cumulative}")
            lines.append(f"{self.name}_bucket{_label_text(names, (*key, '+Inf'))} {count}")
            base = _label_text(self.labelnames, key)
            lines.append(f"{self.name}_sum{base} {_format_value(total)}")
            lines.append(f"{self.name}_count{base} {count}")
        return lines


class Registry:
    """A set of uniquely named metrics rendered together."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._metrics: dict[str, _Metric] = {}

    def _add(self, metric: _Metric) -> None:
        with self._lock:
            if metric.name in self._metrics:
                raise ValueError(f"metric {metric.name!r} is already registered")
            self._metrics[metric.name] = metric

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        metric = Counter(name, help, labelnames)
        self._add(metric)
        return metric

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        metric = Gauge(name, help, labelnames)
        self._add(metric)
        return metric

    def histogram(
        self,
        name: str,
        help: str,
        labelnames: Sequence[str] = (),
        buckets: Sequence[float] = LATENCY_BUCKETS,
    ) -> Histogram:
        metric = Histogram(name, help, labelnames, buckets)
        self._add(metric)
        return metric

    def render(self) -> str:
        """Every metric in text exposition format 0.0.4, ending with a newline."""
        with self._lock:
            metrics = list(self._metrics.values())
        lines: list[str] = []
        for metric in metrics:
            lines.extend(metric.render_lines())
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class BackendMetrics:
    """The metrics the coordinator records. Label values, by convention:

    - ``route``: the route table's pattern name (``"lease_task"``, ``"page_project"``, or
      ``"unmatched"``), never the raw path, so the label set stays bounded.
    - ``status``: the numeric HTTP status as a string.
    - ``outcome`` of a lease: ``"granted"`` or ``"no_work"`` (204).
    - ``reason`` of a rejection: the stable error code from docs/protocol.md.
    """

    requests: Counter  # barnraise_http_requests_total{method,route,status}
    request_seconds: Histogram  # barnraise_http_request_duration_seconds{method,route}
    leases: Counter  # barnraise_leases_total{project,outcome}
    updates_accepted: Counter  # barnraise_updates_accepted_total{project}
    updates_rejected: Counter  # barnraise_updates_rejected_total{project,reason}
    aggregation_seconds: Histogram  # barnraise_aggregation_seconds{project}
    model_version: Gauge  # barnraise_model_version{project}
    rate_limited: Counter  # barnraise_rate_limited_total{route}

    @classmethod
    def create(cls, registry: Registry) -> BackendMetrics:
        return cls(
            requests=registry.counter(
                "barnraise_http_requests_total",
                "HTTP requests answered, by method, route pattern and status.",
                ("method", "route", "status"),
            ),
            request_seconds=registry.histogram(
                "barnraise_http_request_duration_seconds",
                "Seconds from request start to the last byte handed to the server.",
                ("method", "route"),
                LATENCY_BUCKETS,
            ),
            leases=registry.counter(
                "barnraise_leases_total",
                "Task lease requests, by project and outcome (granted or no_work).",
                ("project", "outcome"),
            ),
            updates_accepted=registry.counter(
                "barnraise_updates_accepted_total",
                "Updates verified, stored and credited.",
                ("project",),
            ),
            updates_rejected=registry.counter(
                "barnraise_updates_rejected_total",
                "Updates refused, by the error code sent to the client.",
                ("project", "reason"),
            ),
            aggregation_seconds=registry.histogram(
                "barnraise_aggregation_seconds",
                "Seconds one aggregation took, evaluation included.",
                ("project",),
                AGGREGATION_BUCKETS,
            ),
            model_version=registry.gauge(
                "barnraise_model_version",
                "The current published model version of each project.",
                ("project",),
            ),
            rate_limited=registry.counter(
                "barnraise_rate_limited_total",
                "Requests refused with 429 by the per-client rate limit.",
                ("route",),
            ),
        )


REGISTRY = Registry()
"""The process-wide registry that ``/metrics`` renders."""

METRICS = BackendMetrics.create(REGISTRY)
"""The predefined backend metrics on ``REGISTRY``."""
