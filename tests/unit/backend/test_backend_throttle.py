"""Rate limits that hold (issue 12). Measured on the first wave: any junk ``Authorization``
header switched the limit off (300 joins in 1.3 s, 800 bad-token requests, 1,000 challenges
with no 429), while 188 of 400 health probes got 429 because they shared one bucket per
address with everything else. Each test here failed then."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import IN_PROCESS_URL, wsgi_session
from backend.throttle import forwarded_client, parse_proxies
from backend.wsgi import App

API = f"{IN_PROCESS_URL}/api/v1/projects"
JUNK = {"Authorization": "Bearer junk.junk"}


@pytest.fixture
def limited(coordinator: Coordinator) -> requests.Session:
    return wsgi_session(App(coordinator, rate=0.01, burst=5))


def codes(send: Any, n: int) -> list[int]:
    return [send().status_code for _ in range(n)]


def test_junk_credentials_do_not_switch_the_limit_off(
    coordinator: Coordinator, limited: requests.Session, make_project: Any
) -> None:
    make_project("digits")
    challenges = codes(lambda: limited.post(f"{API}/digits/challenge", headers=JUNK), 8)
    assert challenges[:5] == [200] * 5 and set(challenges[5:]) == {429}


def test_bad_tokens_count_against_their_address(
    coordinator: Coordinator, limited: requests.Session, make_project: Any
) -> None:
    make_project("digits")
    leases = codes(lambda: limited.post(f"{API}/digits/tasks/lease?wait=0", headers=JUNK), 8)
    assert leases[:5] == [401] * 5 and set(leases[5:]) == {429}


def test_volunteers_behind_one_address_each_have_their_own_limit(
    coordinator: Coordinator, make_project: Any
) -> None:
    make_project("digits")
    open_http = wsgi_session(App(coordinator, rate=None))
    people = []
    for name in ("Ada", "Bob"):
        c = DemoContributor(IN_PROCESS_URL, "digits", name, session=open_http)
        c.join()
        people.append(c)
    limited = wsgi_session(App(coordinator, rate=0.01, burst=5))
    for c in people:  # both from 127.0.0.1, both get their own five
        me = codes(
            lambda c=c: limited.get(
                f"{API}/digits/me", headers={"Authorization": f"Bearer {c.token}"}
            ),
            6,
        )
        assert me[:5] == [200] * 5 and me[5] == 429


def test_health_probes_are_not_starved_by_api_traffic(
    coordinator: Coordinator, limited: requests.Session, make_project: Any
) -> None:
    make_project("digits")
    assert 429 in codes(lambda: limited.get(API), 8)  # the address's API bucket is empty
    probes = codes(lambda: limited.get(f"{IN_PROCESS_URL}/healthz"), 40)
    assert probes == [200] * 40  # their own, ten times larger bucket


def test_x_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    trusted = parse_proxies(["10.0.0.0/8"])
    via_proxy = {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "203.0.113.7, 10.9.9.9"}
    forwarded_client(via_proxy, trusted)
    assert via_proxy["REMOTE_ADDR"] == "203.0.113.7"  # right-most untrusted hop
    direct = {"REMOTE_ADDR": "198.51.100.4", "HTTP_X_FORWARDED_FOR": "203.0.113.7"}
    forwarded_client(direct, trusted)
    assert direct["REMOTE_ADDR"] == "198.51.100.4"  # anyone can send the header
    garbled = {"REMOTE_ADDR": "10.1.2.3", "HTTP_X_FORWARDED_FOR": "not-an-address"}
    forwarded_client(garbled, trusted)
    assert garbled["REMOTE_ADDR"] == "10.1.2.3"
    with pytest.raises(ValueError, match="not an IP address"):
        parse_proxies(["lb.example"])
