"""The backend's Prometheus metrics, on ``prometheus_client``.

API::

    METRICS                                   # the predefined metrics, on REGISTRY
    m = BackendMetrics.create(Registry())     # an isolated set (own registry), for tests
    m.updates_accepted.labels(project="digits").inc()
    with m.aggregation_seconds.labels(project="digits").time(): ...
    render(m) -> bytes                        # what /metrics serves, with CONTENT_TYPE
    sample_value(m, "barnraise_updates_accepted_total", {"project": "digits"}) -> float

The metric objects are plain ``prometheus_client`` ``Counter``/``Gauge``/``Histogram``. Label
values must come from small fixed sets (a route *pattern* name, a status code, an error code,
a project name): every distinct combination is kept for the life of the process.

``/metrics`` renders the registry of the ``BackendMetrics`` its app's coordinator records
into, so a set handed to a ``Coordinator`` is the set that app serves.

Several worker processes (gunicorn ``--workers N``)
---------------------------------------------------
Each worker process has its own counters. To have one ``/metrics`` answer sum every worker,
run in ``prometheus_client``'s multiprocess mode:

1. Set ``PROMETHEUS_MULTIPROC_DIR`` to a folder that is **empty** when gunicorn starts (files
   left by an earlier run would be counted again), writable by the workers, e.g.::

       rm -rf /run/barnraise-metrics && mkdir /run/barnraise-metrics
       PROMETHEUS_MULTIPROC_DIR=/run/barnraise-metrics BARNRAISE_DATA=/srv/barnraise \\
           gunicorn -c gunicorn.conf.py --workers 4 --threads 64 'backend.wsgi:app_from_env()'

   It must be set in the environment before any process imports ``prometheus_client``
   (the value storage is chosen at import); setting it inside the app is too late.
2. Give gunicorn a config file with a ``child_exit`` hook, so that a dead worker's
   live gauges stop being reported (its counters stay counted, as Prometheus expects)::

       # gunicorn.conf.py
       from prometheus_client import multiprocess

       def child_exit(server, worker):
           multiprocess.mark_process_dead(worker.pid)

In that mode every worker writes its values to memory-mapped files in the folder and
``/metrics`` (whichever worker answers) merges all of them with ``MultiProcessCollector``.
The per-process collectors (``process_*``, ``python_gc_*``) are not available then, and all
``BackendMetrics`` sets of one process share their values (they share file keys), so an
isolated set is only isolated without ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client import REGISTRY as _DEFAULT_REGISTRY
from prometheus_client.metrics import MetricWrapperBase

__all__ = [
    "AGGREGATION_BUCKETS",
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "METRICS",
    "MULTIPROC_DIR",
    "REGISTRY",
    "BackendMetrics",
    "Registry",
    "render",
    "sample_value",
]

CONTENT_TYPE: str = CONTENT_TYPE_LATEST
"""The Content-Type to serve :func:`render`'s output with."""

Registry = CollectorRegistry
"""``BackendMetrics.create(Registry())`` gives an isolated set of metrics."""

MULTIPROC_DIR: str | None = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
"""Where every worker's values live in multiprocess mode; read once, as prometheus_client
itself decides on multiprocess storage once, when it is imported."""

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

# No ``*_created`` sample beside every counter and histogram series: it doubles the
# exposition and nothing here reads it (multiprocess mode never exports it anyway).
disable_created_metrics()


