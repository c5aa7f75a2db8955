"""``/metrics`` serves the metrics its app's coordinator records into, not the process-wide set."""

from __future__ import annotations

from typing import Any

import requests

from backend.coordinator import Coordinator
from backend.metrics import METRICS, sample_value
from backend.testing import IN_PROCESS_URL

GRANTED = {"project": "digits", "outcome": "granted"}
ACCEPTED = {"project": "digits"}


def _scrape(http: requests.Session) -> str:
    answer = http.get(f"{IN_PROCESS_URL}/metrics")
    assert answer.status_code == 200
    assert answer.headers["Content-Type"].startswith("text/plain; version=")
    return answer.text


def test_a_coordinators_own_metrics_are_what_its_app_serves(
    coordinator: Coordinator, http: requests.Session, make_project: Any, join: Any
) -> None:
    assert coordinator.metrics is not METRICS  # the fixture hands it an isolated set
    global_granted = sample_value(METRICS, "barnraise_leases_total", GRANTED)
    global_accepted = sample_value(METRICS, "barnraise_updates_accepted_total", ACCEPTED)
    make_project("digits")
    ada = join("digits", "Ada")
    task = ada.lease(0)
    assert task is not None
    ada.train_and_upload(task)

    text = _scrape(http)
    assert 'barnraise_leases_total{outcome="granted",project="digits"} 1.0' in text
    assert 'barnraise_updates_accepted_total{project="digits"} 1.0' in text
    assert sample_value(coordinator.metrics, "barnraise_leases_total", GRANTED) == 1
    # The process-wide set saw none of it.
    assert sample_value(METRICS, "barnraise_leases_total", GRANTED) == global_granted
    assert sample_value(METRICS, "barnraise_updates_accepted_total", ACCEPTED) == global_accepted


def test_the_apps_request_counts_are_on_its_coordinators_metrics(
    coordinator: Coordinator, http: requests.Session
) -> None:
    for _ in range(3):
        assert http.get(f"{IN_PROCESS_URL}/healthz").status_code == 200
    labels = {"method": "GET", "route": "healthz", "status": "200"}
    assert sample_value(coordinator.metrics, "barnraise_http_requests_total", labels) == 3
    assert 'barnraise_http_requests_total{method="GET",route="healthz",status="200"} 3.0' in (
        _scrape(http)
    )
