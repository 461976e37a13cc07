"""A Redis restart while a leader's provider call is in flight: the leader re-asserts its claim
and "sent" mark on the empty server, so nobody presents the token beside it, and other
processes hold off only for TOKENGUARD_RESTART_HOLD, not a whole claim TTL.

docs/design.md, "The protocol" (Store restart and failover) and 6. Leader death.
"""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
import redis

from flask_tokenguard.coordinator import Coordinator, Policy
from flask_tokenguard.deadline import Deadline
from flask_tokenguard.errors import OutcomeUnknown
from flask_tokenguard.keys import KeyNames
from flask_tokenguard.provider import ClientCredentials, RefreshClient
from flask_tokenguard.records import RecordCodec
from flask_tokenguard.sealing import Sealer
from flask_tokenguard.stores.memory import MemoryStore

from .fixtures.apps import burst, new_client, wait_for_refresh_requests
from .fixtures.stores import DelegatingStore


def _claims(url: str) -> dict[str, bytes | None]:
    """The claim and "sent" mark keys on the server, with their values."""
    client = redis.Redis.from_url(url)
    try:
        return {key.decode(): client.get(key) for key in client.keys("tokenguard:claim:*")}
    finally:
        client.close()


def test_a_leader_in_flight_reasserts_its_claim_after_a_redis_restart(
    provider: Any, guarded: Any, private_redis: Any
) -> None:
    provider.set_faults(refresh_delay=5)  # the leader's call is still in flight after the restart
    timings = {
        "TOKENGUARD_PROVIDER_TIMEOUT": 8,
        "TOKENGUARD_CLAIM_TTL": 10,
        "TOKENGUARD_WAIT_TIMEOUT": 20,
        "TOKENGUARD_TOKEN_STORAGE": "session",  # the token outlives the store's state
        "TOKENGUARD_CACHE_URL": private_redis.url,
    }
    leader_app = guarded(**timings)
    other_app = guarded(**timings)  # another coordinator: "another process" for the claim
    token = provider.issue(expires_in=0)
    leader = new_client(leader_app, token)
    replies: dict[str, Any] = {}

    def get(name: str, http: Any, base: str) -> None:
        replies[name] = http.get(f"{base}/api/profile", timeout=30)

    first = threading.Thread(target=get, args=("leader", leader, leader_app))
    first.start()
    wait_for_refresh_requests(provider, 1)  # presented: the claim is marked "sent"
    before = _claims(private_redis.url)
    assert len(before) == 2  # the claim and its "sent" mark
    private_redis.restart()  # the empty server forgets both

    # Inside the hold, and after it (the call still in flight): neither presents the token.
    early = threading.Thread(target=get, args=("early", new_client(other_app, token), other_app))
    early.start()
    time.sleep(2.8)
    assert _claims(private_redis.url) == before  # re-asserted: same owner, same mark
    late = threading.Thread(target=get, args=("late", new_client(other_app, token), other_app))
    late.start()
    for thread in (first, early, late):
        thread.join(30)

    assert [replies[name].status_code for name in ("leader", "early", "late")] == [200] * 3
    assert provider.presentations(token["refresh_token"]) == 1
    stats = provider.stats()
    assert stats["refreshes"] == 1
    assert stats["max_presentations"] == 1


def test_a_burst_right_after_a_redis_restart_waits_only_for_the_restart_hold(
    provider: Any, guarded: Any, private_redis: Any
) -> None:
    base = guarded(
        TOKENGUARD_TOKEN_STORAGE="session",
        TOKENGUARD_CACHE_URL=private_redis.url,
        TOKENGUARD_PROVIDER_TIMEOUT=5,
        TOKENGUARD_CLAIM_TTL=15,
        TOKENGUARD_WAIT_TIMEOUT=25,
    )
    private_redis.restart()
    http = new_client(base, provider.issue(expires_in=0))
    started = time.monotonic()
    result = burst(http, f"{base}/api/profile", 8)
    elapsed = time.monotonic() - started
    assert result.statuses == [200] * 8
    assert elapsed < 7.5  # the restart hold (2 s by default), not the claim TTL (15 s)
    assert provider.stats()["refreshes"] == 1
    assert provider.stats()["max_presentations"] == 1


class RestartingStore(DelegatingStore):
    """An in-memory store that can restart empty: a new identity, an uptime from zero."""

    def __init__(self) -> None:
        self.restart()

    def restart(self) -> None:
        self.inner = MemoryStore()
        self.started = time.monotonic()
        self.run_id = uuid.uuid4().hex

    def identity(self) -> str | None:
        return self.run_id

    def uptime(self) -> float | None:
        return time.monotonic() - self.started


def test_a_leader_that_stopped_waiting_still_marks_its_token_sent_after_a_restart(
    provider: Any,
) -> None:
    """The call outlives its leader's deadline (ambiguous, published, claim released); the
    store restarts and forgets that record: the call re-asserts the "sent" mark, so another
    process after the hold learns the outcome is unknown instead of presenting the token."""
    provider.set_faults(refresh_delay=4)
    store = RestartingStore()
    store.started -= 60  # up for a while
    policy = Policy(provider_timeout=6, claim_ttl=7, restart_hold=0.5)

    def process() -> Coordinator:
        client = RefreshClient(
            provider.token_url, ClientCredentials(provider.client_id, provider.client_secret)
        )
        codec = RecordCodec(Sealer(["secret"], "store"))
        return Coordinator(client, store, KeyNames(provider.client_id), codec, policy)

    leader, other = process(), process()
    token = provider.issue(expires_in=0)
    with pytest.raises(OutcomeUnknown):
        leader.refresh(token, Deadline(1.0))
    store.restart()
    time.sleep(1.0)  # past the hold: the mark is back by now
    with pytest.raises(OutcomeUnknown):
        other.refresh(token, Deadline(3.0))
    assert provider.presentations(token["refresh_token"]) == 1
    end = time.monotonic() + 15
    while other.newest(token["refresh_token"]) is None:  # the late success heals, as usual
        assert time.monotonic() < end
        time.sleep(0.1)
    assert provider.stats()["max_presentations"] == 1
