"""Join is idempotent by key: a retry whose answer was lost, or a volunteer joining again
from the same machine, gets the same client, also in a project that needs an invite."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from backend.coordinator import Coordinator
from backend.demo_clients import DemoContributor
from backend.testing import IN_PROCESS_URL
from federated.signing import SigningKey


def test_the_same_key_joins_as_the_same_client(
    http: requests.Session, make_project: Any, coordinator: Coordinator
) -> None:
    make_project("digits")
    key = SigningKey.generate()
    first = DemoContributor(IN_PROCESS_URL, "digits", "Ada", session=http, key=key)
    first.join()
    again = DemoContributor(IN_PROCESS_URL, "digits", "Ada L.", session=http, key=key)
    again.join()
    assert again.client_id == first.client_id
    with coordinator.store.read() as tx:
        clients = tx.clients(coordinator.project("digits").id)
    assert [(c.id, c.display_name) for c in clients] == [(first.client_id, "Ada L.")]


def test_a_known_key_rejoins_without_using_another_invite(
    http: requests.Session, make_project: Any, coordinator: Coordinator
) -> None:
    make_project("club", invite_required=True)
    invite = coordinator.create_invite("club", max_uses=1)
    key = SigningKey.generate()
    first = DemoContributor(IN_PROCESS_URL, "club", "Ada", session=http, key=key, invite=invite)
    first.join()
    # The answer was lost and the join is sent again with the same, now used, invite.
    retry = DemoContributor(IN_PROCESS_URL, "club", "Ada", session=http, key=key, invite=invite)
    retry.join()
    assert retry.client_id == first.client_id
    stranger = DemoContributor(IN_PROCESS_URL, "club", "Eve", session=http, invite=invite)
    with pytest.raises(Exception, match="bad_invite"):
        stranger.join()
    nobody = DemoContributor(IN_PROCESS_URL, "club", "Mallory", session=http)
    with pytest.raises(Exception, match="invite_required"):
        nobody.join()