@dataclass(frozen=True)
class BackendMetrics:
    """The metrics the coordinator records, all on ``registry``. Label values, by convention:

    - ``route``: the route table's pattern name (``"lease_task"``, ``"page_project"``, or
      ``"unmatched"``), never the raw path, so the label set stays bounded.
    - ``status``: the numeric HTTP status as a string.
    - ``outcome`` of a lease: ``"granted"``, ``"no_work"`` (204) or ``"withheld"``.
    - ``reason`` of a rejection: the stable error code from docs/protocol.md.
    """

    requests: Counter  # barnraise_http_requests_total{method,route,status}
    request_seconds: Histogram  # barnraise_http_request_duration_seconds{method,route}
    leases: Counter  # barnraise_leases_total{project,outcome}
    updates_accepted: Counter  # barnraise_updates_accepted_total{project}
    updates_rejected: Counter  # barnraise_updates_rejected_total{project,reason}
    aggregation_seconds: Histogram  # barnraise_aggregation_seconds{project}
    model_version: Gauge  # barnraise_model_version{project}
    aggregation_overdue: Gauge  # barnraise_aggregation_overdue{project}
    aggregation_failures: Counter  # barnraise_aggregation_failures_total{project,outcome}
    rate_limited: Counter  # barnraise_rate_limited_total{route}
    contributed_gflop: Counter  # barnraise_contributed_gflop_total{project}
    verification_gflop: Counter  # barnraise_verification_gflop_total{project}
    updates_kept_out: Counter  # barnraise_updates_kept_out_total{project,reason}
    registry: CollectorRegistry

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> BackendMetrics:
        """The metrics registered on ``registry`` (a new one when None). A registry takes one
        set only: a second ``create`` on it raises ValueError (duplicated timeseries)."""
        reg = CollectorRegistry() if registry is None else registry
        return cls(
            requests=Counter(
                "barnraise_http_requests_total",
                "HTTP requests answered, by method, route pattern and status.",
                ("method", "route", "status"),
                registry=reg,
            ),
            request_seconds=Histogram(
                "barnraise_http_request_duration_seconds",
                "Seconds from request start to the last byte handed to the server.",
                ("method", "route"),
                registry=reg,
                buckets=LATENCY_BUCKETS,
            ),
            leases=Counter(
                "barnraise_leases_total",
                "Task lease requests, by project and outcome (granted or no_work).",
                ("project", "outcome"),
                registry=reg,
            ),
            updates_accepted=Counter(
                "barnraise_updates_accepted_total",
                "Updates verified and stored (their credit pending until aggregated).",
                ("project",),
                registry=reg,
            ),
            updates_rejected=Counter(
                "barnraise_updates_rejected_total",
                "Updates refused, by the error code sent to the client.",
                ("project", "reason"),
                registry=reg,
            ),
            aggregation_seconds=Histogram(
                "barnraise_aggregation_seconds",
                "Seconds one aggregation took, evaluation included.",
                ("project",),
                registry=reg,
                buckets=AGGREGATION_BUCKETS,
            ),
            # Every worker sets this from the shared store (at start and when it publishes),
            # so a worker that has not published lately holds an older, lower version.
            # "livemax" reports the newest version any live worker knows, once per project,
            # and forgets a dead worker once child_exit has called mark_process_dead.
            model_version=Gauge(
                "barnraise_model_version",
                "The current published model version of each project.",
                ("project",),
                registry=reg,
                multiprocess_mode="livemax",
            ),
            # Set when /healthz or /metrics is asked, from the shared store: every worker
            # sees the same answer, so the highest live value is the answer.
            aggregation_overdue=Gauge(
                "barnraise_aggregation_overdue",
                "1 while a project's aggregation is overdue (a claim past its time, work "
                "waiting too long, or failing), else 0.",
                ("project",),
                registry=reg,
                multiprocess_mode="livemax",
            ),
            aggregation_failures=Counter(
                "barnraise_aggregation_failures_total",
                "Aggregations that failed: 'quarantined' (an update was set aside, the rest "
                "go on) or 'retry' (nothing in the input to blame: tried again later).",
                ("project", "outcome"),
                registry=reg,
            ),
            rate_limited=Counter(
                "barnraise_rate_limited_total",
                "Requests refused with 429 by the per-client rate limit.",
                ("route",),
                registry=reg,
            ),
            contributed_gflop=Counter(
                "barnraise_contributed_gflop_total",
                "Training work of the accepted updates (what their tasks asked), in GFLOP.",
                ("project",),
                registry=reg,
            ),
            verification_gflop=Counter(
                "barnraise_verification_gflop_total",
                "Work the coordinator spent checking updates (re-execution, evaluation), "
                "in GFLOP: its overhead is this over barnraise_contributed_gflop_total.",
                ("project",),
                registry=reg,
            ),
            updates_kept_out=Counter(
                "barnraise_updates_kept_out_total",
                "Accepted updates kept out of their aggregate, by reason code; their credit "
                "is withheld.",
                ("project", "reason"),
                registry=reg,
            ),
            registry=reg,
        )


def render(metrics: BackendMetrics | None = None) -> bytes:
    """The ``/metrics`` body (serve it as ``CONTENT_TYPE``): with ``PROMETHEUS_MULTIPROC_DIR``
    set, every worker process's values merged; otherwise ``metrics``' registry (default
    ``METRICS``)."""
    if MULTIPROC_DIR:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=MULTIPROC_DIR)
        return generate_latest(registry)
    return generate_latest((metrics or METRICS).registry)


def sample_value(
    source: BackendMetrics | CollectorRegistry | MetricWrapperBase,
    name: str,
    labels: Mapping[str, str] | None = None,
) -> float:
    """The value of one sample (e.g. ``"barnraise_leases_total"``, ``{"project": "p",
    "outcome": "granted"}``; a histogram's ``"..._count"``), 0.0 if it was never recorded.
    For tests and tools; it reads this process's values only."""
    wanted = dict(labels or {})
    if isinstance(source, MetricWrapperBase):
        for family in source.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == wanted:
                    return float(sample.value)
        return 0.0
    registry = source.registry if isinstance(source, BackendMetrics) else source
    value = registry.get_sample_value(name, wanted)
    return 0.0 if value is None else float(value)


REGISTRY: CollectorRegistry = _DEFAULT_REGISTRY
"""The process-wide registry (prometheus_client's default, with its process and GC
collectors) that ``METRICS`` is on."""

METRICS = BackendMetrics.create(REGISTRY)
"""The predefined backend metrics on ``REGISTRY``; a ``Coordinator`` records into these
unless given its own."""
